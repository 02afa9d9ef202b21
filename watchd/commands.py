"""What each control command does. Runs in the daemon's main thread, the ledger's only owner.

:mod:`watchd.control` has already checked the request's shape and types; here
the request meets the daemon's state. Errors a client can act on are raised as
:class:`~watchd.errors.ProtocolError` (``not_found``, ``conflict``,
``bad_request``); they never stop the daemon.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from watchd.access import Caller, check_access
from watchd.config import JobOverrides, WatchConfig
from watchd.control import Request
from watchd.errors import AccessDenied, ConfigError, Conflict, NotFound, ProtocolError
from watchd.files import error_note_path, remove_file
from watchd.intake import Intake
from watchd.ledger import FileRecord, Ledger
from watchd.watcher import Batch, Candidate, is_ignored, is_sidecar_name

if TYPE_CHECKING:
    from watchd.dispatcher import Pause
    from watchd.finisher import Finisher

log = structlog.get_logger()

DAY = 86400.0

#: What names ``submit``'s ``options`` in refusals and in the job's options (where a
#: sidecar's file name would be).
SUBMIT_OPTIONS = "submit options"


class DaemonControls(Protocol):
    """The parts of the daemon a command may read or steer."""

    ledger: Ledger
    intake: Intake
    finisher: Finisher
    pause: Pause

    def snapshot(self) -> dict[str, Any]: ...

    def request_reload(self) -> dict[str, Any]: ...

    def watches(self) -> tuple[WatchConfig, ...]: ...

    def readiness(self) -> dict[str, bool]: ...

    def metrics_text(self) -> str: ...

    def sweep_cache(self) -> None:
        """Remove the content cache's copies whose rows went (after a prune)."""
        ...


class Commands:
    """Executes validated control requests against the ledger and the daemon."""

    def __init__(self, daemon: DaemonControls, *, clock: Callable[[], float] = time.time) -> None:
        """``daemon``: the commands act on its parts (ledger, intake, finisher, pause), read
        from it here rather than handed in beside it."""
        self._daemon = daemon
        self._ledger = daemon.ledger
        self._intake = daemon.intake
        self._finisher = daemon.finisher
        self._pause = daemon.pause
        self._clock = clock

    def execute(self, request: Request) -> dict[str, Any]:
        handler = getattr(self, f"_cmd_{request.command}", None)
        if handler is None:  # control.py only lets known commands through
            raise ProtocolError("unknown_command", f"unknown command {request.command!r}")
        try:
            if request.command == "submit":  # the one command that needs to know who asks
                result: dict[str, Any] = self._cmd_submit(request.args, caller_of(request))
            else:
                result = handler(request.args)
        except NotFound as exc:
            raise ProtocolError("not_found", str(exc)) from None
        except Conflict as exc:
            raise ProtocolError("conflict", str(exc)) from None
        return result

    # --- read-only ---

    def _cmd_ping(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        from watchd import __version__

        return {"pong": True, "pid": os.getpid(), "version": __version__}

    def _cmd_status(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        return self._daemon.snapshot()

    def _cmd_jobs(self, args: Mapping[str, Any]) -> dict[str, Any]:
        limit = int(args.get("limit", 50))
        jobs = self._ledger.list_jobs(
            state=args.get("state"),
            watch=args.get("watch"),
            limit=limit,
            before_id=args.get("before"),
        )
        return {
            "jobs": [_job_dict(asdict(job)) for job in jobs],
            "next_before": jobs[-1].id if len(jobs) == limit else None,
        }

    def _cmd_job(self, args: Mapping[str, Any]) -> dict[str, Any]:
        detail = asdict(self._ledger.job_detail(int(args["id"])))
        now = self._clock()
        job = _job_dict(detail)
        files = detail.get("files", [])
        job["files"] = [_file_dict(f) for f in files]
        job["progress"] = _progress(job, files, now)
        return job

    # --- for the HTTP door only (not in control.COMMANDS, so the socket refuses them) ---

    def _cmd_http_ready(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._daemon.readiness())

    def _cmd_http_metrics(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": self._daemon.metrics_text()}

    def _cmd_http_file(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Where one file of one job is: the page's thumbnails read only these paths."""
        record = self._ledger.file(int(args["file_id"]))
        if record.job_id != int(args["id"]):
            raise NotFound(f"job {args['id']} has no file {args['file_id']}")
        places = ("source", "output", "archive", "failed")
        out = {key: os.fsdecode(getattr(record, key)) for key in places}
        return {
            "job_id": record.job_id,
            "watch": record.watch,
            "state": record.state,
            "rel": record.rel,
            **out,
        }

    # --- steering ---

    def _cmd_pause(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        self._pause.set(True)
        return {"paused": True}

    def _cmd_resume(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        self._pause.set(False)
        return {"paused": False}

    def _cmd_reload(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        return self._daemon.request_reload()

    def _cmd_cancel(self, args: Mapping[str, Any]) -> dict[str, Any]:
        records = self._ledger.cancel_job(int(args["id"]))
        for record in records:
            self._finisher.dispose_failed(record, "cancelled")
        return {"id": int(args["id"]), "cancelled_files": len(records)}

    def _cmd_retry(self, args: Mapping[str, Any]) -> dict[str, Any]:
        job_id = int(args["id"])
        records = self._ledger.retry_job(job_id)
        requeued = 0
        missing = 0
        for record in records:
            if not os.path.lexists(record.failed):
                missing += 1  # nothing to retry: the original never reached failed/
                continue
            output, archive, failed = self._intake.reassign(record)
            # The original now waits in failed/: that is the source the spool move starts from.
            self._ledger.requeue_failed(record.id, record.failed, output, archive, failed)
            remove_file(error_note_path(record.failed))
            requeued += 1
        self._intake.finish_pending(self._ledger.job_files(job_id))
        return {"id": job_id, "requeued_files": requeued, "missing_originals": missing}

    def _held(self, args: Mapping[str, Any]) -> tuple[int, list[FileRecord]]:
        """The files of job ``id`` (or just ``file``) that wait in the review folder."""
        job_id = int(args["id"])
        records = self._ledger.in_review(job_id)
        if args.get("file") is not None:
            records = [r for r in records if r.id == int(args["file"])]
            if not records:
                raise Conflict(f"file {args['file']} of job {job_id} is not waiting in review")
        if not records:
            raise Conflict(f"job {job_id} has no file waiting in review")
        return job_id, records

    def _cmd_approve(self, args: Mapping[str, Any]) -> dict[str, Any]:
        job_id, records = self._held(args)
        for record in records:
            self._finisher.approve(record)
        return {"id": job_id, "approved_files": len(records)}

    def _cmd_reject(self, args: Mapping[str, Any]) -> dict[str, Any]:
        job_id, records = self._held(args)
        reason = args.get("reason") or "an operator rejected it"
        for record in records:
            self._finisher.reject(record, reason)
        return {"id": job_id, "rejected_files": len(records)}

    def _cmd_prune(self, args: Mapping[str, Any]) -> dict[str, Any]:
        cutoff = self._clock() - float(args["older_than_days"]) * DAY
        deleted = self._ledger.prune(cutoff)
        if deleted:  # their content-cache rows went with their files: now their copies
            self._daemon.sweep_cache()
        return {"jobs_deleted": deleted}

    def _cmd_submit(self, args: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
        """Take files the caller could read themselves (watchd/access.py), as one job."""
        watch = self._pick_watch(args.get("watch"))
        move = bool(args.get("move", False))
        paths = [Path(p) for p in args["paths"]]
        for path in paths:  # before listing anything: a folder they cannot list stays unlisted
            try:
                check_access(path, caller)
            except AccessDenied as exc:
                raise ProtocolError("bad_request", str(exc)) from None
            except OSError as exc:
                raise ProtocolError("bad_request", f"{path}: {exc.strerror}") from None
        batch = submitted_batch(watch.name, paths, args.get("name"))
        given = self._given_options(args.get("options"), batch, watch)
        expected = caller_may_take(batch, paths, caller, move=move)
        job_id = self._intake.accept(
            batch,
            watch,
            intake="move" if move else "copy",
            priority=args.get("priority"),
            expected=expected,
            given=given,
        )
        if job_id is None:
            raise ProtocolError("conflict", "nothing new to submit: every file was taken before")
        return {
            "id": job_id,
            "watch": watch.name,
            "files": len(batch.files),
            "priority": self._ledger.job(job_id).priority,
        }

    def _given_options(
        self, values: Mapping[str, Any] | None, batch: Batch, watch: WatchConfig
    ) -> tuple[JobOverrides, str] | None:
        """``submit``'s ``options``, checked with a sidecar's rules before anything is taken
        (``bad_request`` naming the option); a folder with its own sidecar takes neither."""
        if not values:
            return None
        if batch.sidecars:
            raise ProtocolError(
                "bad_request",
                f"{batch.sidecars[0].path}: the folder has its own options file; give the "
                "options there or with submit, not both",
            )
        try:
            return self._intake.given_overrides(values, watch, SUBMIT_OPTIONS), SUBMIT_OPTIONS
        except ConfigError as exc:
            raise ProtocolError("bad_request", str(exc)) from None

    def _pick_watch(self, name: str | None) -> WatchConfig:
        watches = self._daemon.watches()
        if name is None:
            return watches[0]
        for watch in watches:
            if watch.name == name:
                return watch
        known = ", ".join(w.name for w in watches)
        raise ProtocolError("not_found", f"no watch named {name!r} (configured: {known})")


def submitted_batch(watch: str, paths: list[Path], name: str | None) -> Batch:
    """Turn paths on the daemon's host into one batch; refuse anything but plain files/folders.

    One folder alone keeps folder-job semantics (outputs under ``outbox/<folder>/``),
    including its sidecar (``watchd.toml`` at its top, see docs/routing.md); otherwise
    files land at the top of the outbox and folders keep their name as a prefix, and a
    ``watchd.toml`` among them is an input that intake fails with the reason.
    """
    candidates: list[Candidate] = []
    for path in paths:
        if not path.is_absolute():
            raise ProtocolError("bad_request", f"{path}: paths must be absolute")
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise ProtocolError("bad_request", f"{path}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            raise ProtocolError("bad_request", f"{path}: is a symbolic link; give the real path")
        if stat.S_ISREG(info.st_mode):
            candidates.append(Candidate(path, path.name, info.st_size, info.st_mtime_ns))
        elif stat.S_ISDIR(info.st_mode):
            prefix = "" if len(paths) == 1 else path.name + "/"
            candidates.extend(_folder_candidates(path, prefix))
        else:
            raise ProtocolError("bad_request", f"{path}: not a regular file or folder")
    folder = len(paths) == 1 and paths[0].is_dir()
    sidecars = tuple(c for c in candidates if folder and _is_top_sidecar(c))
    candidates = [c for c in candidates if c not in sidecars]
    if not candidates:
        raise ProtocolError("bad_request", "no files to submit (folders were empty)")
    rels = [c.rel for c in candidates]
    if len(set(rels)) != len(rels):
        raise ProtocolError("bad_request", "two submitted files have the same name")
    job_name = name or (paths[0].name if folder else _loose_name(candidates))
    return Batch(
        watch=watch,
        kind="folder" if folder else "loose",
        root=paths[0] if folder else paths[0].parent,
        name=job_name,
        files=tuple(sorted(candidates, key=lambda c: c.rel)),
        sidecars=sidecars,
    )


def caller_of(request: Request) -> Caller:
    """Who sent ``request``, as the kernel says; ``bad_request`` where it cannot say."""
    if request.peer_uid is None:
        raise ProtocolError("bad_request", "submit needs to know who asks, and cannot tell")
    return Caller(request.peer_uid, request.peer_gids)


def caller_may_take(
    batch: Batch, paths: list[Path], caller: Caller, *, move: bool
) -> dict[Path, tuple[int, int]]:
    """The (device, inode) of every file of ``batch``, once ``caller`` is found allowed to
    read it (and, with ``move``, to move it away); ``bad_request`` naming the first that
    is not. Files found by listing a submitted folder need that folder readable too."""
    folders = [p for p in paths if p.is_dir()]
    expected: dict[Path, tuple[int, int]] = {}
    for candidate in (*batch.files, *batch.sidecars):
        below = next((f for f in folders if f in candidate.path.parents), None)
        try:
            expected[candidate.path] = check_access(
                candidate.path, caller, listed_below=below, remove=move
            )
        except AccessDenied as exc:
            raise ProtocolError("bad_request", str(exc)) from None
        except OSError as exc:
            raise ProtocolError("bad_request", f"{candidate.path}: {exc.strerror}") from None
    return expected


def _is_top_sidecar(candidate: Candidate) -> bool:
    return "/" not in candidate.rel and is_sidecar_name(candidate.rel)


def _folder_candidates(root: Path, prefix: str) -> list[Candidate]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        for filename in filenames:
            if is_ignored(filename):
                continue
            path = Path(dirpath) / filename
            info = os.lstat(path)
            # a sidecar is listed whatever it is: intake refuses a link with a reason
            sidecar = dirpath == str(root) and is_sidecar_name(filename)
            if (stat.S_ISREG(info.st_mode) and info.st_nlink == 1) or sidecar:
                rel = prefix + path.relative_to(root).as_posix()
                found.append(Candidate(path, rel, info.st_size, info.st_mtime_ns))
    return found


def _loose_name(candidates: list[Candidate]) -> str:
    first = min(c.rel for c in candidates)
    return first if len(candidates) == 1 else f"{first} +{len(candidates) - 1} more"


def _job_dict(job: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "watch",
        "name",
        "kind",
        "priority",
        "state",
        "total",
        "done",
        "failed",
        "queued",
        "running",
    )
    out = {k: job[k] for k in keys if k in job}
    out["created_at"] = job.get("created_at")
    out["finished_at"] = job.get("finished_at")
    return out


def _file_dict(file: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in file.items():
        out[key] = os.fsdecode(value) if isinstance(value, Path | bytes) else value
        if isinstance(out[key], str):
            out[key] = out[key].encode("utf-8", "replace").decode("utf-8")  # valid JSON always
    return out


def _progress(job: Mapping[str, Any], files: list[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """processed/failed/total, elapsed seconds, the job's own rate and an ETA from it."""
    total = int(job.get("total", 0))
    done = int(job.get("done", 0))
    failed = int(job.get("failed", 0))
    processed = done + failed
    started = [f["started_at"] for f in files if f.get("started_at")]
    first_start = min(started) if started else None
    end = job.get("finished_at") or now
    elapsed = (end - first_start) if first_start else 0.0
    rate = processed / elapsed if elapsed > 0 and processed else None
    remaining = total - processed
    eta = remaining / rate if rate and remaining > 0 and not job.get("finished_at") else None
    return {
        "processed": processed,
        "done": done,
        "failed": failed,
        "total": total,
        "elapsed_seconds": round(elapsed, 3),
        "files_per_second": round(rate, 4) if rate else None,
        "eta_seconds": round(eta, 1) if eta is not None else (0.0 if remaining == 0 else None),
    }
