"""The queue service's JSON shapes, made from the command layer's answers.

``watchd job ID`` and ``GET /queue/job/{id}`` show the same ledger rows; here they are
renamed to what the queue service's clients read: ``job_id``, ``status`` (``queued``,
``processing``, ``completed``, ``failed``, ``cancelled``) and ``progress``
``{processed, total, failed, percent}``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from watchd.errors import OutputMissing

#: A finished job's ledger state -> its status here.
ENDED: Final = {"done": "completed", "failed": "failed", "cancelled": "cancelled"}
#: The statuses a client may filter on, and the ledger state each one lives in.
STATUS_STATES: Final = {
    "queued": "active",
    "processing": "active",
    "completed": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


class Progress(BaseModel):
    processed: int
    total: int
    failed: int
    percent: float


class FileView(BaseModel):
    id: int
    name: str
    state: str
    error: str | None
    size: int
    output: str | None  # the link to the cutout once it is written


class JobView(BaseModel):
    job_id: int
    status: str
    name: str
    watch: str
    priority: int
    files_count: int
    progress: Progress
    created_at: str
    finished_at: str | None
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None
    files: list[FileView] | None = None


class JobsPage(BaseModel):
    jobs: list[JobView]
    next_before: int | None


class Submitted(BaseModel):
    job_id: int
    status: str
    files_count: int


def iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat().replace("+00:00", "Z")


def status_of(job: Mapping[str, Any]) -> str:
    state = str(job["state"])
    if state in ENDED:
        return ENDED[state]
    started = int(job.get("running", 0)) + int(job.get("done", 0)) + int(job.get("failed", 0))
    return "processing" if started else "queued"


def job_view(job: Mapping[str, Any], *, with_files: bool = False) -> JobView:
    total = int(job.get("total", 0))
    failed = int(job.get("failed", 0))
    processed = int(job.get("done", 0)) + failed
    progress = job.get("progress") or {}
    view = JobView(
        job_id=int(job["id"]),
        status=status_of(job),
        name=str(job.get("name", "")),
        watch=str(job.get("watch", "")),
        priority=int(job.get("priority", 0)),
        files_count=total,
        progress=Progress(
            processed=processed,
            total=total,
            failed=failed,
            percent=round(100.0 * processed / total, 1) if total else 100.0,
        ),
        created_at=iso(job.get("created_at")) or "",
        finished_at=iso(job.get("finished_at")),
        elapsed_seconds=progress.get("elapsed_seconds"),
        eta_seconds=progress.get("eta_seconds"),
    )
    if with_files:
        view.files = [file_view(int(job["id"]), f) for f in job.get("files", [])]
    return view


def file_view(job_id: int, file: Mapping[str, Any]) -> FileView:
    done = file.get("state") == "done"
    return FileView(
        id=int(file["id"]),
        name=str(file.get("rel", "")),
        state=str(file.get("state", "")),
        error=file.get("error"),
        size=int(file.get("size", 0)),
        output=f"/queue/job/{job_id}/files/{file['id']}" if done else None,
    )


# --- reading a job's outputs ---------------------------------------------------------------------


def open_output(path: Path, outbox: Path) -> int:
    """A read-only descriptor of a job's output, never anything outside the watch's outbox.

    The folders on the way must resolve inside the outbox (someone with access to a
    shared outbox could replace one by a link) and the file itself is opened without
    following a link and must be a regular file.
    """
    parent = os.path.realpath(path.parent)
    root = os.path.realpath(outbox)
    if parent != root and not parent.startswith(root + os.sep):
        raise OutputMissing(f"{path.name}: not inside the outbox")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise OutputMissing(f"{path.name}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OutputMissing(f"{path.name}: not a regular file")
    return fd


def read_chunks(fd: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The file's bytes in chunks; closes ``fd`` at the end (or when the caller stops)."""
    try:
        while data := os.read(fd, chunk):
            yield data
    finally:
        os.close(fd)


MEDIA_TYPES: Final = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg"}
