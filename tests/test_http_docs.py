"""The examples of docs/http.md run as they are written, against the real daemon.

The curl block runs in bash, the Python block with this interpreter (``requests``), and
the browser ``fetch`` block in Node.js (its ``fetch``, ``FormData`` and ``File`` are the
browser's APIs); without Node the test skips with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http_support import base_url, http_daemon
from watchd.models import ModelStore

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DOC_URL = "http://127.0.0.1:8765"
PNG = b"\x89PNG\r\n\x1a\n"


def blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "http.md").read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_examples_run(tmp_path: Path, model_store: ModelStore, photos: dict[str, Path]) -> None:
    root = tmp_path / "daemon"
    root.mkdir()
    work = tmp_path / "client"
    work.mkdir()
    shutil.copy(photos["astronaut.jpg"], work / "photo.jpg")
    daemon = http_daemon(root, model_store).start()
    try:
        url = base_url(daemon)
        (curl,) = [b for b in blocks("sh") if "curl" in b]
        out = run(["bash", "-euo", "pipefail", "-c", curl.replace(DOC_URL, url)], work)
        assert '"job_id":1' in out and '"status":"completed"' in out
        assert (work / "photo.png").read_bytes()[:8] == PNG
        assert (work / "cutout.png").read_bytes()[:8] == PNG

        (python,) = blocks("python")
        (work / "example.py").write_text(python.replace(DOC_URL, url))
        run([sys.executable, "example.py"], work)
        assert (work / "photo.webp").read_bytes()[8:12] == b"WEBP"

        (js,) = blocks("js")
        node = shutil.which("node")
        if node is None:
            pytest.skip("Node.js is not installed: the fetch example was not run")
        script = js.replace(DOC_URL, url) + (
            '\nconst fs = require("fs");\n'
            'const file = new File([fs.readFileSync("photo.jpg")], "photo.jpg", '
            '{ type: "image/jpeg" });\n'
            "removeBackground(file).then(async (blob) => {\n"
            '  fs.writeFileSync("fetched.png", Buffer.from(await blob.arrayBuffer()));\n'
            "});\n"
        )
        (work / "example.js").write_text(script)
        run([node, "example.js"], work)
        assert (work / "fetched.png").read_bytes()[:8] == PNG
    finally:
        daemon.stop()
