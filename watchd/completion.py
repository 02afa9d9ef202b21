"""When a job ends: its manifest, then its hooks, then the ledger is told it was reported.

The manifest is what lets a downstream tool know that a job is complete
(docs/design.md, invariant 3). It sits in the outbox *beside* the job's outputs
(``<outbox>/<folder name>.manifest.json`` for a folder job, ``<outbox>/<first
input stem>.manifest.json`` for loose files; the path is assigned at intake,
with the outputs, so two jobs never share one), and it is written last: after
every output is in place and every original is archived or in ``failed/``.
A tool that waits for ``*.manifest.json`` therefore never sees a partial job.

Order, and what a crash costs (at least once, never lost):

1. the job's last file ends (the ledger marks the job ended, ``reported = 0``);
2. the manifest is written atomically (temp, fsync, rename, fsync folder);
3. the hooks are handed over (``on_complete`` command, webhook; :mod:`watchd.hooks`);
4. when every hook of the job has finished (the command exited or was killed at its
   time limit; the webhook was delivered or given up), the ledger marks the job
   ``reported``.

Each hook has a delivery in the ledger (``hook_deliveries``: its id, and whether it
finished), recorded before it is handed over and marked finished when it calls back.
A crash anywhere before 4 leaves the job unreported; after a restart it is found
again (:meth:`Completion.report_unreported`): the manifest is rewritten with the same
content and only the hooks that had not finished run again, with the same delivery
id (at least once per hook; a receiver de-duplicates on ``X-Watchd-Delivery``). A hook
whose queue is full is deferred, not dropped: the job stays unreported and the
periodic pass hands the hook over again. Nothing in memory is needed to get there, so
``kill -9`` loses no completion.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from watchd.config import HooksConfig
from watchd.files import page_paths, write_via_temp
from watchd.ledger import FileDetail, JobDetail, Ledger, NotFound
from watchd.stats import iso_utc

log = structlog.get_logger()

#: Version of the manifest's layout (``"version"`` in the file); see docs/completion.md.
MANIFEST_VERSION = 1

#: Ended jobs looked up per pass of :meth:`Completion.report_unreported`.
UNREPORTED_BATCH = 100


# --- the manifest ---------------------------------------------------------------------------------


def manifest_temp_name(job_id: int) -> str:
    """The hidden temp name of job ``job_id``'s manifest while it is written.

    Not ``files.temp_name``: that one is derived from *file* ids, and job 7's manifest
    and file 7's output may be written into the same outbox folder. It does not end in
    ``.manifest.json``, so a tool globbing for manifests never picks up a partial one.
    """
    return f".watchd-job-{job_id}.manifest.tmp"


def _text(value: str) -> tuple[str, bool]:
    """``value`` as valid Unicode (undecodable file-name bytes become U+FFFD); lossy or not."""
    raw = os.fsencode(value)
    text = raw.decode("utf-8", "replace")
    return text, text.encode("utf-8") != raw


def _b64(value: str) -> str:
    return base64.b64encode(os.fsencode(value)).decode("ascii")


def _clean(value: str | None) -> str | None:
    return None if value is None else _text(value)[0]


def _relative(path: Path, outbox: Path) -> str:
    """``path`` relative to the outbox (where the manifest is); absolute if it is not below."""
    try:
        return path.relative_to(outbox).as_posix()
    except ValueError:
        return str(path)


def file_entry(file: FileDetail, outbox: Path) -> dict[str, Any]:
    """One input of the manifest: its state, and its outputs or its error.

    Paths are relative to the outbox (the manifest's own folder). A name that is not
    valid UTF-8 is shown with U+FFFD and its exact bytes are added, base64-encoded, as
    ``input_b64`` / ``outputs_b64``, so a tool can still find the file.
    """
    entry: dict[str, Any] = {"id": file.id}
    entry["input"], lossy = _text(file.rel)
    if lossy:
        entry["input_b64"] = _b64(file.rel)
    entry["state"] = file.state
    entry["bytes_in"] = file.size
    if file.state == "done":
        outputs = [_relative(p, outbox) for p in page_paths(file.output, file.pages)]
        texts = [_text(o) for o in outputs]
        entry["outputs"] = [t for t, _ in texts]
        if any(lossy for _, lossy in texts):
            entry["outputs_b64"] = [_b64(o) for o in outputs]
        entry["bytes_out"] = file.output_bytes
    else:
        entry["error"] = _clean(file.error) or file.state
    return entry


def _when(unix: float | None) -> dict[str, Any] | None:
    return None if unix is None else {"iso": iso_utc(unix), "epoch": unix}


def job_facts(detail: JobDetail, outbox: Path) -> dict[str, Any]:
    """The job in a few keys: the manifest's head, the webhook's body, the command's variables."""
    return {
        "job": detail.id,
        "watch": detail.watch,
        "name": _clean(detail.name),
        "kind": detail.kind,
        "state": detail.state,
        "cancelled": detail.cancelled,
        "created": _when(detail.created_at),
        "finished": _when(detail.finished_at),
        "files": {"total": detail.total, "done": detail.done, "failed": detail.failed},
        "outbox": _clean(str(outbox)),
        "manifest": _clean(str(detail.manifest)) if detail.manifest else None,
    }


def build_manifest(detail: JobDetail, outbox: Path) -> dict[str, Any]:
    """The manifest of an ended job (layout version :data:`MANIFEST_VERSION`)."""
    options = detail.options
    output = options.get("output")
    return {
        "version": MANIFEST_VERSION,
        **job_facts(detail, outbox),
        "model": options.get("model"),
        "format": output.get("format") if isinstance(output, Mapping) else None,
        "inputs": [file_entry(f, outbox) for f in detail.files],
    }


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (every string was made valid Unicode by :func:`file_entry`)."""
    return (json.dumps(manifest, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def write_manifest(path: Path, data: bytes, job_id: int) -> None:
    """Write ``data`` to ``path`` so that readers see nothing or the whole manifest.

    It is ``files.atomic_write`` with a temp name of its own, derived from the job id
    (``.watchd-<id>.tmp`` of file ``<id>`` could be in the same folder). A temp left by
    a crash is removed the next time the same job's manifest is written (its job is
    still unreported then).
    """
    write_via_temp(path, data, manifest_temp_name(job_id))


# --- the coordinator ------------------------------------------------------------------------------


class HookSink(Protocol):
    """What :class:`Completion` hands a job's hooks to (``watchd.hooks.Hooks``)."""

    def run(
        self,
        facts: Mapping[str, Any],
        hooks: HooksConfig,
        done: Callable[[], None],
        delivery: str | None = None,
    ) -> int:
        """Start every hook ``hooks`` configures without blocking; return how many started
        (a full queue starts none: the caller defers it).

        Each started hook calls ``done()`` once, from any thread, when it has finished
        (succeeded, failed, or been given up). ``delivery``: the id the hook carries.
        """
        ...


#: The hooks of a job, each handed over on its own: (name, the config with only that hook).
def _single_hooks(hooks: HooksConfig) -> list[tuple[str, HooksConfig]]:
    single: list[tuple[str, HooksConfig]] = []
    if hooks.on_complete:
        single.append(("command", replace(hooks, webhook_url=None, webhook_secret=None)))
    if hooks.webhook_url:
        single.append(("webhook", replace(hooks, on_complete=None)))
    return single


@dataclass
class _Open:
    """A job whose hooks are still running: how many have not called back yet."""

    hooks: int
    ended_again: bool = False  # a retried file made it active and it ended again meanwhile
    deferred: bool = False  # a hook found its queue full: the job stays unreported for now


class Completion:
    """Writes manifests and starts hooks for ended jobs; runs in the daemon's main thread.

    Hooks call back from their own threads into a queue; :meth:`collect` (main thread)
    drains it and marks jobs reported, so only the main thread touches the ledger
    (docs/design.md, invariant 5).
    """

    def __init__(
        self,
        ledger: Ledger,
        hooks: HookSink,
        settings: Callable[[str], tuple[Path, HooksConfig] | None],
        wake: Callable[[], None],
    ) -> None:
        """``settings(watch)``: that watch's outbox and hooks in the *current* config
        (None when a reload removed it: the manifest is still written, no hooks run)."""
        self._ledger = ledger
        self._hooks = hooks
        self._settings = settings
        self._wake = wake
        self._open: dict[int, _Open] = {}
        self._done: queue.SimpleQueue[tuple[int, str, str]] = queue.SimpleQueue()
        self.manifests_written = 0
        self.manifest_failures = 0

    def counters(self) -> dict[str, int]:
        """Manifests written and failed since start, for the stats file and metrics."""
        return {"written": self.manifests_written, "failed": self.manifest_failures}

    @property
    def open_jobs(self) -> int:
        """Jobs whose hooks are still running (not yet reported)."""
        return len(self._open)

    def job_finished(self, job_id: int) -> None:
        """Report one ended job: manifest, then hooks (or straight to reported)."""
        if job_id in self._open:
            # Ended again (a failed file was retried) while its hooks still run: report
            # it once more when they are done, with the new manifest.
            self._open[job_id].ended_again = True
            return
        try:
            # The job's head and counts only: its files (20,000 rows take 0.7 s) are read
            # when a manifest lists them, never for the hooks, whose facts are the counts.
            detail = self._ledger.job_detail(job_id, file_limit=0)
            if detail.manifest is not None and detail.state != "active":
                detail = self._ledger.job_detail(job_id)
        except NotFound:
            return  # pruned meanwhile
        if detail.state == "active":
            return  # a failed file was retried meanwhile: it will end again
        settings = self._settings(detail.watch)
        outbox = settings[0] if settings else _outbox_of(detail)
        if detail.manifest is not None and not self._write(detail, outbox):
            return  # stays unreported; the periodic pass tries again
        facts = job_facts(detail, outbox)
        started = deferred = 0
        for hook, single in _single_hooks(settings[1]) if settings else []:
            delivery, finished = self._ledger.hook_delivery(job_id, hook, uuid.uuid4().hex)
            if finished:
                continue  # it ran before a crash: at least once per hook, not per report
            if self._hooks.run(facts, single, self._callback(job_id, hook, delivery), delivery):
                started += 1
            else:
                deferred += 1  # its queue is full: recorded, handed over again later
        if started:
            self._open[job_id] = _Open(started, deferred=bool(deferred))
        elif not deferred:
            self._ledger.mark_reported(job_id)

    def _write(self, detail: JobDetail, outbox: Path) -> bool:
        assert detail.manifest is not None
        try:
            data = encode_manifest(build_manifest(detail, outbox))
            write_manifest(detail.manifest, data, detail.id)
        except OSError as exc:
            self.manifest_failures += 1
            log.error(
                "job.manifest_failed",
                job=detail.id,
                path=str(detail.manifest),
                error=exc.strerror or str(exc),
            )
            return False
        self.manifests_written += 1
        log.info(
            "job.manifest",
            job=detail.id,
            watch=detail.watch,
            path=str(detail.manifest),
            files=detail.total,
            bytes=len(data),
        )
        return True

    def _callback(self, job_id: int, hook: str, delivery: str) -> Callable[[], None]:
        def done() -> None:
            # from a hook's thread: only queue it and wake the loop (invariant 5)
            self._done.put((job_id, hook, delivery))
            self._wake()

        return done

    def collect(self) -> int:
        """Mark reported every job whose last hook has finished; returns how many."""
        reported = 0
        for job_id, hook, delivery in _drain(self._done):
            self._ledger.finish_hook(job_id, hook, delivery)  # a crash now: it is not rerun
            job = self._open.get(job_id)
            if job is None:
                continue
            job.hooks -= 1
            if job.hooks <= 0:
                del self._open[job_id]
                if job.ended_again:
                    self.job_finished(job_id)
                    continue
                if job.deferred:
                    continue  # report_unreported hands the deferred hook over again
                self._ledger.mark_reported(job_id)
                reported += 1
        return reported

    def report_unreported(self) -> int:
        """Report ended jobs a crash (or a failed manifest write) left unreported."""
        handled = 0
        for job_id in self._ledger.unreported_jobs(UNREPORTED_BATCH + len(self._open)):
            if job_id not in self._open:  # (those are being reported now)
                self.job_finished(job_id)
                handled += 1
        return handled


def _outbox_of(detail: JobDetail) -> Path:
    """The outbox of a job whose watch is no longer configured: its manifest's folder."""
    return detail.manifest.parent if detail.manifest else Path("/")


def _drain(source: queue.SimpleQueue[tuple[int, str, str]]) -> Iterator[tuple[int, str, str]]:
    while True:
        try:
            yield source.get_nowait()
        except queue.Empty:
            return
