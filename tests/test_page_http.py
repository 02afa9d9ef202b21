"""The page's routes against the real daemon over real HTTP (no browser): the page files
and their headers, ``/auth/whoami``, and thumbnails (bounds, cache, only the ledger's
paths of that job's file, 404s).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.http_support import base_url, http_daemon, wait_job
from tests.support import DaemonProcess
from watchd.http.page import CSP
from watchd.models import ModelStore

pytestmark = pytest.mark.e2e

READ_TOKEN = "page-reader-token-0123456789"
SUBMIT_TOKEN = "page-submit-token-0123456789"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore, photos: dict[str, Path]
) -> Iterator[tuple[DaemonProcess, httpx.Client, dict[str, object]]]:
    """One daemon with tokens and one finished job of two files: a photo and a non-image."""
    root = tmp_path_factory.mktemp("page")
    tokens = root / "tokens"
    tokens.write_text(f"viewer read {READ_TOKEN}\nshop submit {SUBMIT_TOKEN}\n")
    daemon = http_daemon(root, model_store, {"tokens_file": str(tokens)}).start()
    headers = {"Authorization": f"Bearer {SUBMIT_TOKEN}"}
    with httpx.Client(base_url=base_url(daemon), timeout=60, headers=headers) as client:
        files = [
            ("images", ("astronaut.jpg", photos["astronaut.jpg"].read_bytes(), "image/jpeg")),
            ("images", ("notes.jpg", b"this is not a picture", "image/jpeg")),
        ]
        answer = client.post("/queue/submit", files=files)
        assert answer.status_code == 202, answer.text
        job = wait_job(client, answer.json()["job_id"])
        yield daemon, client, job
    daemon.stop()


def _file(job: dict[str, object], name: str) -> dict[str, object]:
    files = job["files"]
    assert isinstance(files, list)
    return next(f for f in files if f["name"] == name)


def test_page_files_are_served_with_a_strict_csp_and_no_token(
    served: tuple[DaemonProcess, httpx.Client, dict[str, object]],
) -> None:
    daemon, _client, _job = served
    with httpx.Client(base_url=base_url(daemon), timeout=30) as anonymous:
        for path, media in (
            ("/", "text/html"),
            ("/page/app.js", "text/javascript"),
            ("/page/style.css", "text/css"),
        ):
            answer = anonymous.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith(media)
            assert answer.headers["content-security-policy"] == CSP
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["x-frame-options"] == "DENY"
        assert '<script src="/page/app.js"' in anonymous.get("/").text
        assert anonymous.get("/page/../tokens").status_code == 404
        assert anonymous.get("/page/missing.js").status_code == 404
        # the data behind the page still needs the token
        assert anonymous.get("/queue/stats").status_code == 401
        assert anonymous.get("/auth/whoami").status_code == 401
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert "/" not in paths and "/auth/whoami" in paths


def test_whoami_names_the_token_and_its_scope(
    served: tuple[DaemonProcess, httpx.Client, dict[str, object]],
) -> None:
    daemon, client, _job = served
    assert client.get("/auth/whoami").json() == {
        "name": "shop",
        "scope": "submit",
        "tokens_required": True,
    }
    url = base_url(daemon)
    reader = httpx.get(f"{url}/auth/whoami", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert reader.json()["scope"] == "read"
    wrong = httpx.get(f"{url}/auth/whoami", headers={"Authorization": "Bearer not-a-token-at-all"})
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "unknown token"


def test_thumbnails_are_bounded_and_cached(
    served: tuple[DaemonProcess, httpx.Client, dict[str, object]],
) -> None:
    daemon, client, job = served
    photo = _file(job, "astronaut.jpg")
    assert photo["state"] == "done" and photo["attempts"] == 1
    assert isinstance(photo["seconds"], float) and photo["seconds"] > 0
    base = f"/queue/job/{job['job_id']}/files/{photo['id']}/thumbnail"
    cache = daemon.root / "state" / "cache" / "thumbs"
    for side, mode in (("after", "RGBA"), ("before", "RGB")):
        first = client.get(base, params={"side": side})
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "image/webp"
        with Image.open(io.BytesIO(first.content)) as picture:
            assert picture.size == (320, 320)  # the astronaut is 512 x 512
            assert picture.mode == mode
        second = client.get(base, params={"side": side})
        assert (first.headers["x-thumbnail"], second.headers["x-thumbnail"]) == ("made", "hit")
        assert second.content == first.content
    assert len([p for p in cache.iterdir() if p.suffix == ".webp"]) == 2
    # "after" is the default side
    assert client.get(base).headers["x-thumbnail"] == "hit"


def test_thumbnails_answer_404_or_422_and_read_no_path_from_the_request(
    served: tuple[DaemonProcess, httpx.Client, dict[str, object]],
) -> None:
    daemon, client, job = served
    job_id = job["job_id"]
    photo, bad = _file(job, "astronaut.jpg"), _file(job, "notes.jpg")
    assert bad["state"] == "failed" and bad["error"]

    def status(path: str, **params: str) -> int:
        return client.get(path, params=params).status_code

    assert status(f"/queue/job/{job_id}/files/{bad['id']}/thumbnail") == 404  # no cutout
    # the original of a failed file is in the failed folder: not an image, said so
    answer = client.get(f"/queue/job/{job_id}/files/{bad['id']}/thumbnail?side=before")
    assert answer.status_code == 415
    assert "cannot make a thumbnail" in answer.json()["detail"]
    assert status(f"/queue/job/{job_id + 1000}/files/{photo['id']}/thumbnail") == 404
    assert status(f"/queue/job/{job_id}/files/{photo['id'] + 1000}/thumbnail") == 404
    assert status(f"/queue/job/{job_id}/files/{photo['id']}/thumbnail", side="../../x") == 422
    assert status(f"/queue/job/{job_id}/files/0/thumbnail") == 422
    escape = f"/queue/job/{job_id}/files/{photo['id']}/thumbnail/../../../../etc/passwd"
    assert status(escape) == 404
    reader = {"Authorization": f"Bearer {READ_TOKEN}"}
    url = f"{base_url(daemon)}/queue/job/{job_id}/files/{photo['id']}/thumbnail"
    assert httpx.get(url, headers=reader).status_code == 200  # read is enough
    assert httpx.get(url).status_code == 401

    # the cutout replaced by a link to a file outside the outbox: not followed
    output = next((daemon.root / "outbox").rglob("astronaut*.png"))
    secret = daemon.root / "secret.png"
    Image.new("RGB", (64, 64)).save(secret)
    os.replace(output, daemon.root / "moved.png")
    output.symlink_to(secret)
    for cached in (daemon.root / "state" / "cache" / "thumbs").iterdir():
        cached.unlink()  # nothing to answer from the cache
    answer = client.get(f"/queue/job/{job_id}/files/{photo['id']}/thumbnail")
    assert answer.status_code == 404
    assert "the after picture is gone" in answer.json()["detail"]
