"""Turning a settled batch from the inbox into a recorded job with its inputs in the spool.

The order is what keeps invariants 1 and 2 across a crash: output, archive and
failed paths are assigned and the job is recorded in one transaction *before*
anything moves; then each input is renamed into the spool, and only then marked
queued. Recovery finishes whatever a crash interrupted (see
:meth:`Intake.finish_pending`).

A folder job may carry a *sidecar*, ``watchd.toml`` at the top of its folder, that
overrides its watch's output options, model and priority for that job only
(docs/routing.md). It is read here, once, safely (no links, at most
:data:`SIDECAR_MAX_BYTES`), and its effect is frozen in the job's options. An invalid
sidecar fails the whole job: every input is recorded with the reason and goes to the
failed folder with a readable note, as any failed input does; the daemon carries on.
Its model must be one the pool can load (``check_model``), so a sidecar naming a model
that cannot exist or is not installed fails here, not three attempts later.

Taking one batch may cost that batch, never the daemon (:meth:`Intake.take`): an
unexpected error before the job is recorded puts the batch's entries in the failed
folder with a note (:meth:`Intake.quarantine`); an I/O error leaves them in the inbox
for the next scan; only a ledger that can no longer be trusted stops the daemon.
Entries the watcher never takes (links, pipes, sockets, devices, hard links) are moved
aside the same way, unread, with a note saying why (:meth:`Intake.set_aside`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import stat
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import structlog

from watchd.config import JobOverrides, WatchConfig, job_overrides, sidecar_overrides
from watchd.errors import ConfigError, InputRejected, LedgerError, UnsafePath, WatchdError
from watchd.files import (
    OS_LITTER,
    copy_file,
    error_note_path,
    first_page_names,
    fsync_dir,
    move_entry,
    move_file,
    page_base,
    prune_taken_folder,
    read_input,
    remove_file,
    unique_named,
    unique_path,
    with_suffix,
    write_error_note,
)
from watchd.late_masks import earlier_original, late_mask_job, rel_stem
from watchd.ledger import FileRecord, Ledger, NewFile, NewJob, name_key
from watchd.masks import LONE_MASK, MASK_IN_PLACE, mask_stem, pair_masks
from watchd.options import IntakeMode, JobOptions, job_options
from watchd.spool import spool_mask_path, spool_path
from watchd.watcher import Batch, Candidate, is_ignored, is_sidecar_name

if TYPE_CHECKING:
    from watchd.finisher import Finisher

log = structlog.get_logger()


def is_litter(name: str) -> bool:
    """Files operating systems leave in folders; they never keep a taken folder alive."""
    return is_ignored(name, OS_LITTER)


#: Inputs that may hold several pages (one output per page): scanners' TIFFs.
MULTI_PAGE_SUFFIXES = frozenset({".tif", ".tiff"})


def _may_have_pages(rel: str) -> bool:
    return Path(rel).suffix.lower() in MULTI_PAGE_SUFFIXES


#: A job's manifest is named after its output folder (or first output) with this suffix.
MANIFEST_SUFFIX = ".manifest.json"

#: A sidecar larger than this is refused: a real one is a few lines, and it is read whole
#: into memory (like every input, through ``O_NOFOLLOW``).
SIDECAR_MAX_BYTES = 64 * 1024

#: Why a ``watchd.toml`` that is not a folder job's sidecar is failed instead of being
#: ignored: the person who dropped it expects options to apply, and the failed folder's
#: note is the one place they will read that they did not.
NESTED_SIDECAR = (
    "only the watchd.toml at the top of a job's folder sets options; this one, in a "
    "subfolder, was not used (move it to the top of the folder, or remove it)"
)
LOOSE_SIDECAR = (
    "a watchd.toml dropped on its own sets no options: put it at the top of a folder "
    "together with the images, and drop that folder"
)

#: What the person who dropped an entry the watcher never takes reads in its note.
SET_ASIDE_REASONS = {
    "symlink": (
        "not processed: this is a symbolic link, and watchd never follows links; "
        "drop the file itself, not a link to it"
    ),
    "fifo": "not processed: this is a named pipe (FIFO), not a file; watchd never reads pipes",
    "socket": "not processed: this is a socket, not a file",
    "device": "not processed: this is a device, not a file; watchd never opens devices",
    "hard link": (
        "not processed: this is a hard link to a file that has other names too, and "
        "watchd does not read those; drop a copy of the file instead"
    ),
}
_MOVED_ASIDE = "It was moved here as it was, without being opened or followed.\n"
_LEFT_IN_INBOX = "It could not be moved out of the inbox and was left there.\n"


def _folded_names(listings: dict[Path, set[bytes]], folder: Path) -> set[bytes]:
    """The folded names (``name_key``) in ``folder``, listed once per naming pass."""
    listing = listings.get(folder)
    if listing is None:
        try:
            listing = {name_key(os.fsencode(n)) for n in os.listdir(folder)}
        except OSError:  # not there yet (created when the first output is written)
            listing = set()
        listings[folder] = listing
    return listing


class Intake:
    """Records batches as jobs and moves their inputs out of the inbox."""

    def __init__(
        self,
        ledger: Ledger,
        spool_dir: Path,
        finisher: Finisher,
        check_model: Callable[[str], None] | None = None,
    ):
        """``finisher`` fails what cannot be taken (an invalid sidecar, a vanished input)."""
        self._ledger = ledger
        self._spool = spool_dir
        self._finisher = finisher
        #: Raises (ModelError, with a fix) if the pool cannot load a model a sidecar names.
        self._check_model = check_model
        self._recorded: int | None = None  # the job the batch being taken became, once recorded
        self._expected: Mapping[Path, tuple[int, int]] = {}

    def given_overrides(
        self, values: Mapping[str, Any], watch: WatchConfig, label: str
    ) -> JobOverrides:
        """The options a request gives (``watchd submit --crop ...``), checked exactly as a
        sidecar's keys (:func:`watchd.config.job_overrides`) and its model as a sidecar's,
        for :meth:`accept`'s ``given``: the job is then recorded as a folder job with that
        sidecar would be. Raises :class:`ConfigError` naming ``label`` and the key."""
        overrides = job_overrides(Path(label), values, watch)
        return _model_checked(overrides, watch, label, self._check_model)

    def take(self, batch: Batch, watch: WatchConfig) -> int | None:
        """:meth:`accept` a batch from an inbox; whatever goes wrong costs that batch only.

        * the ledger cannot be trusted any more (a corrupt database): raised, the daemon
          stops with the reason (its memory is gone; going on could duplicate work);
        * an I/O error (or a busy ledger) before the job is recorded: logged, the entries
          stay in the inbox and the next scan offers them again;
        * anything else before the job is recorded (a bug, a parser's RecursionError, a
          MemoryError): logged with its traceback, and the batch's entries go to the
          failed folder with a note (:meth:`quarantine`), so it cannot fail again and again;
        * anything after the job is recorded: logged; the ledger owns the files now, and
          the periodic finishing pass completes their intake.
        """
        self._recorded = None
        try:
            return self.accept(batch, watch)
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError):
                raise  # damaged: the daemon stops with the reason
            return self._after_error(batch, watch, exc, transient=True)  # busy, I/O, full
        except LedgerError:
            raise
        except Exception as exc:
            return self._after_error(batch, watch, exc, transient=isinstance(exc, OSError))

    def _after_error(
        self, batch: Batch, watch: WatchConfig, exc: Exception, *, transient: bool
    ) -> int | None:
        """:meth:`take`'s answer to an error (called inside its ``except``)."""
        job = self._recorded
        if job is not None:
            log.exception("intake.batch_interrupted", job=job, watch=watch.name)
            return job
        if transient:
            log.error("intake.batch_deferred", watch=watch.name, name=batch.name, error=str(exc))
            return None
        log.exception("intake.batch_failed", watch=watch.name, name=batch.name)
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        what = "folder" if batch.kind == "folder" else "file"
        try:
            self.quarantine(
                batch,
                watch,
                f"watchd could not take this {what} ({detail}); the daemon's log has the "
                "details (intake.batch_failed)",
            )
        except Exception:  # what could not be moved stays in the inbox: nothing is lost
            log.exception("intake.quarantine_failed", watch=watch.name, name=batch.name)
        return None

    def quarantine(self, batch: Batch, watch: WatchConfig, reason: str) -> None:
        """Move every entry of a batch that could not be recorded to the failed folder,
        each with a note, never reading or following one (the move is a rename, or a copy
        that refuses links, across file systems). What cannot be moved stays, logged."""
        taken, claim, _output_taken = self._name_checker()
        base = watch.failed
        if batch.kind == "folder":
            base = claim(unique_path(watch.failed / batch.name, taken, folder=True))
        for candidate in (*batch.files, *batch.sidecars):
            if not os.path.lexists(candidate.path):
                continue
            target = claim(unique_path(base / candidate.rel, taken))
            try:
                move_file(candidate.path, target, 0, plain_only=True)
                write_error_note(target, reason, candidate.rel, 0)
            except (OSError, InputRejected) as exc:
                log.error("intake.quarantine_failed", path=str(candidate.path), error=str(exc))
                continue
            log.warning("intake.quarantined", path=str(candidate.path), target=str(target))
        if batch.kind == "folder":
            with contextlib.suppress(OSError):  # a folder that stays is only untidy
                prune_taken_folder(batch.root, is_litter)

    def set_aside(self, path: Path, kind: str, watch: WatchConfig) -> bool:
        """Move an entry the watcher never takes (``kind``: symlink, fifo, socket, device,
        hard link) from the inbox to the failed folder, with a note saying why.

        The entry itself is moved, by a rename: a pipe is never opened, a link never
        followed, a hard link's file never read. An entry that cannot be moved (the failed
        folder is on another file system, where a rename cannot go) stays, and the note
        beside where it would have gone says so. A top-level
        folder left empty by the move is removed, as a taken folder is. Returns True when
        the entry is out of the inbox.
        """
        try:
            rel = path.relative_to(watch.inbox)
        except ValueError:
            return False
        taken, claim, _output_taken = self._name_checker()
        target = claim(unique_path(watch.failed / rel, taken))
        reason = SET_ASIDE_REASONS.get(kind, f"not processed: {kind}")
        moved = True
        try:
            move_entry(path, target)  # a rename: nothing is opened, read or followed
        except FileNotFoundError:
            return True  # removed by whoever dropped it: nothing to say
        except OSError as exc:
            moved = False
            log.warning("intake.set_aside_failed", path=str(path), error=str(exc))
        try:
            where = _MOVED_ASIDE if moved else _LEFT_IN_INBOX
            write_error_note(target, reason, str(rel), 0, where=where)
        except OSError as exc:
            log.error("intake.set_aside_failed", path=str(path), error=str(exc))
        log.warning("intake.set_aside", path=str(path), kind=kind, target=str(target), moved=moved)
        if moved and len(rel.parts) > 1:
            with contextlib.suppress(OSError):  # a folder that stays is only untidy
                prune_taken_folder(watch.inbox / rel.parts[0], is_litter)
        return moved

    def accept(
        self,
        batch: Batch,
        watch: WatchConfig,
        intake: IntakeMode = "inbox",
        priority: int | None = None,
        expected: Mapping[Path, tuple[int, int]] | None = None,
        *,
        given: tuple[JobOverrides, str] | None = None,
    ) -> int | None:
        """Record ``batch`` as a job of ``watch``; returns the job id (None if nothing was new).

        The job's priority is ``priority`` when given (``submit --priority``), else its
        sidecar's, else its watch's: the most specific word wins. ``expected``: the
        (device, inode) of each submitted path that ``submit`` checked the caller may
        read; a file swapped in since is refused (see :func:`watchd.files.copy_file`).
        ``given``: options ``submit`` was given (:func:`given_overrides`) and what names
        them, used as a sidecar's would be (the batch then has none).
        """
        self._expected = expected or {}
        try:
            return self._accept(batch, watch, intake, priority, given)
        finally:
            self._expected = {}

    def _accept(
        self,
        batch: Batch,
        watch: WatchConfig,
        intake: IntakeMode,
        priority: int | None,
        given: tuple[JobOverrides, str] | None = None,
    ) -> int | None:
        overrides, label, problem = self._overrides(batch, watch, given)
        options = job_options(watch, intake, overrides, label)
        if priority is None:
            priority = overrides.priority if overrides else watch.priority
        suffix = options.suffix
        files = self._not_known(batch.files, options.in_place)
        if not files:
            return None
        files, masks = _split_masks(files, options.in_place)
        if masks:
            options = dataclasses.replace(
                options, masks={rel: mask.rel for rel, mask in masks.items()}
            )
        taken, claim, output_taken = self._name_checker(fold=not watch.case_sensitive_names)
        files, late = self._late_masks(
            files, watch, intake, in_place=options.in_place, taken=taken, claim=claim
        )
        if not files:  # only masks dropped after their originals: each is a job of its own
            if batch.kind == "folder" and intake != "copy":
                prune_taken_folder(batch.root, is_litter)
            return late
        if batch.kind == "folder":
            out_root = claim(unique_path(watch.outbox / batch.name, taken, folder=True))
            archive_root = claim(unique_path(watch.archive / batch.name, taken, folder=True))
            failed_root = claim(unique_path(watch.failed / batch.name, taken, folder=True))
        else:
            out_root, archive_root, failed_root = watch.outbox, watch.archive, watch.failed
        stem = out_root.name if batch.kind == "folder" else Path(files[0].rel).stem
        manifest = _manifest_path(watch, stem, taken, claim)
        new_files = [
            NewFile(
                rel=c.rel,
                source=c.path,
                output=claim(
                    unique_path(
                        out_root / with_suffix(c.rel, suffix),
                        partial(output_taken, multi_page=_may_have_pages(c.rel)),
                    )
                ),
                archive=claim(unique_path(archive_root / c.rel, taken)),
                failed=claim(unique_path(failed_root / c.rel, taken)),
                size=c.size,
                mtime_ns=c.mtime_ns,
                reject=_rejection(batch, c, problem, options),
            )
            for c in files
        ]
        # The sidecar travels with its job: into the job's archive folder (failed folder
        # when it is invalid), or deleted with after = "delete" (see _dispose_sidecars).
        sidecar_root: Path | None = archive_root
        if problem is not None:
            sidecar_root = failed_root
        elif watch.after == "delete":
            sidecar_root = None
        sidecar_targets = [
            (c, None if sidecar_root is None else claim(unique_path(sidecar_root / c.rel, taken)))
            for c in (*(batch.sidecars if batch.kind == "folder" else ()), *masks.values())
        ]
        job_id, file_ids = self._record(
            NewJob(
                watch=watch.name,
                name=batch.name,
                kind=batch.kind,
                options=options,
                files=new_files,
                priority=priority,
                manifest=manifest,
            ),
            intake,
            **({"sidecar": options.sidecar} if options.sidecar is not None else {}),
        )
        if problem is not None:
            log.warning("job.sidecar_invalid", job=job_id, watch=watch.name, error=problem)
        # Each mask is copied into the spool with its input (_to_spool) before it moves.
        self.finish_pending(self._ledger.job_files(job_id))
        if not options.in_place and intake != "copy":
            _dispose_sidecars(sidecar_targets, file_ids[0])
        if batch.kind == "folder" and intake != "copy" and not options.in_place:
            prune_taken_folder(batch.root, is_litter)
        return job_id

    def _record(self, job: NewJob, intake: IntakeMode, **said: Any) -> tuple[int, list[int]]:
        """Record ``job`` (one transaction), remember it for :meth:`take`, and log it."""
        job_id, file_ids = self._ledger.create_job(job)
        self._recorded = job_id
        log.info(
            "job.accepted",
            job=job_id,
            watch=job.watch,
            name=job.name,
            kind=job.kind,
            intake=intake,
            files=len(file_ids),
            bytes=sum(f.size for f in job.files),
            priority=job.priority,
            **said,
        )
        return job_id, file_ids

    def _not_known(self, files: tuple[Candidate, ...], in_place: bool) -> tuple[Candidate, ...]:
        """``files`` less those taken before, where originals stay in the inbox (in place)."""
        if not in_place:
            return files
        return tuple(
            c for c in files if not self._ledger.is_known_source(c.path, c.size, c.mtime_ns)
        )

    def _late_masks(
        self,
        files: tuple[Candidate, ...],
        watch: WatchConfig,
        intake: IntakeMode,
        *,
        in_place: bool,
        taken: Callable[[Path], bool],
        claim: Callable[[Path], Path],
    ) -> tuple[tuple[Candidate, ...], int | None]:
        """Masks left without an original in their drop whose original was processed
        before (watchd/late_masks.py): each recorded and taken as a job of its own.
        Returns the rest of the batch and the last such job (None: there was none)."""
        rest: list[Candidate] = []
        last: int | None = None
        # a mask whose stem has inputs in its own drop (two: ambiguous) is not a late one
        dropped = {rel_stem(c.rel) for c in files if mask_stem(c.rel) is None}
        for candidate in files:
            stem = None if in_place else mask_stem(candidate.rel)
            if stem in dropped:
                stem = None
            earlier = None if stem is None else earlier_original(self._ledger, watch.name, stem)
            if earlier is None:
                rest.append(candidate)
                continue
            manifest = _manifest_path(watch, PurePosixPath(earlier.rel).stem, taken, claim)
            job = late_mask_job(
                candidate,
                earlier,
                watch,
                taken=taken,
                claim=claim,
                busy=self._ledger.path_in_use,
                manifest=manifest,
            )
            target = None
            if watch.after != "delete":  # the mask goes beside the archived original
                name = PurePosixPath(candidate.rel).name
                target = claim(unique_path(earlier.archive.parent / name, taken))
            last, file_ids = self._record(
                job, intake, mask_after=earlier.id, output=str(job.files[0].output)
            )
            self.finish_pending(self._ledger.job_files(last))
            if intake != "copy":
                _dispose_sidecars([(candidate, target)], file_ids[0])
        return tuple(rest), last

    def _overrides(
        self, batch: Batch, watch: WatchConfig, given: tuple[JobOverrides, str] | None
    ) -> tuple[JobOverrides | None, str | None, str | None]:
        """(the job's overrides, what names them, why its sidecar cannot be used): the
        options ``submit`` was given, else the batch's sidecar's."""
        if given is not None:
            return given[0], given[1], None
        overrides, problem = read_sidecar(batch, watch, self._check_model)
        label = None if overrides is None else sidecar_label(batch, batch.sidecars[0])
        return overrides, label, problem

    def reassign(self, record: FileRecord) -> tuple[Path, Path, Path]:
        """New output and archive paths for a retried file (its old names may be taken now).

        The failed path stays: the original sits there and leaves it for the spool.
        """
        # Folded whatever the watch says: it only ever avoids more names (a " (2)" sooner),
        # and the watch's setting may have changed since the job was recorded.
        taken, claim, output_taken = self._name_checker(fold=True)
        multi_page = _may_have_pages(record.rel)
        output = claim(unique_path(record.output, partial(output_taken, multi_page=multi_page)))
        archive = claim(unique_path(record.archive, taken))
        return output, archive, record.failed

    def _name_checker(
        self, *, fold: bool = False
    ) -> tuple[Callable[[Path], bool], Callable[[Path], Path], Callable[..., bool]]:
        """``taken(path)``: on disk, assigned to an unfinished file, or claimed here.

        With ``fold`` (a watch's default, ``case_sensitive_names = false``) names are
        compared as Windows and macOS clients of a share compare them (``name_key``):
        ``a.png`` is taken by ``A.png`` on disk, in the ledger or claimed in this job, so
        ``A.jpg`` and ``a.jpg`` give ``A.png`` and ``a (2).png`` on any file system. Each
        folder is listed at most once per call (nothing else writes there meanwhile: the
        main thread is busy here).

        ``output_taken(path, multi_page=...)`` also keeps outputs apart from the pages of
        multi-page inputs, whose names (``scan-p1.png``) are only known once a worker has
        counted the pages: a page-like name is taken while its base name (``scan.png``) is
        claimed or unfinished, and a multi-page input's name is taken while a first-page
        name of it exists or is in use.
        """
        reserved: set[Path] = set()
        folded: set[bytes] = set()
        listings: dict[Path, set[bytes]] = {}

        def on_disk(path: Path) -> bool:
            if os.path.lexists(path):
                return True
            return fold and name_key(os.fsencode(path.name)) in _folded_names(listings, path.parent)

        def in_use(path: Path) -> bool:
            if path in reserved or self._ledger.path_in_use(path):
                return True
            return fold and (name_key(path) in folded or self._ledger.name_in_use(path))

        def taken(path: Path) -> bool:
            return in_use(path) or on_disk(path) or on_disk(error_note_path(path))

        def claim(path: Path) -> Path:
            reserved.add(path)
            if fold:
                folded.add(name_key(path))
            return path

        def output_taken(path: Path, *, multi_page: bool) -> bool:
            if taken(path):
                return True
            base = page_base(path)
            if base is not None and in_use(base):
                return True
            return multi_page and any(taken(page) for page in first_page_names(path))

        return taken, claim, output_taken

    def finish_pending(self, records: list[FileRecord]) -> None:
        """Move recorded inputs into the spool and mark them queued (idempotent, for recovery).

        The folders are fsynced once for the whole batch, before the files are marked
        queued (a crash before that finds them pending and redoes the moves).
        """
        queued: list[int] = []
        rejected: list[FileRecord] = []
        touched: set[Path] = set()
        for record in records:
            if record.state != "pending":
                continue
            if record.options.in_place:
                taken = os.path.lexists(record.source)
                if not taken:
                    self._disappeared(record)
            else:
                taken = self._to_spool(record, touched)
            if not taken:
                continue
            # A pending file only has an error when intake rejected it (an invalid sidecar):
            # it is failed from the spool, never queued, also when recovery gets here.
            if record.error is not None:
                rejected.append(record)
            else:
                queued.append(record.id)
        for folder in sorted(touched):
            try:
                fsync_dir(folder)
            except FileNotFoundError:
                continue  # removed meanwhile (by whoever dropped it): nothing left to sync
            except OSError as exc:  # some network file systems refuse fsync on a folder
                log.warning("intake.sync_failed", folder=str(folder), error=str(exc))
        self._ledger.mark_queued(queued)
        for record in rejected:
            self._finisher.fail(record, record.error or "rejected")

    def _to_spool(self, record: FileRecord, touched: set[Path]) -> bool:
        """Take one recorded input into the spool; False if it is not there now."""
        target = spool_path(self._spool, record.id)
        mask = record.options.mask_for(record.rel)
        if mask is not None and record.error is None:
            self._spool_mask(record, mask)
        if os.path.lexists(target):
            return True
        try:
            expect = self._expected.get(record.source)
            if record.options.copied:
                copy_file(record.source, target, record.id, expect=expect)
            else:
                # From an inbox on another file system (a share) this is a copy: it must
                # not read through a link swapped in since the entry settled.
                plain = record.options.intake == "inbox"
                move_file(
                    record.source, target, record.id, plain_only=plain, sync=False, expect=expect
                )
                touched.update((record.source.parent, target.parent))
        except FileNotFoundError:
            self._disappeared(record)
            return False
        except UnsafePath as exc:
            # Nothing was read or moved: the entry stays in the inbox, where the watcher
            # reports it (intake.skipped) and never takes it while it is a link.
            log.warning("intake.skipped", file=record.id, path=str(record.source), reason=str(exc))
            self._finisher.fail(record, str(exc))
            return False
        except OSError as exc:
            log.error(
                "intake.spool_failed", file=record.id, path=str(record.source), error=str(exc)
            )
            return False
        return True

    def _spool_mask(self, record: FileRecord, mask: str) -> None:
        """Copy an input's hand-edited mask into the spool, before the input itself moves
        (so that recovery, finding the input spooled, finds its mask there too). What
        cannot be copied is logged; the dispatcher then fails the input with the reason."""
        target = spool_mask_path(self._spool, record.id)
        folder = record.options.mask_dir  # set for a mask dropped after its original
        source = (Path(folder) if folder else record.source.parent) / PurePosixPath(mask).name
        if os.path.lexists(target):
            return
        try:
            copy_file(source, target, record.id, expect=self._expected.get(source))
        except (OSError, InputRejected) as exc:
            log.error("intake.mask_failed", file=record.id, mask=mask, error=str(exc))

    def _disappeared(self, record: FileRecord) -> None:
        log.warning("intake.disappeared", file=record.id, path=str(record.source))
        self._finisher.fail(
            record, "the file was removed from the inbox before watchd could take it"
        )


# --- sidecars ---------------------------------------------------------------------------------


def sidecar_label(batch: Batch, sidecar: Candidate) -> str:
    """How notes and logs name a sidecar: ``<folder>/watchd.toml``, as the person who
    dropped the folder sees it on the share (not the daemon's path to the inbox)."""
    return str(PurePosixPath(os.fsdecode(batch.root.name)) / sidecar.rel)


def read_sidecar(
    batch: Batch, watch: WatchConfig, check_model: Callable[[str], None] | None = None
) -> tuple[JobOverrides | None, str | None]:
    """The overrides of a folder job's sidecar, or the reason it cannot be used.

    ``(None, None)``: no sidecar. The file is read like an input (never through a link,
    never a device or pipe, at most :data:`SIDECAR_MAX_BYTES`) and validated like the
    config (:func:`watchd.config.sidecar_overrides`), so a reason always names the file
    and, for a bad value, the key. A model other than the watch's must pass
    ``check_model`` (installed, loadable by the pool).
    """
    if batch.kind != "folder" or not batch.sidecars:
        return None, None
    labels = [sidecar_label(batch, c) for c in batch.sidecars]
    if len(labels) > 1:
        return None, (
            f"{', '.join(labels)}: more than one options file in one folder; "
            "keep exactly one, named watchd.toml"
        )
    sidecar, label = batch.sidecars[0], labels[0]
    try:
        mode = os.lstat(sidecar.path).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafePath("the file is a symbolic link; watchd does not follow links")
        if not stat.S_ISREG(mode):  # never opened: opening a device can do things
            raise UnsafePath("not a regular file (a folder, device, pipe or socket)")
        raw = read_input(sidecar.path, SIDECAR_MAX_BYTES)
    except FileNotFoundError:
        return None, f"{label}: the file disappeared before it could be read"
    except OSError as exc:
        return None, f"{label}: cannot be read: {exc.strerror or exc}"
    except InputRejected as exc:  # UnsafePath too
        return None, f"{label}: {exc}"
    try:
        overrides = sidecar_overrides(Path(label), raw, watch)
        return _model_checked(overrides, watch, label, check_model), None
    except ConfigError as exc:
        return None, str(exc)


def _manifest_path(
    watch: WatchConfig, stem: str, taken: Callable[[Path], bool], claim: Callable[[Path], Path]
) -> Path | None:
    """Where a job's manifest goes (None: the watch writes none): beside the job's output
    folder (or its first output), never inside it, so a tool that sees it knows everything
    it lists is complete."""
    if not watch.hooks.manifest:
        return None
    return claim(unique_named(watch.outbox, stem, MANIFEST_SUFFIX, taken))


def _model_checked(
    overrides: JobOverrides,
    watch: WatchConfig,
    label: str,
    check_model: Callable[[str], None] | None,
) -> JobOverrides:
    """``overrides``, once a model other than the watch's passed ``check_model``."""
    if check_model is not None and overrides.model != watch.model:
        try:
            check_model(overrides.model)
        except WatchdError as exc:
            raise ConfigError(f"{label}: model: {exc}") from None
    return overrides


def _split_masks(
    files: tuple[Candidate, ...], in_place: bool
) -> tuple[tuple[Candidate, ...], dict[str, Candidate]]:
    """Hand-edited masks (watchd/masks.py) out of a batch's inputs: (the inputs, with lone
    masks last, which are failed with the reason; {input's rel: its mask}). Not on a watch
    that keeps its originals in the inbox: there every mask is failed (MASK_IN_PLACE)."""
    if in_place:
        return files, {}
    inputs, masks, lone = pair_masks(files, {id(c): c.rel for c in files})
    return (*inputs, *lone), masks


def _rejection(
    batch: Batch, candidate: Candidate, problem: str | None, options: JobOptions
) -> str | None:
    """Why an input is failed at intake instead of processed (None: it is processed)."""
    if problem is not None:
        return f"not processed, because this job's options file is invalid: {problem}"
    if mask_stem(candidate.rel) is not None:  # one that pair_masks left: no original beside it
        return MASK_IN_PLACE if options.in_place else LONE_MASK
    if is_sidecar_name(PurePosixPath(candidate.rel).name):
        return NESTED_SIDECAR if batch.kind == "folder" else LOOSE_SIDECAR
    return None


def _dispose_sidecars(targets: list[tuple[Candidate, Path | None]], file_id: int) -> None:
    """Take a job's sidecar out of the inbox with its job: moved to ``target`` (the job's
    archive folder, or its failed folder when invalid), or deleted when ``target`` is None
    (``after = "delete"``). What cannot be moved is left and logged: the folder then stays
    in the inbox holding only the sidecar, which is no job, and nothing is lost."""
    for sidecar, target in targets:
        try:
            if target is None:
                remove_file(sidecar.path)
            else:
                move_file(sidecar.path, target, file_id, plain_only=True)
        except (OSError, InputRejected) as exc:
            log.warning("intake.sidecar_left", path=str(sidecar.path), error=str(exc))
