"""Property-based checks of the HTTP door with schemathesis, against the real daemon.

schemathesis reads ``/openapi.json`` and sends generated requests (valid and invalid)
to every operation: none may answer 500, and every answer must match the documented
status codes, content types, headers and schemas. It runs as its own command (its
pytest plugin does not load under this pytest), bounded to a few examples per
operation so it stays well under a minute. Left out: the event stream (it lasts until
its job ends) and pause/resume (a paused daemon would hold every ``/api/remove`` until
its timeout); tests/test_http.py covers those.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http_support import base_url, http_daemon
from watchd.models import ModelStore

pytestmark = pytest.mark.e2e

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def test_every_operation_matches_its_schema(tmp_path: Path, model_store: ModelStore) -> None:
    daemon = http_daemon(tmp_path, model_store, {"remove_timeout": 60, "max_upload_bytes": 65536})
    daemon.start()
    try:
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            base_url(daemon) + "/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "10",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "14",
            "--workers",
            "2",
            "--exclude-path-regex",
            "/events$|^/queue/(pause|resume)$",
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "90",
            "--no-color",
        ]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
        run = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
            cwd=tmp_path,  # its cache (.schemathesis/) stays out of the repository
        )
    finally:
        daemon.stop()
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    assert "passed" in report.lower()
