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
import contextlib
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
from watchd.errors import NotFound
from watchd.files import ensure_dir, fsync_dir, page_paths
from watchd.ledger import FileDetail, JobDetail, Ledger
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
        if file.reused_from is not None:  # the content cache's outputs of that earlier file
            entry["reused_from"] = file.reused_from
    else:
        entry["error"] = _clean(file.error) or file.state
    if file.quality is not None:  # the figures of each output (docs/outputs.md)
        entry["quality"] = [dict(page) for page in file.quality]
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
    return {
        "version": MANIFEST_VERSION,
        **job_facts(detail, outbox),
        "model": detail.options.model,
        "format": detail.options.output.format,
        "inputs": [file_entry(f, outbox) for f in detail.files],
    }


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (every string was made valid Unicode by :func:`file_entry`)."""
    return (json.dumps(manifest, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


#: Manifest entries written per pass of the daemon's loop: a page costs little enough that
#: ``status`` is still answered at once meanwhile (docs/performance.md, "Big jobs off the
#: main loop").
MANIFEST_PAGE = 100


class _ManifestWriter:
    """One manifest written a page at a time into its hidden temp file, then renamed.

    The bytes are exactly :func:`encode_manifest` of :func:`build_manifest`: the head
    (every key but the inputs), the inputs page by page in file-id order, the tail. The
    file appears under its name only when complete (fsync, rename, fsync folder), after
    every output and original is in place (docs/design.md, invariant 3); a crash leaves
    only the temp, replaced when the job is reported again. Only the main thread, which
    owns the ledger, reads the pages (invariant 5).
    """

    def __init__(self, detail: JobDetail, outbox: Path, last_id: int) -> None:
        assert detail.manifest is not None
        self.path = detail.manifest
        self.job_id = detail.id
        self.outbox = outbox
        self.last_id = last_id
        self.after_id = 0
        self.entries = 0
        self.size = 0
        ensure_dir(self.path.parent)
        self.temp = self.path.parent / manifest_temp_name(detail.id)
        with contextlib.suppress(FileNotFoundError):  # a crash's leftover, never written through
            os.unlink(self.temp)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd: int | None = os.open(self.temp, flags, 0o666)
        head = encode_manifest(build_manifest(replace(detail, files=()), outbox))
        assert head.endswith(b"[]}\n")
        self._write(head[:-3])  # up to and including the inputs' "["

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def page(self, ledger: Ledger, limit: int) -> tuple[int, bool]:
        """Write up to ``limit`` more inputs; returns (how many, whether it is complete)."""
        rows = ledger.job_files_page(self.job_id, self.after_id, limit, self.last_id)
        if rows:
            entries = ",".join(
                json.dumps(file_entry(f, self.outbox), ensure_ascii=False, separators=(",", ":"))
                for f in rows
            )
            self._write((b"," if self.entries else b"") + entries.encode())
            self.entries += len(rows)
            self.after_id = rows[-1].id
        if len(rows) == limit and self.after_id < self.last_id:
            return len(rows), False
        self._write(b"]}\n")
        assert self.fd is not None
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.replace(self.temp, self.path)
        fsync_dir(self.path.parent)
        return len(rows), True

    def abort(self) -> None:
        """Stop (an error, or the job ended again): close and remove the temp file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


@dataclass
class _Writing:
    """An ended job whose manifest is being written; its hooks wait for it."""

    writer: _ManifestWriter
    detail: JobDetail
    outbox: Path
    settings: tuple[Path, HooksConfig] | None


# --- the coordinator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookCall:
    """What :class:`Completion` hands a :class:`HookSink` for an ended job's hook."""

    facts: Mapping[str, Any]  # the job's facts (job_facts): the payload, the environment
    hooks: HooksConfig  # the hooks to start: Completion hands over one at a time
    #: called once per started hook, from any thread, when it has finished (succeeded,
    #: failed, or been given up)
    done: Callable[[], None]
    #: the id the hook carries, the same for every attempt and after a restart
    #: (``X-Watchd-Delivery``, ``WATCHD_DELIVERY_ID``); None: a new one
    delivery: str | None = None


class HookSink(Protocol):
    """What :class:`Completion` hands a job's hooks to (``watchd.hooks.Hooks``)."""

    def run(self, call: HookCall) -> int:
        """Start every hook ``call.hooks`` configures without blocking; return how many
        started (a full queue starts none: the caller defers it)."""
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


class HookSettings(Protocol):
    """Where :class:`Completion` reads a watch's hooks (``watchd.daemon.LiveConfig``)."""

    def hooks_of(self, watch: str) -> tuple[Path, HooksConfig] | None:
        """That watch's outbox and hooks in the *current* config (None when a reload
        removed it: the manifest is still written, no hooks run)."""
        ...


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
        settings: HookSettings,
        wake: Callable[[], None],
    ) -> None:
        """``settings``: each watch's outbox and hooks as configured now."""
        self._ledger = ledger
        self._hooks = hooks
        self._settings = settings
        self._wake = wake
        self._open: dict[int, _Open] = {}
        self._writing: dict[int, _Writing] = {}
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
        writing = self._writing.pop(job_id, None)
        if writing is not None:  # ended again while its manifest was being written
            writing.writer.abort()
        try:
            # The job's head and counts only: its files are read a page at a time while
            # its manifest is written (step), never for the hooks, whose facts are counts.
            detail = self._ledger.job_detail(job_id, file_limit=0)
        except NotFound:
            return  # pruned meanwhile
        if detail.state == "active":
            return  # a failed file was retried meanwhile: it will end again
        settings = self._settings.hooks_of(detail.watch)
        outbox = settings[0] if settings else _outbox_of(detail)
        if detail.manifest is None:
            self._hand_over(detail, outbox, settings)
            return
        try:
            writer = _ManifestWriter(detail, outbox, self._ledger.job_last_file_id(job_id))
        except OSError as exc:
            self._manifest_failed(detail, exc)
            return  # stays unreported; the periodic pass tries again
        self._writing[job_id] = _Writing(writer, detail, outbox, settings)
        self._advance(job_id, MANIFEST_PAGE)  # a small job's manifest is done right here

    @property
    def busy(self) -> bool:
        """A manifest is being written: the daemon's loop should come back at once."""
        return bool(self._writing)

    def step(self, budget: int = MANIFEST_PAGE) -> bool:
        """Write up to ``budget`` more manifest entries (one page per pass of the daemon's
        loop, so a 100,000-file job's manifest never holds up ``status`` or intake);
        returns whether more remain. A finished manifest's hooks are handed over."""
        for job_id in list(self._writing):
            if budget <= 0:
                break
            budget -= self._advance(job_id, budget)
        return self.busy

    def _advance(self, job_id: int, budget: int) -> int:
        """Pages of one job's manifest, up to ``budget`` entries; returns entries written."""
        writing = self._writing[job_id]
        written = 0
        try:
            while written < budget:
                limit = min(MANIFEST_PAGE, budget - written)
                count, complete = writing.writer.page(self._ledger, limit)
                written += count
                if complete:
                    break
            else:
                return written
        except OSError as exc:
            del self._writing[job_id]
            writing.writer.abort()
            self._manifest_failed(writing.detail, exc)
            return written
        del self._writing[job_id]
        self._manifest_written(writing.detail, writing.writer)
        self._hand_over(writing.detail, writing.outbox, writing.settings)
        return written

    def _hand_over(
        self, detail: JobDetail, outbox: Path, settings: tuple[Path, HooksConfig] | None
    ) -> None:
        """The hooks of an ended job whose manifest (if any) is in place."""
        job_id = detail.id
        facts = job_facts(detail, outbox)
        started = deferred = 0
        for hook, single in _single_hooks(settings[1]) if settings else []:
            delivery, finished = self._ledger.hook_delivery(job_id, hook, uuid.uuid4().hex)
            if finished:
                continue  # it ran before a crash: at least once per hook, not per report
            call = HookCall(facts, single, self._callback(job_id, hook, delivery), delivery)
            if self._hooks.run(call):
                started += 1
            else:
                deferred += 1  # its queue is full: recorded, handed over again later
        if started:
            self._open[job_id] = _Open(started, deferred=bool(deferred))
        elif not deferred:
            self._ledger.mark_reported(job_id)

    def _manifest_failed(self, detail: JobDetail, exc: OSError) -> None:
        self.manifest_failures += 1
        log.error(
            "job.manifest_failed",
            job=detail.id,
            path=str(detail.manifest),
            error=exc.strerror or str(exc),
        )

    def _manifest_written(self, detail: JobDetail, writer: _ManifestWriter) -> None:
        self.manifests_written += 1
        log.info(
            "job.manifest",
            job=detail.id,
            watch=detail.watch,
            path=str(detail.manifest),
            files=writer.entries,
            bytes=writer.size,
        )

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
        busy = len(self._open) + len(self._writing)
        for job_id in self._ledger.unreported_jobs(UNREPORTED_BATCH + busy):
            if job_id not in self._open and job_id not in self._writing:  # (being reported)
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
