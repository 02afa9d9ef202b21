"""The HTTP door's operators' side against the real daemon: tokens and scopes, start-up
refusals, back-pressure, and ``kill -9`` in the middle of an upload and of a job."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_support import base_url, http_daemon, open_upload, staged_files, wait_job
from tests.support import DaemonProcess, wait_for
from watchd.models import ModelStore

pytestmark = pytest.mark.e2e


@pytest.fixture
def made() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts; any still running at teardown is killed."""
    daemons: list[DaemonProcess] = []
    yield daemons
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


def start(made: list[DaemonProcess], daemon: DaemonProcess, **kwargs: Any) -> DaemonProcess:
    made.append(daemon)
    return daemon.start(**kwargs)


READ, SUBMIT, ADMIN = "r" * 20 + "-read", "s" * 20 + "-submit", "a" * 20 + "-admin"


def test_tokens_and_scopes(
    made: list[DaemonProcess], tmp_path: Path, model_store: ModelStore, photos: dict[str, Path]
) -> None:
    tokens = tmp_path / "tokens"
    hashed = hashlib.sha256(SUBMIT.encode()).hexdigest()
    tokens.write_text(
        f"# name scope token\nviewer read {READ}\nshop submit sha256:{hashed}\nops admin {ADMIN}\n"
    )
    daemon = start(made, http_daemon(tmp_path, model_store, {"tokens_file": str(tokens)}))
    url = base_url(daemon)

    def as_(token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=url, headers=headers, timeout=60)

    image = {"images": ("a.jpg", photos["astronaut.jpg"].read_bytes())}
    with as_(None) as anyone, as_("wrong" * 5) as stranger, as_(READ) as viewer:
        assert anyone.get("/health").status_code == 200  # probes need no token
        assert anyone.get("/ready").status_code == 200
        missing = anyone.get("/queue/jobs")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert stranger.get("/queue/jobs").status_code == 401
        assert stranger.post("/queue/submit", files=image).status_code == 401
        assert viewer.get("/queue/jobs").status_code == 200
        assert viewer.get("/metrics").status_code == 200
        forbidden = viewer.post("/queue/submit", files=image)
        assert forbidden.status_code == 403 and "'viewer'" in forbidden.json()["detail"]
        assert viewer.post("/queue/pause").status_code == 403
    assert staged_files(daemon) == []
    with as_(SUBMIT) as shop, as_(ADMIN) as ops:
        answer = shop.post("/queue/submit", files=image)
        assert answer.status_code == 202
        assert shop.post("/queue/pause").status_code == 403
        assert ops.post("/queue/pause").status_code == 200
        assert ops.post("/queue/resume").status_code == 200
        assert wait_job(shop, answer.json()["job_id"])["status"] == "completed"
    who = {(e["command"], e["token"]) for e in daemon.events("http.command")}
    assert who == {("submit", "shop"), ("pause", "ops"), ("resume", "ops")}
    logged = daemon.log_text()
    assert READ not in logged and SUBMIT not in logged and ADMIN not in logged
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("http", "tokens", "fragment"),
    [
        ({"listen": "0.0.0.0:0"}, None, "http.tokens_file: required"),
        (
            {"tokens_file": "tokens"},
            "viewer read short\n",
            "line 1: the token of 'viewer' is shorter",
        ),
        ({"tokens_file": "tokens"}, f"a superuser {READ}\n", "line 1: scope must be one of"),
        ({"tokens_file": "missing"}, None, "http.tokens_file: no such file"),
        ({"tls_cert": "cert.pem", "tls_key": "key.pem"}, None, "http.tls_cert"),
    ],
)
def test_start_up_refusals_name_the_key(  # noqa: PLR0917
    made: list[DaemonProcess],
    tmp_path: Path,
    model_store: ModelStore,
    http: dict[str, str],
    tokens: str | None,
    fragment: str,
) -> None:
    if tokens is not None:
        (tmp_path / "tokens").write_text(tokens)
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    daemon = start(made, http_daemon(tmp_path, model_store, http), wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=120) == 2
    assert fragment in daemon.log_text()


def test_a_port_in_use_is_refused(
    made: list[DaemonProcess], tmp_path: Path, model_store: ModelStore
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = http_daemon(tmp_path, model_store, {"listen": f"127.0.0.1:{port}"})
        start(made, daemon, wait_ready=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=120) == 2
    assert f"http.listen: cannot listen on 127.0.0.1:{port}" in daemon.log_text()


def test_a_full_queue_answers_429_with_retry_after(
    made: list[DaemonProcess], tmp_path: Path, model_store: ModelStore, photos: dict[str, Path]
) -> None:
    daemon = start(made, http_daemon(tmp_path, model_store, {"max_queued_files": 2}))
    with httpx.Client(base_url=base_url(daemon), timeout=60) as client:
        client.post("/queue/pause")
        image = ("a.jpg", photos["astronaut.jpg"].read_bytes())
        first = client.post("/queue/submit", files=[("images", image), ("images", image)])
        assert first.status_code == 202
        full = client.post("/queue/submit", files={"images": image})
        assert full.status_code == 429
        assert int(full.headers["retry-after"]) >= 1
        assert client.post("/api/remove", files={"file": image}).status_code == 429
        assert [j["job_id"] for j in client.get("/queue/jobs").json()["jobs"]] == [
            first.json()["job_id"]
        ]
        assert staged_files(daemon) == []
        client.post("/queue/resume")
        assert wait_job(client, first.json()["job_id"])["status"] == "completed"
        assert client.post("/queue/submit", files={"images": image}).status_code == 202


def test_kill_9_mid_upload_leaves_no_trace(
    made: list[DaemonProcess], tmp_path: Path, model_store: ModelStore
) -> None:
    daemon = start(made, http_daemon(tmp_path, model_store))
    url = base_url(daemon)
    sock = open_upload(url, 4 * 1024 * 1024, b"\xff" * 1024 * 1024)
    try:
        wait_for(lambda: any(p.is_file() for p in staged_files(daemon)), what="the upload on disk")
        daemon.kill()
    finally:
        sock.close()
    assert staged_files(daemon)  # the half upload is there while the daemon is down
    daemon.start()
    with httpx.Client(base_url=base_url(daemon), timeout=60) as client:
        assert client.get("/queue/jobs").json()["jobs"] == []
    assert staged_files(daemon) == []
    assert daemon.count("http.staging_cleared") == 1


def test_kill_9_mid_job_then_the_accepted_job_finishes(
    made: list[DaemonProcess], tmp_path: Path, model_store: ModelStore, photos: dict[str, Path]
) -> None:
    daemon = start(made, http_daemon(tmp_path, model_store))
    names = ["astronaut.jpg", "coffee.png", "rocket.jpg", "cat.png"]
    files = [("images", (n, photos[n].read_bytes())) for n in names]
    with httpx.Client(base_url=base_url(daemon), timeout=60) as client:
        job_id = client.post("/queue/submit", files=files).json()["job_id"]

        def running() -> bool:
            files = client.get(f"/queue/job/{job_id}").json()["files"]
            return any(f["state"] == "running" for f in files)

        wait_for(running, what="a file of the job running")
    daemon.kill()
    daemon.start()
    with httpx.Client(base_url=base_url(daemon), timeout=60) as client:
        job = wait_job(client, job_id)
    assert job["status"] == "completed"
    assert sorted(f["name"] for f in job["files"]) == sorted(names)
    outputs = sorted(p.name for p in (tmp_path / "outbox").rglob("*.png"))
    assert outputs == sorted(n.rsplit(".", 1)[0] + ".png" for n in names)
    assert staged_files(daemon) == []
    assert daemon.stop(signal.SIGTERM) == 0


def test_https_with_tls_cert_and_key(
    made: list[DaemonProcess], tmp_path: Path, model_store: ModelStore
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate to test HTTPS with")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    http = {"tls_cert": "cert.pem", "tls_key": "key.pem"}
    daemon = start(made, http_daemon(tmp_path, model_store, http))
    url = base_url(daemon)
    assert url.startswith("https://127.0.0.1:")
    with httpx.Client(
        base_url=url, verify=ssl.create_default_context(cafile=tmp_path / "cert.pem"), timeout=60
    ) as client:
        assert client.get("/health").json()["status"] == "ok"
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the same port gets no answer
        httpx.get(url.replace("https://", "http://") + "/health", timeout=10)


def test_ready_says_503_while_an_inbox_is_gone_and_recovers_when_it_is_back(
    made: list[DaemonProcess], tmp_path: Path, model_store: ModelStore, photos: dict[str, Path]
) -> None:
    """An unmounted share kills the watch's emitter; /ready must say so, and the daemon watches
    the inbox again once it is back (event-driven pickup restored without a restart)."""
    daemon = start(made, http_daemon(tmp_path, model_store, daemon__rescan_interval=1))
    with httpx.Client(base_url=base_url(daemon), timeout=60) as client:
        assert client.get("/ready").status_code == 200
        inbox = tmp_path / "inbox"
        shutil.rmtree(inbox)

        def not_ready() -> dict[str, Any] | None:
            answer = client.get("/ready")
            return answer.json() if answer.status_code == 503 else None

        body = wait_for(not_ready, timeout=30, what="/ready answering 503")
        assert body["ready"] is False and body["checks"]["watches_live"] is False
        assert body["checks"]["ledger_open"] is True
        wait_for(lambda: daemon.events("watch.unavailable"), what="watch.unavailable logged")

        inbox.mkdir()
        wait_for(lambda: client.get("/ready").status_code == 200, timeout=30, what="ready again")
        assert daemon.events("watch.revived")
        shutil.copy(photos["astronaut.jpg"], inbox / "back.jpg")
        wait_for(lambda: list((tmp_path / "outbox").glob("back*.png")), timeout=120, what="output")
