"""The HTTP door against the real daemon: real uploads over a real socket with httpx.

One daemon serves the tests that do not change its settings (module fixture ``door``);
each test leaves its staging folder empty, which the next one checks too.
"""

from __future__ import annotations

import io
import json
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.http_support import (
    base_url,
    http_daemon,
    make_zip,
    open_upload,
    staged_files,
    wait_job,
)
from tests.support import DaemonProcess, wait_for
from watchd.control_client import ControlClient
from watchd.models import ModelStore

pytestmark = pytest.mark.e2e

MAX_UPLOAD = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def door(
    tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore
) -> Iterator[tuple[DaemonProcess, httpx.Client]]:
    root = tmp_path_factory.mktemp("door")
    daemon = http_daemon(
        root, model_store, {"max_upload_bytes": MAX_UPLOAD, "max_files_per_job": 20}
    ).start()
    with httpx.Client(base_url=base_url(daemon), timeout=60) as client:
        yield daemon, client
    daemon.stop()


def job_ids(client: httpx.Client) -> list[int]:
    answer = client.get("/queue/jobs", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return [job["job_id"] for job in answer.json()["jobs"]]


def refused(
    door: tuple[DaemonProcess, httpx.Client], status: int, *args: Any, **kwargs: Any
) -> str:
    """POST, expect ``status``; nothing recorded, nothing left in the staging folder."""
    daemon, client = door
    before = job_ids(client)
    answer = client.post(*args, **kwargs)
    assert answer.status_code == status, answer.text
    assert job_ids(client) == before
    assert staged_files(daemon) == []
    detail = answer.json()["detail"]
    return detail if isinstance(detail, str) else json.dumps(detail)


# --- the happy path -------------------------------------------------------------------------------


def test_submit_poll_and_download(
    door: tuple[DaemonProcess, httpx.Client], photos: dict[str, Path]
) -> None:
    daemon, client = door
    files = [
        ("images", ("astronaut.jpg", photos["astronaut.jpg"].read_bytes(), "image/jpeg")),
        ("images", ("coffee.png", photos["coffee.png"].read_bytes(), "image/png")),
    ]
    answer = client.post("/queue/submit", files=files, data={"name": "shoot", "format": "webp"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "queued" and body["files_count"] == 2
    job_id = body["job_id"]
    assert answer.headers["location"] == f"/queue/job/{job_id}"
    assert staged_files(daemon) == []

    job = wait_job(client, job_id)
    assert job["status"] == "completed"
    assert job["progress"] == {"processed": 2, "total": 2, "failed": 0, "percent": 100.0}
    assert sorted(f["name"] for f in job["files"]) == ["astronaut.jpg", "coffee.png"]
    for file in job["files"]:
        assert file["state"] == "done" and file["error"] is None
        cutout = client.get(file["output"])
        assert cutout.status_code == 200
        assert cutout.headers["content-type"] == "image/webp"
        assert cutout.content[8:12] == b"WEBP"
    # the outputs are where a dropped folder named "shoot" puts them
    assert sorted(p.name for p in (daemon.root / "outbox" / "shoot").iterdir()) == [
        "astronaut.webp",
        "coffee.webp",
    ]
    with zipfile.ZipFile(io.BytesIO(client.get(f"/queue/job/{job_id}/results.zip").content)) as z:
        assert sorted(z.namelist()) == ["astronaut.webp", "coffee.webp"]
        assert z.read("coffee.webp")[8:12] == b"WEBP"
    # the same job through the control socket, as `watchd jobs` sees it
    control = ControlClient(daemon.root / "state" / "control.sock")
    assert control.call("job", id=job_id)["name"] == "shoot"
    # the event stream of an ended job: its state, then the end
    events = client.get(f"/queue/job/{job_id}/events").text
    assert events.startswith("event: progress\n") and "event: end\n" in events
    logged = [e for e in daemon.events("http.command") if e["command"] == "submit"]
    assert logged and logged[-1]["token"] == "anonymous"


def test_a_zip_is_a_folder(
    door: tuple[DaemonProcess, httpx.Client], photos: dict[str, Path]
) -> None:
    _daemon, client = door
    data = make_zip(
        [
            ("shoot/a.jpg", photos["rocket.jpg"].read_bytes()),
            ("shoot/sub/b.png", photos["cat.png"].read_bytes()),
            ("__MACOSX/shoot/._a.jpg", b"litter"),
        ]
    )
    answer = client.post("/queue/submit", files={"images": ("shoot.zip", data, "application/zip")})
    assert answer.status_code == 202, answer.text
    job = wait_job(client, answer.json()["job_id"])
    assert sorted(f["name"] for f in job["files"]) == ["shoot/a.jpg", "shoot/sub/b.png"]
    assert job["status"] == "completed"


def test_a_non_image_fails_with_its_reason(door: tuple[DaemonProcess, httpx.Client]) -> None:
    daemon, client = door
    answer = client.post(
        "/queue/submit", files={"images": ("notes.jpg", b"not a photo", "image/jpeg")}
    )
    assert answer.status_code == 202, answer.text
    job = wait_job(client, answer.json()["job_id"])
    (file,) = job["files"]
    assert job["status"] == "failed" and file["state"] == "failed"
    assert "cannot identify image file" in file["error"] or "not an image" in file["error"].lower()
    assert file["output"] is None
    assert client.get(f"/queue/job/{job['job_id']}/files/{file['id']}").status_code == 404
    # as a folder drop: the original and its note are in the failed folder
    assert list((daemon.root / "failed").rglob("notes.jpg.error.txt"))


def cat_file(photos: dict[str, Path]) -> dict[str, tuple[str, bytes, str]]:
    """The cat photo as a rembg client sends it to ``POST /api/remove``."""
    return {"file": ("cat.png", photos["cat.png"].read_bytes(), "image/png")}


def test_api_remove_answers_the_cutout(
    door: tuple[DaemonProcess, httpx.Client], photos: dict[str, Path]
) -> None:
    _daemon, client = door
    answer = client.post("/api/remove", files=cat_file(photos), data={"model": "u2netp", "om": "1"})
    assert answer.status_code == 200, answer.text
    assert answer.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(answer.content)).mode == "L"  # om: only the mask
    job = client.get(f"/queue/job/{answer.headers['x-watchd-job']}").json()
    assert job["status"] == "completed" and job["priority"] == 100
    bad = client.post("/api/remove", files={"file": ("x.png", b"junk", "image/png")})
    assert bad.status_code == 422 and "x.png" in bad.json()["detail"]


def test_api_remove_takes_the_product_shot_options(
    door: tuple[DaemonProcess, httpx.Client], photos: dict[str, Path]
) -> None:
    """rembg's server has no crop or canvas; watchd's /api/remove takes a sidecar's."""
    _daemon, client = door
    shot = client.post(
        "/api/remove", files=cat_file(photos), data={"canvas": "300x200", "fill": ".5"}
    )
    assert shot.status_code == 200, shot.text
    placed = Image.open(io.BytesIO(shot.content))
    assert placed.size == (300, 200)
    box = placed.getchannel("A").point(lambda a: 255 if a >= 26 else 0).getbbox()
    assert box is not None
    assert box[2] - box[0] <= 151 and box[3] - box[1] <= 101  # fits in half the canvas
    bad = client.post("/api/remove", files=cat_file(photos), params={"canvas": "big"})
    assert bad.status_code == 422 and "canvas" in bad.text


def test_probes_and_metrics(door: tuple[DaemonProcess, httpx.Client]) -> None:
    _daemon, client = door
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "watchd_files_total" in metrics.text and "watchd_workers" in metrics.text
    stats = client.get("/queue/stats").json()
    assert stats["version"] == 1 and "files" in stats and "throughput" in stats
    assert client.get("/openapi.json").json()["paths"]["/queue/submit"]["post"]
    docs = client.get("/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_cancel_and_pause_through_http(
    door: tuple[DaemonProcess, httpx.Client], photos: dict[str, Path]
) -> None:
    _daemon, client = door
    assert client.post("/queue/pause").json() == {"paused": True}
    try:
        answer = client.post(
            "/queue/submit", files={"images": ("a.jpg", photos["astronaut.jpg"].read_bytes())}
        )
        job_id = answer.json()["job_id"]
        assert client.get(f"/queue/job/{job_id}").json()["status"] == "queued"
        assert (
            client.get("/queue/jobs", params={"status": "queued"}).json()["jobs"][0]["job_id"]
            == job_id
        )
        assert client.post(f"/queue/job/{job_id}/cancel").json()["cancelled_files"] == 1
    finally:
        assert client.post("/queue/resume").json() == {"paused": False}
    assert wait_job(client, job_id)["status"] == "cancelled"
    assert client.post(f"/queue/job/{job_id}/cancel").status_code == 409
    assert client.post("/queue/job/999999/cancel").status_code == 404
    assert client.get("/queue/job/999999").status_code == 404


def test_a_folder_job_shows_over_http(
    door: tuple[DaemonProcess, httpx.Client], photos: dict[str, Path]
) -> None:
    daemon, client = door
    folder = daemon.root / "inbox" / "dropped"
    folder.mkdir()
    (folder / "c.jpg").write_bytes(photos["rocket.jpg"].read_bytes())

    def listed() -> dict[str, Any] | None:
        jobs = client.get("/queue/jobs").json()["jobs"]
        return next((j for j in jobs if j["name"] == "dropped"), None)

    job = wait_for(listed, what="the dropped folder's job in GET /queue/jobs")
    assert wait_job(client, job["job_id"])["status"] == "completed"


# --- bad input ------------------------------------------------------------------------------------


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(
    door: tuple[DaemonProcess, httpx.Client],
) -> None:
    big = b"\xff" * (MAX_UPLOAD + 1)
    detail = refused(door, 413, "/queue/submit", files={"images": ("big.jpg", big)})
    assert str(MAX_UPLOAD) in detail


def test_an_upload_over_the_limit_without_a_length_is_413(
    door: tuple[DaemonProcess, httpx.Client],
) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as bytes arrive
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"\0" * 65536

    headers = {"content-type": "multipart/form-data; boundary=b"}
    refused(door, 413, "/queue/submit", content=chunks(), headers=headers)


@pytest.mark.parametrize(
    ("entries", "links", "status", "fragment"),
    [
        ([("../evil.jpg", b"x")], (), 422, "outside the folder"),
        ([("ok/../../evil.jpg", b"x")], (), 422, "outside the folder"),
        ([("/etc/evil.jpg", b"x")], (), 422, "absolute name"),
        ([("C:/evil.jpg", b"x")], (), 422, "absolute name"),
        ([("link.jpg", b"/etc/passwd")], ("link.jpg",), 422, "symbolic link"),
        ([("bomb.jpg", b"\0" * (MAX_UPLOAD + 1))], (), 413, "zip bomb"),
        ([(f"{i}.jpg", b"x") for i in range(21)], (), 413, "more than 20 files"),
        ([("a.jpg", b"x"), ("a.jpg/b.jpg", b"y")], (), 422, "both a file and a folder"),
        ([("a.jpg", b"x"), ("./a.jpg", b"y")], (), 422, "in the job twice"),
    ],
)
def test_unsafe_zips_are_refused(
    door: tuple[DaemonProcess, httpx.Client],
    entries: list[tuple[str, bytes]],
    links: tuple[str, ...],
    status: int,
    fragment: str,
) -> None:
    data = make_zip(entries, links=links)
    assert len(data) < MAX_UPLOAD
    detail = refused(door, status, "/queue/submit", files={"images": ("up.zip", data)})
    assert fragment in detail and "up.zip" in detail


def test_a_broken_zip_is_refused(door: tuple[DaemonProcess, httpx.Client]) -> None:
    detail = refused(door, 422, "/queue/submit", files={"images": ("up.zip", b"PK\x03\x04junk")})
    assert "not a valid zip" in detail
    data = bytearray(make_zip([("a.jpg", b"a" * 5000)]))
    start = data.index(b"a.jpg") + len("a.jpg")  # the first entry's compressed bytes
    data[start + 2 : start + 6] = b"\xff\xff\xff\xff"
    detail = refused(door, 422, "/queue/submit", files={"images": ("up.zip", bytes(data))})
    assert "cannot be read" in detail


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (
            b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\nabc',
            "multipart/form-data; boundary=b",
            400,
        ),
        (b"garbage", "multipart/form-data; boundary=b", 400),
        (
            b"--b\r\nNo-Disposition: x\r\n\r\nabc\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            400,
        ),
        (b"{}", "application/json", 415),
        (b"x", "multipart/form-data", 400),
    ],
)
def test_malformed_multipart_bodies(
    door: tuple[DaemonProcess, httpx.Client], body: bytes, content_type: str, status: int
) -> None:
    refused(door, status, "/queue/submit", content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(
    ("params", "data", "named"),
    [
        ({}, {"colour": "red"}, "'colour'"),
        ({"colour": "red"}, {}, "colour"),
        ({"format": "gif"}, {}, "format"),
        ({}, {"format": "gif"}, "format"),
        ({}, {"model": "nope"}, "unknown model 'nope'"),
        ({}, {"priority": "1000"}, "priority"),
        ({}, {"background": "red"}, "background"),
        ({}, {"format": "jpeg"}, "background"),  # JPEG needs a background, as in a sidecar
        ({}, {"watch": "elsewhere"}, "no watch named 'elsewhere'"),
        ({}, {"name": "../up"}, "name"),
        ({"format": "png"}, {"format": "png"}, "both in the query and the form"),
        ({}, {"canvas": "big"}, 'canvas: expected a size like "2000x2000"'),
        ({}, {"fill": "2"}, "fill: must be at least 0.05 and at most 1"),
        ({}, {"margin": "-3"}, "margin"),
        ({}, {"margin": "3.5"}, "expected whole pixels or a percentage"),
        ({"crop": "all"}, {}, "crop"),
        ({}, {"align": "top"}, "align"),
    ],
)
def test_unknown_fields_and_bad_values_are_422_naming_them(
    door: tuple[DaemonProcess, httpx.Client],
    photos: dict[str, Path],
    params: dict[str, str],
    data: dict[str, str],
    named: str,
) -> None:
    files = {"images": ("a.jpg", photos["astronaut.jpg"].read_bytes())}
    detail = refused(door, 422, "/queue/submit", params=params, data=data, files=files)
    assert named in detail


def test_a_text_field_in_place_of_images_is_422(door: tuple[DaemonProcess, httpx.Client]) -> None:
    detail = refused(door, 422, "/queue/submit", data={"images": "a.jpg"}, files={"x": ("", b"")})
    assert "images" in detail or "'x'" in detail


def test_a_client_that_disconnects_mid_upload_leaves_nothing(
    door: tuple[DaemonProcess, httpx.Client],
) -> None:
    daemon, client = door
    before = job_ids(client)
    abandoned = daemon.count("http.upload_abandoned")
    sock = open_upload(str(client.base_url), 2 * 1024 * 1024, b"\xff" * 512 * 1024)
    wait_for(lambda: any(p.is_file() for p in staged_files(daemon)), what="the upload on disk")
    sock.close()
    wait_for(lambda: daemon.count("http.upload_abandoned") > abandoned, what="the abandoned upload")
    assert staged_files(daemon) == []
    assert job_ids(client) == before


def test_idle_keep_alive_connections_do_not_starve_others(
    door: tuple[DaemonProcess, httpx.Client],
) -> None:
    _daemon, client = door
    host, port = client.base_url.host, client.base_url.port
    idle: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection((host, port))
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            idle.append(sock)
        for sock in idle:  # each got its answer and now idles, kept alive
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        with httpx.Client(base_url=client.base_url, timeout=10) as fresh:
            assert fresh.get("/queue/stats").status_code == 200
        assert time.monotonic() - started < 2.0
    finally:
        for sock in idle:
            sock.close()


def test_retry_of_a_failed_file(door: tuple[DaemonProcess, httpx.Client]) -> None:
    daemon, client = door
    answer = client.post("/queue/submit", files={"images": ("broken.png", b"not a png")})
    job = wait_job(client, answer.json()["job_id"])
    assert job["status"] == "failed"
    retried = client.post(f"/queue/job/{job['job_id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["requeued_files"] == 1
    job = wait_job(client, job["job_id"])
    assert job["status"] == "failed"  # still not an image: failed again, with its reason
    assert job["files"][0]["error"]
    retries = [e for e in daemon.events("http.command") if e["command"] == "retry"]
    assert retries[-1]["args"] == {"id": job["job_id"]}


def test_a_cutout_replaced_by_a_link_is_not_served(
    door: tuple[DaemonProcess, httpx.Client], photos: dict[str, Path], tmp_path: Path
) -> None:
    daemon, client = door
    answer = client.post(
        "/queue/submit",
        files={"images": ("cat.png", photos["cat.png"].read_bytes())},
        data={"name": "linked"},
    )
    job = wait_job(client, answer.json()["job_id"])
    (file,) = job["files"]
    output = daemon.root / "outbox" / "linked" / "cat.png"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    output.unlink()
    output.symlink_to(secret)  # someone with access to a shared outbox swaps the cutout
    assert client.get(file["output"]).status_code == 404
    with zipfile.ZipFile(
        io.BytesIO(client.get(f"/queue/job/{job['job_id']}/results.zip").content)
    ) as z:
        assert z.namelist() == []
    folder = daemon.root / "outbox" / "linked"
    folder.rename(daemon.root / "outbox" / "moved")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "cat.png").write_text("outside")
    folder.symlink_to(tmp_path / "elsewhere")  # the job's folder now leads outside the outbox
    assert client.get(file["output"]).status_code == 404
    assert client.get(f"/queue/job/{job['job_id']}/files/999999").status_code == 404
