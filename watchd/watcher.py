"""Intake: notice what people drop into an inbox and decide when a drop is complete.

Events only say *where* to look; what is yielded is decided by ``lstat`` signatures
that stayed unchanged for ``settle_seconds``. That makes intake correct even when
events are lost, coalesced or never delivered (network shares, an inotify queue
overflow, a restart): the periodic :meth:`InboxWatcher.scan` covers those cases.
This module reads directory entries and inode metadata only; it never opens a file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import logging
import os
import re
import stat
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from watchd.logs import StdlibBridge, bridge_stdlib_logs

log = structlog.get_logger()

# Names that are never content: hidden files (also rsync's ".name.XXXXXX" temp files),
# browser/uploader partials, Office lock files, and NAS/Windows/macOS/sync-tool housekeeping.
# Each pattern matches one name (a file's or a folder's), case-insensitively. The specific
# rules come before the broad ``.*`` so that :func:`ignore_rule` names the one that
# explains a name (``.~lock.a.odt#`` is LibreOffice's lock file, not just "hidden").
DEFAULT_IGNORE: tuple[str, ...] = (
    "__MACOSX",  # the resource-fork folder of zips made on macOS
    ".stfolder",  # Syncthing's folder marker
    ".stversions",  # Syncthing's old versions
    ".syncthing.*",  # Syncthing's temp files while a file arrives
    "~*.tmp",  # Office's temp files
    ".~lock.*#",  # LibreOffice's lock files
    "*.watchd-stuck.txt",  # watchd's own note beside a file that never settles
    ".*",
    "*.tmp",
    "*.part",
    "*.partial",
    "*.filepart",
    "*.crdownload",
    "~$*",
    "Thumbs.db",
    "desktop.ini",
    "@eaDir",
    "#recycle",
    "$RECYCLE.BIN",
    "System Volume Information",
    "lost+found",
)

# Only events that can mean new or vanished content. Open, close-without-write and
# access events are filtered inside watchdog (and left out of the inotify mask), so
# our own reads can never wake us up. Attribute events stay in: ``touch``/``cp -p``
# set mtimes, and a hard link losing its second name only shows up as IN_ATTRIB.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    DirModifiedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileAttribEvent,
    DirAttribEvent,
]

#: Reasons of :meth:`StabilityTracker._skip` for entries that are not plain files: intake
#: moves them out of the inbox with a note (unreadable entries stay: that may pass).
SET_ASIDE_KINDS = frozenset({"symlink", "fifo", "socket", "device", "hard link"})
_SKIP_LOG_LIMIT = 10_000  # bound on remembered "already logged" paths

#: Files one :meth:`InboxWatcher.poll` hands out at most (whole batches; one at least). The
#: daemon records them before it serves the control socket and polls again, so this bounds
#: how long one pass of its loop can take when a huge drop settles all at once.
POLL_MAX_FILES = 1000


#: A folder job's options file (a *sidecar*): ``watchd.toml`` at the top of the folder.
#: Any letter case counts (``WATCHD.TOML``, ``Watchd.toml``): people on Windows and macOS
#: shares do not expect case to matter, and a near-miss that silently did nothing would be
#: worse than the rare folder holding two spellings (that job fails, saying so).
SIDECAR_NAME = "watchd.toml"


def is_sidecar_name(name: str) -> bool:
    """Whether a file name is ``watchd.toml`` in any letter case."""
    return name.casefold() == SIDECAR_NAME


@dataclass(frozen=True)
class Candidate:
    path: Path  # absolute path of a regular file in the inbox
    rel: str  # posix path relative to the batch root (for loose files: just the file name)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Batch:
    watch: str
    kind: Literal["folder", "loose"]
    root: Path  # the inbox for loose batches; the top-level folder for folder batches
    name: str  # folder name; for loose batches the first file's name or "<first> +N more"
    files: tuple[Candidate, ...]  # sorted by rel; never empty
    #: Folder batches: the top-level ``watchd.toml`` entries (normally none or one), never
    #: among ``files``. Listed whatever they are (a link too), so that intake can refuse a
    #: bad one with a reason instead of the job silently running without its options.
    sidecars: tuple[Candidate, ...] = ()


@functools.lru_cache(maxsize=32)
def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # Case-insensitive because files arrive from Windows and macOS clients over shares.
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)", re.IGNORECASE)


def is_ignored(name: str, patterns: Sequence[str] = DEFAULT_IGNORE) -> bool:
    """True if one path component (not a whole path) matches an ignore pattern."""
    return _compile(tuple(patterns)).match(name) is not None


def ignore_rule(name: str, patterns: Sequence[str] = DEFAULT_IGNORE) -> str | None:
    """The first pattern that ignores one name (a path component), or None.

    The answer to "why was my file not taken": ``watchd check-ignore`` prints it and
    intake's ``intake.ignored`` debug event carries it. Per-pattern matching is slower
    than the combined expression, so the hot paths use :func:`is_ignored`.
    """
    for pattern in patterns:
        if _compile((pattern,)).match(name) is not None:
            return pattern
    return None


def explain_ignored(rel: str, patterns: Sequence[str] = DEFAULT_IGNORE) -> tuple[str, str] | None:
    """For a path relative to an inbox: the first component that is ignored and its rule.

    A name deep inside an ignored folder (``__MACOSX/a/b.jpg``) is ignored because of the
    folder, so the answer names the component as well as the pattern.
    """
    for part in Path(rel).parts:
        rule = ignore_rule(part, patterns)
        if rule is not None:
            return part, rule
    return None


def _odd_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device"
    return "not a regular file"


class _Entry:
    """What is remembered per tracked top-level name: a few words, never a file list."""

    __slots__ = ("ready_at", "sig", "since", "stable_since")

    def __init__(self, now: float) -> None:
        self.sig: tuple[int, ...] | None = None
        self.stable_since = now
        self.since = now  # first tracked: how long it has kept changing (stuck_after)
        self.ready_at: float | None = None  # loose files only: when it joined the group


class StabilityTracker:
    """Turns "something may have changed here" into complete, stable batches.

    Pure logic with time as a parameter, so every timing rule is testable without
    sleeping. A new entry's clock starts at the first ``tick`` that sees it (not at
    ``touch``): an event may sit unpolled for a while, and we only trust what we
    observed ourselves for a full settle window. Yielded entries are forgotten; the
    caller moves them out of the inbox (otherwise a later touch yields them again).
    """

    def __init__(  # noqa: PLR0917 - the positional signature is the agreed interface
        self,
        watch: str,
        inbox: Path,
        settle_seconds: float,
        ignore: Sequence[str] = DEFAULT_IGNORE,
        max_batch_files: int = 1000,
        max_batch_wait: float | None = None,
    ) -> None:
        self._watch = watch
        self._inbox = Path(os.path.abspath(inbox))
        self._settle = settle_seconds
        self._patterns = tuple(ignore)
        self._ignored = _compile(self._patterns).match
        self._max_files = max(1, max_batch_files)
        self._max_wait = (
            max(10.0, 10 * settle_seconds) if max_batch_wait is None else max_batch_wait
        )
        self._entries: dict[str, _Entry] = {}
        self._logged: set[str] = set()
        #: Refused entries of a kind intake moves aside (links, pipes, ...), each reported
        #: once, in the order met; the caller takes them with :meth:`take_skipped`.
        self.skipped: list[tuple[str, str]] = []
        self._logged_ignored: set[str] = set()

    def touch(self, name: str, now: float) -> None:
        """Start tracking a top-level name; an already tracked one keeps its clock,
        because periodic rescans touch everything and must not postpone readiness."""
        if name not in self._entries and not self._ignored(name):
            self._entries[name] = _Entry(now)

    def tracked(self) -> int:
        return len(self._entries)

    def unsettled_since(self, now: float, older_than: float) -> dict[str, float]:
        """Top-level names that have kept changing (never stable for ``settle_seconds``)
        for longer than ``older_than`` seconds, with when they were first seen.

        A scanner that died mid-page or a copy that stalled leaves such a name behind; it
        is never taken while it changes, so the daemon reports it instead of waiting
        silently forever. A name that settled and waits for its group is not stuck.
        """
        return {
            name: entry.since
            for name, entry in self._entries.items()
            if now - entry.since >= older_than
            and entry.ready_at is None
            and now - entry.stable_since < self._settle
        }

    def tick(self, now: float, max_files: int | None = None) -> list[Batch]:
        """Stat every tracked entry once and return the batches that became ready.

        ``max_files`` bounds the work one tick hands out: once the batches returned hold
        that many files, further ready entries stay tracked (their clocks kept) for the
        next tick. The caller records each batch before it polls again, so a burst of
        100,000 files becomes a stream of short steps instead of one long stall.
        """
        batches: list[Batch] = []
        ready: list[tuple[float, str, int, int]] = []  # Candidates are built only when sent
        unsettled_files = 0
        budget = max_files
        for name, entry in list(self._entries.items()):
            path = os.path.join(self._inbox, name)  # str, not Path: this loop is the hot path
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                del self._entries[name]
                continue
            except OSError as exc:
                self._skip(path, f"unreadable: {exc.strerror}")
                del self._entries[name]
                continue
            if stat.S_ISDIR(st.st_mode):
                if budget is not None and budget <= 0:
                    continue  # looked at next tick; skipping changes none of its state
                batch = self._tick_folder(name, entry, st, now)
                if batch is not None:
                    batches.append(batch)
                    budget = None if budget is None else budget - len(batch.files)
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                self._skip(path, "hard link" if stat.S_ISREG(st.st_mode) else _odd_kind(st.st_mode))
                del self._entries[name]
                continue
            if self._settled(entry, (st.st_size, st.st_mtime_ns, st.st_ino), now):
                entry.ready_at = now if entry.ready_at is None else entry.ready_at
                ready.append((entry.ready_at, name, st.st_size, st.st_mtime_ns))
            else:
                entry.ready_at = None  # changed again after settling: leave the group
                unsettled_files += 1
        if budget is None or budget > 0:
            batches.extend(self._loose_batches(ready, unsettled_files, now, budget))
        return batches

    def _settled(self, entry: _Entry, sig: tuple[int, ...], now: float) -> bool:
        if sig != entry.sig:
            entry.sig, entry.stable_since = sig, now
            return False
        return now - entry.stable_since >= self._settle

    def _tick_folder(
        self, name: str, entry: _Entry, st: os.stat_result, now: float
    ) -> Batch | None:
        # Collect the file list only when the folder may be ready: the walk then serves as
        # both the final stability check and the listing, so it is still one walk per tick.
        collect = entry.sig is not None and now - entry.stable_since >= self._settle
        root = self._inbox / name
        sig, files = self._walk(root, st.st_mtime_ns, collect)
        if not self._settled(entry, sig, now):
            return None
        del self._entries[name]  # ready, or stable and empty: a later touch brings it back
        sidecars = tuple(c for c in files if "/" not in c.rel and is_sidecar_name(c.rel))
        files = [c for c in files if c not in sidecars]
        if not files:  # nothing to process (a folder holding only a sidecar is no job yet)
            return None
        files.sort(key=lambda c: c.rel)
        return Batch(self._watch, "folder", root, name, tuple(files), sidecars)

    def _walk(
        self, root: Path, root_mtime_ns: int, collect: bool
    ) -> tuple[tuple[int, ...], list[Candidate]]:
        """Cheap tree signature (file count, total size, newest file, newest dir) without
        following symlinks; an explicit stack keeps deep trees off the Python call stack."""
        count = total = newest_file = 0
        newest_dir = root_mtime_ns
        files: list[Candidate] = []
        stack: list[tuple[str, str]] = [(str(root), "")]
        while stack:
            dirpath, prefix = stack.pop()
            for de, st in self._entries_of(dirpath, collect):
                rel = prefix + de.name
                if stat.S_ISDIR(st.st_mode):
                    newest_dir = max(newest_dir, st.st_mtime_ns)
                    stack.append((de.path, rel + "/"))
                    continue
                if stat.S_ISREG(st.st_mode):
                    count += 1
                    total += st.st_size
                    newest_file = max(newest_file, st.st_mtime_ns)
                if not collect:
                    continue
                regular = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                if regular or (not prefix and is_sidecar_name(de.name)):
                    files.append(Candidate(Path(de.path), rel, st.st_size, st.st_mtime_ns))
                else:
                    reason = "hard link" if stat.S_ISREG(st.st_mode) else _odd_kind(st.st_mode)
                    self._skip(de.path, reason)
        return (count, total, newest_file, newest_dir), files

    def _entries_of(
        self, dirpath: str, collect: bool
    ) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
        """Non-ignored entries of one directory with their lstat. Something vanishing
        mid-walk is not an error: its parent's mtime changed, so the signature does too."""
        try:
            with os.scandir(dirpath) as it:
                for de in it:
                    if self._ignored(de.name):
                        if collect:
                            self.note_ignored(de.path, de.name)
                        continue
                    try:
                        yield de, de.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return
        except OSError as exc:
            if collect:
                self._skip(dirpath, f"unreadable: {exc.strerror}")

    def _loose_batches(
        self,
        ready: list[tuple[float, str, int, int]],
        unsettled_files: int,
        now: float,
        budget: int | None = None,
    ) -> list[Batch]:
        """Loose files that settle while others are still arriving wait for them, so one
        drop becomes one job; size and age caps keep a never-ending stream flowing.
        Chunks stop once ``budget`` files were sent (the first due chunk always goes)."""
        ready.sort()  # oldest first, so the size cap sends the longest-waiting files
        n = len(ready)
        full = n - n % self._max_files
        flush = n > full and (unsettled_files == 0 or now - ready[full][0] >= self._max_wait)
        batches: list[Batch] = []
        for start in range(0, n if flush else full, self._max_files):
            if budget is not None and budget <= 0:
                break  # the rest stay tracked, ready_at kept: they lead the next tick
            chunk = sorted(ready[start : start + self._max_files], key=lambda r: r[1])
            files = tuple(Candidate(self._inbox / r[1], r[1], r[2], r[3]) for r in chunk)
            for name in (r[1] for r in chunk):
                del self._entries[name]
            more = f" +{len(files) - 1} more" if len(files) > 1 else ""
            batches.append(Batch(self._watch, "loose", self._inbox, files[0].rel + more, files))
            budget = None if budget is None else budget - len(files)
        return batches

    def note_ignored(self, path: str, name: str) -> None:
        """Say (at debug level, once per path) which rule kept a name out of intake, so
        "why was my file never taken?" has an answer in the log as well as from
        ``watchd check-ignore``."""
        if path in self._logged_ignored:
            return
        if len(self._logged_ignored) >= _SKIP_LOG_LIMIT:
            self._logged_ignored.clear()
        self._logged_ignored.add(path)
        log.debug(
            "intake.ignored",
            watch=self._watch,
            path=path,
            rule=ignore_rule(name, self._patterns),
        )

    def _skip(self, path: str, reason: str) -> None:
        """Log a refused path once, not on every tick or rescan that meets it again."""
        if path in self._logged:
            return
        if len(self._logged) >= _SKIP_LOG_LIMIT:
            self._logged.clear()
        self._logged.add(path)
        log.warning("intake.skipped", watch=self._watch, path=path, reason=reason)
        if reason in SET_ASIDE_KINDS and len(self.skipped) < _SKIP_LOG_LIMIT:
            self.skipped.append((path, reason))

    def forget_skipped(self, path: str) -> None:
        """A refused path was dealt with (moved aside): report a new entry there again."""
        self._logged.discard(path)


#: The running watchers: each is told when watchdog reports a kernel queue overflow.
_RUNNING: weakref.WeakSet[InboxWatcher] = weakref.WeakSet()


def _on_watchdog_record(record: logging.LogRecord, message: str) -> bool:
    """One of watchdog's log records matters to intake: a kernel inotify queue overflow (a
    burst of thousands of files) means events were lost, and watchdog says so only in a log
    record. Every running watcher then scans its inbox on its next poll (and logs
    ``watch.overflow``), instead of waiting for the periodic rescan to notice the names
    whose events were lost. Every other record is logged as a ``watchdog.log`` event."""
    if "queue overflowed" not in message:
        return False
    for watcher in list(_RUNNING):
        watcher._overflowed()
    return True


_WATCHDOG_LOG = StdlibBridge("watchdog.log", tracebacks=True, intercept=_on_watchdog_record)
#: watchdog warns when a new folder's watch is registered twice (its own creation event
#: racing its recursive walk) and then keeps one: harmless, and as a warning it would be a
#: plain-text line in the log (or, under ``-W error``, kill the observer thread).
_DOUBLE_WATCH_WARNING = r"Callback with id .* already exists for watch"


class _Handler(FileSystemEventHandler):
    def __init__(self, owner: InboxWatcher) -> None:
        self._owner = owner

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._owner._note(event.src_path)
        if event.dest_path:
            self._owner._note(event.dest_path)


class InboxWatcher:
    """Feeds a StabilityTracker from a watchdog observer plus explicit scans.

    The observer thread only records top-level names and calls ``wake``; all stat work
    happens in ``poll`` on the caller's thread, so a burst of events costs a set insert
    each and the tracker needs no locking.
    """

    def __init__(  # noqa: PLR0917 - the positional signature is the agreed interface
        self,
        watch: str,
        inbox: Path,
        settle_seconds: float,
        wake: Callable[[], None],
        ignore: Sequence[str] = DEFAULT_IGNORE,
        method: Literal["inotify", "poll"] = "inotify",
        poll_interval: float = 5.0,
    ) -> None:
        self._watch = watch
        self._inbox = Path(os.path.abspath(inbox))
        self._prefix = str(self._inbox) + os.sep
        self._ignored = _compile(tuple(ignore)).match
        self._wake = wake
        self._method = method
        self._poll_interval = poll_interval
        self._tracker = StabilityTracker(watch, self._inbox, settle_seconds, ignore)
        self._lock = threading.Lock()
        self._touched: set[str] = set()
        self._rescan = False  # the kernel dropped events: scan the whole inbox on next poll
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        """Start watching (recursively, so writes deep inside a folder keep it unsettled).
        Call :meth:`scan` after this, so nothing dropped in between is missed."""
        if self._observer is not None:
            return
        bridge_stdlib_logs(("watchdog",), _WATCHDOG_LOG)
        _RUNNING.add(self)
        warnings.filterwarnings("ignore", _DOUBLE_WATCH_WARNING, RuntimeWarning)
        if self._method == "poll":
            observer: BaseObserver = PollingObserver(timeout=self._poll_interval)
        else:
            observer = Observer()
        observer.schedule(
            _Handler(self), str(self._inbox), recursive=True, event_filter=_EVENT_FILTER
        )
        observer.start()
        self._observer = observer

    @property
    def alive(self) -> bool:
        """Started, and both the observer thread and its emitter still run (GET /ready).

        The emitter is what reads inotify (or polls); it ends when the inbox goes away (an
        unmounted share, a deleted folder) while the observer thread lives on, so the observer
        alone would report a dead watch as live.
        """
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = observer.emitters
        return bool(emitters) and all(emitter.is_alive() for emitter in emitters)

    def revive(self) -> bool:
        """Start watching again after the inbox came back (a share remounted); True if it did.

        Until then files are still found by the periodic rescan, only later; this restores
        the event-driven pickup without a restart.
        """
        if self._observer is None or self.alive or not self._inbox.is_dir():
            return False
        self.stop()
        self.start()
        return True

    def stop(self) -> None:
        """Stop and join the observer thread; safe to call twice (shutdown paths overlap)."""
        observer, self._observer = self._observer, None
        _RUNNING.discard(self)
        if observer is not None:
            observer.stop()
            observer.join()

    def scan(self, now: float) -> int:
        """Touch every non-ignored top-level entry: the safety net for lost events.
        Raises OSError if the inbox itself cannot be listed."""
        count = 0
        with os.scandir(self._inbox) as it:
            for de in it:
                if self._ignored(de.name):
                    self._tracker.note_ignored(de.path, de.name)
                    continue
                if de.is_symlink():  # d_type only, no syscall; never tracked
                    self._tracker._skip(de.path, "symlink")
                    continue
                self._tracker.touch(de.name, now)
                count += 1
        return count

    def poll(self, now: float) -> list[Batch]:
        """Runs on the caller's thread, so the tracker itself is never shared."""
        with self._lock:
            names, self._touched = self._touched, set()
            rescan, self._rescan = self._rescan, False
        if rescan:
            log.warning(
                "watch.overflow",
                watch=self._watch,
                message="the kernel dropped file events (too many at once); scanning the inbox",
            )
            with contextlib.suppress(OSError):  # inbox gone: the periodic rescan reports it
                self.scan(now)
        for name in names:
            self._tracker.touch(name, now)
        return self._tracker.tick(now, max_files=POLL_MAX_FILES)

    def take_skipped(self) -> list[tuple[Path, str]]:
        """Entries refused since the last call that intake should move aside, with their kind."""
        found, self._tracker.skipped = self._tracker.skipped, []
        return [(Path(path), kind) for path, kind in found]

    def forget_skipped(self, path: Path) -> None:
        self._tracker.forget_skipped(str(path))

    def unsettled_since(self, now: float, older_than: float) -> dict[str, float]:
        """See :meth:`StabilityTracker.unsettled_since` (names relative to the inbox)."""
        return self._tracker.unsettled_since(now, older_than)

    def pending(self) -> bool:
        """True while ticking often matters; otherwise the daemon may sleep until woken."""
        with self._lock:
            if self._touched or self._rescan:
                return True
        return self._tracker.tracked() > 0

    def _overflowed(self) -> None:
        """Observer thread (through watchdog's log record): ask the next poll for a full scan."""
        with self._lock:
            self._rescan = True
        self._wake()

    def _note(self, raw: bytes | str) -> None:
        """Observer thread: map an event path to its top-level name; no I/O, no logging."""
        path = os.fsdecode(raw)
        if not path.startswith(self._prefix):
            return  # the inbox itself, or a path outside it
        parts = path[len(self._prefix) :].split(os.sep)
        if not parts[0] or any(self._ignored(p) for p in parts):
            return
        with self._lock:  # wake once per new name: a big copy sends thousands of events
            if parts[0] in self._touched:
                return
            self._touched.add(parts[0])
        self._wake()
