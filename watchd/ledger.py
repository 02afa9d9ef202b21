"""The ledger: every SQL statement of watchd, and the daemon's memory across restarts.

Only the daemon's main process opens it (docs/design.md, invariant 5). Callers use
methods named after state transitions; each transition is one ``BEGIN
IMMEDIATE`` transaction that checks the state it starts from, so a transition
can never be applied twice or to the wrong file.

A file moves through these states::

    pending  -> queued -> running -> written -> done
        \\          \\         \\
         +-----------+---------+--> failing -> failed

* ``pending``: recorded with its assigned paths; the input may still be in the inbox.
* ``queued``: the input is in the spool (or stays in the inbox with ``after = "keep"``).
* ``running``: handed to a worker; after a crash it goes back to ``queued``.
* ``written``: the output is complete in the outbox; the original is not yet archived.
* ``failing``: the reason is recorded; the original is not yet in the failed folder.
* ``done`` / ``failed``: terminal.

The two in-between states (``written``, ``failing``) exist so that recovery
can finish the side effects on the original that a crash interrupted, using
paths that were fixed before the side effect began.

Paths are stored as BLOBs of their file-system bytes, so names that are not
valid UTF-8 survive the round trip.

A job is ``active`` until its last file is terminal; it then ends ``done`` (no failed
file), ``failed`` (at least one) or ``cancelled`` (an operator cancelled it: the files it
had not started were failed with the reason "cancelled", running ones were let finish).
Retrying its failed files makes it ``active`` again.

The operators' view must cost the same with ten rows or ten million, so nothing it asks
scans ``files`` (migration 2): triggers keep counters of files and jobs per watch and
state (``file_counts``, ``job_counts``) and lifetime totals per watch (``totals``) in the
same transaction as the change they count, so they can never disagree with the rows.
Totals count arrivals in ``done`` / ``failed`` and never go down, neither when old
history is pruned nor when a failed file is retried: they back Prometheus counters.

Queued files are claimed by priority with aging (:meth:`Ledger.claim`): each file carries
its job's priority, and a partial index over queued files (``files_queue``) yields each
priority's oldest files directly, so claiming costs the same with 10 or 100,000 waiting.
"""

from __future__ import annotations

import heapq
import json
import os
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from watchd.config import DaemonConfig
from watchd.errors import Conflict, LedgerError, NotFound
from watchd.files import fsync_dir, fsync_file
from watchd.options import JobOptions
from watchd.states import JOB_STATES, UNFINISHED, FileState, JobState

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CANCELLED_REASON = "cancelled"


@dataclass(frozen=True)
class NewFile:
    """An input to record: where it is now and where its results will go."""

    rel: str
    source: Path
    output: Path
    archive: Path
    failed: Path
    size: int
    mtime_ns: int
    #: A reason to fail this input at intake instead of processing it (an invalid sidecar
    #: of its job, a ``watchd.toml`` that is not a job's sidecar). Recorded with the file, so
    #: recovery after a crash fails it too instead of processing it with the wrong options.
    reject: str | None = None


@dataclass(frozen=True)
class NewJob:
    watch: str
    name: str
    kind: str
    options: JobOptions
    files: Sequence[NewFile]
    priority: int = 0  # higher first; see Ledger.claim
    manifest: Path | None = None  # where the job's manifest goes when it ends


@dataclass(frozen=True)
class FileRecord:
    id: int
    job_id: int
    watch: str
    rel: str
    source: Path
    output: Path
    archive: Path
    failed: Path
    state: str
    attempts: int
    error: str | None
    options: JobOptions
    created_at: float
    #: (a record is read from the ledger, which always knows these: no defaults)
    pages: int  # outputs it makes, once known (set_pages, mark_written); 1 until then
    #: where its output waits for approval, once a result tripped review_if (set_review_path)
    review: Path | None


@dataclass(frozen=True)
class FinishedJob:
    """Returned when a transition ends the last open file of a job."""

    id: int
    watch: str
    name: str
    state: str
    total: int
    failed: int
    seconds: float


@dataclass(frozen=True)
class JobSummary:
    """One line of ``watchd jobs``."""

    id: int
    watch: str
    name: str
    kind: str
    state: str
    total: int
    done: int
    failed: int
    created_at: float
    finished_at: float | None
    cancelled: bool  # an operator cancelled it (it may still be active while files finish)
    priority: int  # higher first (see Ledger.claim)


@dataclass(frozen=True)
class FileDetail:
    """One file of ``watchd job ID``."""

    id: int
    rel: str
    state: str
    attempts: int
    error: str | None
    output: Path
    size: int
    output_bytes: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    retry_at: float | None
    pages: int = 1  # outputs written: one per page of a multi-page input
    #: the quality figures of each page (watchd/quality.py), once made
    quality: tuple[Mapping[str, Any], ...] | None = None
    reused_from: int | None = None  # its outputs are this file's, from the content cache


@dataclass(frozen=True)
class CacheEntry:
    """One row of the content cache: the outputs an earlier file made from the same input."""

    key: str
    file_id: int
    job_id: int
    rel: str  # the earlier input's name in its job
    output: Path  # where the earlier file's (first) output was written
    pages: int
    bytes: int
    digests: tuple[str, ...]  # SHA-256 of each page's cached copy
    width: int
    height: int


@dataclass(frozen=True)
class JobDetail(JobSummary):
    """``watchd job ID``: the summary, the files still waiting or running, and every file."""

    queued: int
    running: int
    options: JobOptions
    files: tuple[FileDetail, ...]
    manifest: Path | None = None


@dataclass(frozen=True)
class Recovery:
    """What a crash left behind, for the daemon to finish."""

    requeued: tuple[FileRecord, ...]  # were running: redo into the same output path
    pending: tuple[FileRecord, ...]  # recorded, maybe not yet spooled
    written: tuple[FileRecord, ...]  # output complete, original not yet disposed of
    failing: tuple[FileRecord, ...]  # reason known, original not yet in failed/


# --- schema ---------------------------------------------------------------------------------------
# Append-only: a released migration is never edited; a new one is added at the end.
#: What a file reaching ``done`` or ``failed`` adds to its watch's totals (two triggers of
#: migration 2 run it: a file recorded in that state, a file moving into it).
_ADD_TO_TOTALS = """\
        INSERT INTO totals (watch, files_done, files_failed, bytes_in, bytes_out)
        VALUES ((SELECT watch FROM jobs WHERE id = NEW.job_id),
                NEW.state = 'done', NEW.state = 'failed',
                NEW.size * (NEW.state = 'done'),
                COALESCE(NEW.output_bytes, 0) * (NEW.state = 'done'))
        ON CONFLICT (watch) DO UPDATE SET
            files_done = files_done + excluded.files_done,
            files_failed = files_failed + excluded.files_failed,
            bytes_in = bytes_in + excluded.bytes_in,
            bytes_out = bytes_out + excluded.bytes_out;
"""

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        watch       TEXT NOT NULL,
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        state       TEXT NOT NULL,
        options     TEXT NOT NULL,
        total       INTEGER NOT NULL,
        created_at  REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX jobs_state ON jobs(state, id);
    CREATE TABLE files (
        id           INTEGER PRIMARY KEY,
        job_id       INTEGER NOT NULL REFERENCES jobs(id),
        rel_path     BLOB NOT NULL,
        source_path  BLOB NOT NULL,
        output_path  BLOB NOT NULL,
        archive_path BLOB NOT NULL,
        failed_path  BLOB NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        retry_at     REAL,
        error        TEXT,
        size         INTEGER NOT NULL,
        mtime_ns     INTEGER NOT NULL,
        output_bytes INTEGER,
        created_at   REAL NOT NULL,
        started_at   REAL,
        finished_at  REAL
    );
    CREATE INDEX files_state ON files(state, id);
    CREATE INDEX files_job ON files(job_id, state);
    CREATE INDEX files_output ON files(output_path);
    CREATE INDEX files_archive ON files(archive_path);
    CREATE INDEX files_failed ON files(failed_path);
    CREATE INDEX files_source ON files(source_path);
    """,
    # 2: the operators' view. Counters kept by triggers (status never scans files),
    # cancelled jobs, settings, and indexes for listing and pruning jobs.
    f"""
    ALTER TABLE jobs ADD COLUMN cancelled INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_state_watch ON jobs(state, watch, id);
    CREATE INDEX jobs_watch ON jobs(watch, id);
    CREATE INDEX jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX files_finished ON files(finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT
    ) WITHOUT ROWID;
    CREATE TABLE file_counts (
        watch TEXT NOT NULL,
        state TEXT NOT NULL,
        n     INTEGER NOT NULL,
        PRIMARY KEY (watch, state)
    ) WITHOUT ROWID;
    CREATE TABLE job_counts (
        watch TEXT NOT NULL,
        state TEXT NOT NULL,
        n     INTEGER NOT NULL,
        PRIMARY KEY (watch, state)
    ) WITHOUT ROWID;
    CREATE TABLE totals (
        watch        TEXT NOT NULL PRIMARY KEY,
        files_done   INTEGER NOT NULL,
        files_failed INTEGER NOT NULL,
        bytes_in     INTEGER NOT NULL,
        bytes_out    INTEGER NOT NULL
    ) WITHOUT ROWID;

    INSERT INTO file_counts (watch, state, n)
        SELECT j.watch, f.state, COUNT(*) FROM files f JOIN jobs j ON j.id = f.job_id
        GROUP BY j.watch, f.state;
    INSERT INTO job_counts (watch, state, n)
        SELECT watch, state, COUNT(*) FROM jobs GROUP BY watch, state;
    INSERT INTO totals (watch, files_done, files_failed, bytes_in, bytes_out)
        SELECT j.watch, SUM(f.state = 'done'), SUM(f.state = 'failed'),
               SUM(f.size * (f.state = 'done')),
               SUM(COALESCE(f.output_bytes, 0) * (f.state = 'done'))
        FROM files f JOIN jobs j ON j.id = f.job_id
        WHERE f.state IN ('done', 'failed')
        GROUP BY j.watch;

    CREATE TRIGGER files_count_insert AFTER INSERT ON files BEGIN
        INSERT INTO file_counts (watch, state, n)
        VALUES ((SELECT watch FROM jobs WHERE id = NEW.job_id), NEW.state, 1)
        ON CONFLICT (watch, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER files_count_update AFTER UPDATE OF state ON files
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE file_counts SET n = n - 1
        WHERE watch = (SELECT watch FROM jobs WHERE id = OLD.job_id) AND state = OLD.state;
        INSERT INTO file_counts (watch, state, n)
        VALUES ((SELECT watch FROM jobs WHERE id = NEW.job_id), NEW.state, 1)
        ON CONFLICT (watch, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER files_count_delete AFTER DELETE ON files BEGIN
        UPDATE file_counts SET n = n - 1
        WHERE watch = (SELECT watch FROM jobs WHERE id = OLD.job_id) AND state = OLD.state;
    END;
    CREATE TRIGGER files_totals_insert AFTER INSERT ON files
    WHEN NEW.state IN ('done', 'failed') BEGIN
{_ADD_TO_TOTALS}    END;
    CREATE TRIGGER files_totals_update AFTER UPDATE OF state ON files
    WHEN NEW.state IN ('done', 'failed') AND OLD.state IS NOT NEW.state BEGIN
{_ADD_TO_TOTALS}    END;
    CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (watch, state, n) VALUES (NEW.watch, NEW.state, 1)
        ON CONFLICT (watch, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE job_counts SET n = n - 1 WHERE watch = OLD.watch AND state = OLD.state;
        INSERT INTO job_counts (watch, state, n) VALUES (NEW.watch, NEW.state, 1)
        ON CONFLICT (watch, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE watch = OLD.watch AND state = OLD.state;
    END;
    """,
    # 3: routing and completion. A job's priority, where its manifest goes (assigned
    # with the job, like output paths), and how many outputs a file made (pages).
    # Each file carries its job's priority too, so that the queue index (files_queue:
    # queued files only, by priority, then age) lets claim() find the next files
    # without sorting the whole backlog (see Ledger.claim); files_backed_off holds only
    # the few files waiting to retry, so next_retry_at() (asked on every pass of the
    # daemon's loop) is one probe instead of a walk over 100,000 queued files.
    """
    ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN manifest_path BLOB;
    ALTER TABLE files ADD COLUMN pages INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE files ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX files_queue ON files(priority, created_at, id) WHERE state = 'queued';
    CREATE INDEX files_backed_off ON files(retry_at)
        WHERE state = 'queued' AND retry_at IS NOT NULL;
    ALTER TABLE jobs ADD COLUMN reported INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET reported = 1 WHERE state != 'active';
    CREATE INDEX jobs_manifest ON jobs(manifest_path) WHERE manifest_path IS NOT NULL;
    CREATE INDEX jobs_unreported ON jobs(id) WHERE reported = 0 AND state != 'active';
    """,
    # 4: case-insensitive names. Each target (output, archive, failed, manifest) also
    # recorded by its folded key (name_key: Unicode case folding, composed accents), so
    # that a clash check can ask "is a name that a Windows or macOS client cannot tell
    # apart from this one in use?" through an index, as path_in_use asks for the exact
    # name. Rows go with their file or job (cascade); a retried file's keys are replaced.
    # The SQL function watchd_name_key exists only on the daemon's own connection.
    """
    CREATE TABLE name_keys (
        key BLOB NOT NULL,
        file_id INTEGER REFERENCES files(id) ON DELETE CASCADE,
        job_id INTEGER REFERENCES jobs(id) ON DELETE CASCADE
    );
    CREATE INDEX name_keys_key ON name_keys(key);
    CREATE INDEX name_keys_file ON name_keys(file_id) WHERE file_id IS NOT NULL;
    CREATE INDEX name_keys_job ON name_keys(job_id) WHERE job_id IS NOT NULL;
    INSERT INTO name_keys (key, file_id)
        SELECT watchd_name_key(output_path), id FROM files WHERE state NOT IN ('done', 'failed')
        UNION ALL
        SELECT watchd_name_key(archive_path), id FROM files WHERE state NOT IN ('done', 'failed')
        UNION ALL
        SELECT watchd_name_key(failed_path), id FROM files WHERE state NOT IN ('done', 'failed');
    INSERT INTO name_keys (key, job_id)
        SELECT watchd_name_key(manifest_path), id FROM jobs
        WHERE manifest_path IS NOT NULL AND state = 'active';
    """,
    # 5: hook deliveries. One row per hook (command, webhook) of a job's current report,
    # with a delivery id that stays the same across retries and restarts (the webhook's
    # X-Watchd-Delivery, the command's WATCHD_DELIVERY_ID) and whether it has finished:
    # after a crash only the hooks that had not finished run again (at least once per
    # hook), and a hook that found its queue full waits here instead of being dropped.
    # A job reopened by a retry starts a new report: its rows go (Ledger.requeue_failed).
    """
    CREATE TABLE hook_deliveries (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        hook TEXT NOT NULL CHECK (hook IN ('command', 'webhook')),
        delivery TEXT NOT NULL,
        finished_at REAL,
        PRIMARY KEY (job_id, hook)
    );
    """,
    # 6 ("quality", issue 18): the quality figures of each output (JSON, one object per
    # page: watchd/quality.py) and, for an output that tripped review_if, where it waits in the
    # review folder. The path is recorded before the output is written there, so a rerun
    # after a crash overwrites the same files (docs/design.md, invariant 2).
    """
    ALTER TABLE files ADD COLUMN quality TEXT;
    ALTER TABLE files ADD COLUMN review_path BLOB;
    CREATE INDEX files_review ON files(review_path) WHERE review_path IS NOT NULL;
    """,
    # 7 ("content_cache", issue 18): the content cache's index (watchd/content_cache.py).
    # One row per cache key (SHA-256 of the input's bytes, the model and the output
    # options): the file that made the outputs, the SHA-256 of each page's copy in
    # <state_dir>/cache, their bytes and when it was last used (least recently used rows
    # go first when the copies outgrow cache_max_bytes). A row goes with its file when the
    # ledger is pruned (cascade); the copies it leaves are swept by the daemon.
    # files.reused_from: the file whose cached outputs this file's are (NULL: made here).
    """
    CREATE TABLE content_cache (
        key TEXT PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        pages INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        digests TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        created_at REAL NOT NULL,
        used_at REAL NOT NULL
    );
    CREATE INDEX content_cache_used ON content_cache(used_at);
    CREATE INDEX content_cache_file ON content_cache(file_id);
    ALTER TABLE files ADD COLUMN reused_from INTEGER;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

_FILE_COLUMNS = (
    "f.id, f.job_id, j.watch, f.rel_path, f.source_path, f.output_path, f.archive_path, "
    "f.failed_path, f.state, f.attempts, f.error, j.options, f.created_at, f.pages, "
    "f.review_path"
)


def _blob(path: Path) -> bytes:
    return os.fsencode(path)


def name_key(path: Path | bytes) -> bytes:
    """A path as a Windows or macOS client compares names: letter case and the composed
    or decomposed form of an accent do not matter (``A.png``, ``a.png``; ``é``, ``e\u0301``).

    The same function as ``files.name_key``, for the ledger's ``name_keys`` rows."""
    text = os.fsdecode(path)
    return os.fsencode(unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold()))


def _path(blob: bytes) -> Path:
    return Path(os.fsdecode(blob))


def _text(value: str) -> str:
    """Text for a TEXT column: names from non-UTF-8 file names (surrogate escapes) become
    U+FFFD, because SQLite cannot store lone surrogates (a job name or a reason quoting
    such a path would otherwise raise UnicodeEncodeError and stop the daemon)."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


_JOB_COLUMNS = "id, watch, name, kind, state, total, created_at, finished_at, cancelled, priority"
_JOB_COLUMN_COUNT = _JOB_COLUMNS.count(",") + 1
_Record = TypeVar("_Record", bound="DataclassInstance")
_FILE_DETAIL_COLUMNS = (
    "id, rel_path, state, attempts, error, output_path, size, output_bytes, created_at, "
    "started_at, finished_at, retry_at, pages, quality, reused_from"
)
_IN_CHUNK = 500  # ids bound per IN (...) list, far below SQLite's limit on variables
_UNFINISHED_SQL = ", ".join(f"'{state}'" for state in UNFINISHED)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _maybe_path(blob: bytes | None) -> Path | None:
    return None if blob is None else _path(blob)


def _from_row(
    cls: type[_Record],
    row: Sequence[Any],
    decode: Mapping[str, Callable[[Any], Any]],
    **known: Any,
) -> _Record:
    """A ``cls`` from a row whose columns are its fields in their order (less those in
    ``known``, given here), each through ``decode[field]`` where its stored form differs
    (a BLOB path, JSON). The ``*_COLUMNS`` constants list the columns in that order."""
    names = [f.name for f in fields(cls) if f.name not in known]
    values = {n: decode[n](v) if n in decode else v for n, v in zip(names, row, strict=True)}
    return cls(**values, **known)


_FILE_RECORD_DECODE: dict[str, Callable[[Any], Any]] = {
    "rel": os.fsdecode,
    "source": _path,
    "output": _path,
    "archive": _path,
    "failed": _path,
    "options": lambda text: JobOptions.from_json(json.loads(text)),
    "review": _maybe_path,
}
_JOB_SUMMARY_DECODE: dict[str, Callable[[Any], Any]] = {"cancelled": bool, "priority": int}
_FILE_DETAIL_DECODE: dict[str, Callable[[Any], Any]] = {
    "rel": os.fsdecode,
    "output": _path,
    "quality": lambda text: None if text is None else tuple(json.loads(text)),
}
_CACHE_ENTRY_DECODE: dict[str, Callable[[Any], Any]] = {
    "rel": os.fsdecode,
    "output": _path,
    "digests": lambda text: tuple(json.loads(text)),
}


def _file_record(row: Sequence[Any]) -> FileRecord:
    return _from_row(FileRecord, row, _FILE_RECORD_DECODE)


def _job_summary(row: Sequence[Any], by_state: Mapping[str, int]) -> JobSummary:
    """A row of ``_JOB_COLUMNS`` (and maybe more columns after them) with its job's counts."""
    done = by_state.get(FileState.DONE.value, 0)
    failed = by_state.get(FileState.FAILED.value, 0)
    columns = row[:_JOB_COLUMN_COUNT]
    return _from_row(JobSummary, columns, _JOB_SUMMARY_DECODE, done=done, failed=failed)


#: Above every priority a job can have (they are -100..100; the ledger does not insist).
_ABOVE_ANY_PRIORITY = 2**62

#: The best claim candidates of one priority: its oldest queued files not backed off,
#: straight from the files_queue index (no sort). ``INDEXED BY`` because the planner,
#: without statistics, would take files_state and sort the whole backlog instead.
_CLAIM_CANDIDATES = (
    "SELECT id, created_at FROM files INDEXED BY files_queue "
    "WHERE state = 'queued' AND priority = ? "
    "AND (retry_at IS NULL OR retry_at <= ?) ORDER BY created_at, id LIMIT ?"
)
#: The next lower priority that has queued files: one probe of the files_queue index.
_NEXT_PRIORITY = (
    "SELECT priority FROM files INDEXED BY files_queue WHERE state = 'queued' AND priority < ? "
    "ORDER BY priority DESC LIMIT 1"
)


def _queued_priorities(db: sqlite3.Connection) -> Iterator[int]:
    """The distinct priorities of queued files, highest first, by skipping through the
    index (one probe each) instead of reading every queued row."""
    row = db.execute(_NEXT_PRIORITY, (_ABOVE_ANY_PRIORITY,)).fetchone()
    while row is not None:
        yield int(row[0])
        row = db.execute(_NEXT_PRIORITY, (row[0],)).fetchone()


class Ledger:
    """The SQLite ledger. Not thread-safe by design: one owner, the daemon's main thread.

    ``priority_aging`` (seconds of waiting worth one priority step, see :meth:`claim`) is
    a plain attribute: a reload may change it, and the next claim uses the new value.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        clock: Callable[[], float],
        *,
        priority_aging: float = DaemonConfig.priority_aging,
    ) -> None:
        self._db = connection
        self._clock = clock
        self.priority_aging = priority_aging

    # --- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        priority_aging: float = DaemonConfig.priority_aging,
    ) -> Ledger:
        """Open the ledger at ``path``, creating it only when no file is there.

        Only a missing file means "new ledger": it is built under a temporary name and
        renamed into place once its schema is complete, so an existing file is always one
        that was a whole ledger. An existing file that is not a healthy watchd ledger
        (empty, another program's file or database, damaged) is refused with
        :class:`LedgerError` and left exactly as it is; re-initialising it would restart
        job ids and process kept inputs again. ``PRAGMA quick_check`` runs at every open.
        """
        if not os.path.lexists(path):
            _create(path)
        _check_file(path)
        try:
            connection = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
        try:
            connection.execute("PRAGMA busy_timeout=10000")
            _check_health(connection, path)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.create_function("watchd_name_key", 1, _sql_name_key, deterministic=True)
            ledger = cls(connection, clock, priority_aging=priority_aging)
            ledger._migrate()
        except LedgerError:
            connection.close()  # a refused ledger (newer schema, foreign) must not stay open
            raise
        except sqlite3.Error as exc:
            connection.close()
            raise LedgerError(f"cannot use the ledger {path}: {exc}") from None
        return ledger

    def close(self) -> None:
        self._db.close()

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger has schema version {current}, newer than this watchd "
                f"understands ({SCHEMA_VERSION}); upgrade watchd or use another state_dir"
            )
        for version in range(current, SCHEMA_VERSION):
            with self._transaction() as db:
                for statement in _split_sql(MIGRATIONS[version]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={version + 1}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- recording --------------------------------------------------------------------------------

    def create_job(self, job: NewJob) -> tuple[int, list[int]]:
        """Record a job and all its files (state ``pending``) in one transaction."""
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (watch, name, kind, state, options, total, created_at, "
                "priority, manifest_path) VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?)",
                (
                    job.watch,
                    _text(job.name),
                    job.kind,
                    json.dumps(job.options.to_json()),
                    len(job.files),
                    now,
                    job.priority,
                    None if job.manifest is None else _blob(job.manifest),
                ),
            )
            job_id = int(cursor.lastrowid or 0)
            file_ids: list[int] = []
            for item in job.files:
                cursor = db.execute(
                    "INSERT INTO files (job_id, rel_path, source_path, output_path, archive_path, "
                    "failed_path, state, size, mtime_ns, created_at, priority, error) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        os.fsencode(item.rel),
                        _blob(item.source),
                        _blob(item.output),
                        _blob(item.archive),
                        _blob(item.failed),
                        item.size,
                        item.mtime_ns,
                        now,
                        job.priority,
                        None if item.reject is None else _text(item.reject),
                    ),
                )
                file_id = int(cursor.lastrowid or 0)
                file_ids.append(file_id)
                _add_name_keys(db, file_id, (item.output, item.archive, item.failed))
            if job.manifest is not None:
                db.execute(
                    "INSERT INTO name_keys (key, job_id) VALUES (?, ?)",
                    (name_key(job.manifest), job_id),
                )
        return job_id, file_ids

    def path_in_use(self, path: Path) -> bool:
        """Whether an unfinished file has ``path`` (or something below it) as a target."""
        exact = _blob(path)
        low = exact + b"/"
        high = exact + b"0"  # '0' sorts right after '/': the range is everything below path/
        for column in ("output_path", "archive_path", "failed_path"):
            row = self._db.execute(
                f"SELECT 1 FROM files WHERE ({column} = ? OR ({column} >= ? AND {column} < ?)) "
                "AND state NOT IN ('done', 'failed') LIMIT 1",
                (exact, low, high),
            ).fetchone()
            if row:
                return True
        row = self._db.execute(  # a manifest is a target too, until its job has ended
            "SELECT 1 FROM jobs WHERE manifest_path = ? AND state = 'active' LIMIT 1", (exact,)
        ).fetchone()
        return row is not None

    def name_in_use(self, path: Path) -> bool:
        """:meth:`path_in_use` with names compared as Windows and macOS clients compare
        them (:func:`name_key`): ``A.png`` is in use while ``a.png`` is an unfinished
        file's target, and ``Shoot`` while something below ``shoot/`` is."""
        exact = name_key(path)
        low = exact + b"/"
        high = exact + b"0"
        row = self._db.execute(
            "SELECT 1 FROM name_keys k "
            "LEFT JOIN files f ON f.id = k.file_id LEFT JOIN jobs j ON j.id = k.job_id "
            "WHERE (k.key = ? OR (k.key >= ? AND k.key < ?)) "
            "AND (f.state NOT IN ('done', 'failed') OR j.state = 'active') LIMIT 1",
            (exact, low, high),
        ).fetchone()
        return row is not None

    def is_known_source(self, path: Path, size: int, mtime_ns: int) -> bool:
        """Whether this exact input (path, size, mtime) was already taken (``after = "keep"``)."""
        row = self._db.execute(
            "SELECT 1 FROM files WHERE source_path = ? AND size = ? AND mtime_ns = ? LIMIT 1",
            (_blob(path), size, mtime_ns),
        ).fetchone()
        return row is not None

    def done_files_named(self, watch: str, stem: str, limit: int = 20) -> list[FileRecord]:
        """The done files of ``watch`` whose relative path starts with ``stem.``, the most
        recently finished first (a hand-edited mask dropped after its original looks for
        that original: watchd/late_masks.py). The caller checks the exact stem."""
        low = os.fsencode(stem) + b"."
        high = os.fsencode(stem) + b"/"  # '/' sorts right after '.': the range is "stem.*"
        rows = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id "
            "WHERE j.watch = ? AND f.state = 'done' AND f.rel_path >= ? AND f.rel_path < ? "
            "ORDER BY f.finished_at DESC, f.id DESC LIMIT ?",
            (watch, low, high, limit),
        ).fetchall()
        return [_file_record(row) for row in rows]

    # --- transitions ------------------------------------------------------------------------------

    def mark_queued(self, file_ids: Iterable[int]) -> None:
        """pending -> queued, for inputs now in the spool (or kept in place)."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE files SET state = 'queued' WHERE id = ? AND state = 'pending'",
                [(file_id,) for file_id in file_ids],
            )

    def claim(self, limit: int) -> list[FileRecord]:
        """queued -> running for up to ``limit`` files: highest effective priority first.

        A file's effective priority is its job's priority plus one step for every
        ``priority_aging`` seconds it has waited since it was recorded, so work of a low
        priority is overtaken by newer work of a higher one, but never forever: a file is
        never overtaken by one recorded more than ``(q - p) * priority_aging`` seconds
        after it, where ``p`` and ``q`` are their priorities (docs/routing.md).

        Comparing two files at the same instant, ``now`` cancels out: the one with the
        smaller *rank* ``created_at - priority * priority_aging`` goes first; equal ranks
        go oldest first, then by id (so one priority is plain FIFO). Backed-off files
        (``retry_at`` in the future) are skipped, as are files not queued.

        The cost does not grow with the backlog: one probe of the ``files_queue`` index per
        distinct priority among the queued files, then at most ``limit`` index entries per
        priority (each priority's best candidates are its oldest), merged here.
        """
        if limit <= 0:
            return []
        now = self._clock()
        aging = self.priority_aging
        with self._transaction() as db:
            candidates: list[tuple[float, float, int]] = []
            for priority in _queued_priorities(db):
                for file_id, created_at in db.execute(_CLAIM_CANDIDATES, (priority, now, limit)):
                    candidates.append((created_at - priority * aging, created_at, file_id))
            chosen = [file_id for _rank, _created, file_id in heapq.nsmallest(limit, candidates)]
            rows: dict[int, Any] = {}
            for start in range(0, len(chosen), _IN_CHUNK):
                chunk = chosen[start : start + _IN_CHUNK]
                for row in db.execute(
                    f"SELECT {_FILE_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id "
                    f"WHERE f.id IN ({_marks(len(chunk))})",
                    chunk,
                ):
                    rows[row[0]] = row
            claimed = []
            for file_id in chosen:
                cursor = db.execute(
                    "UPDATE files SET state = 'running', attempts = attempts + 1, "
                    "started_at = ?, retry_at = NULL WHERE id = ? AND state = 'queued'",
                    (now, file_id),
                )
                if cursor.rowcount == 1:
                    claimed.append(_file_record(rows[file_id]))
        return [replace(r, state="running", attempts=r.attempts + 1) for r in claimed]

    def next_retry_at(self) -> float | None:
        """When the earliest backed-off queued file becomes claimable (None: none is waiting)."""
        row = self._db.execute(
            "SELECT MIN(retry_at) FROM files INDEXED BY files_backed_off "
            "WHERE state = 'queued' AND retry_at IS NOT NULL"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def requeue(
        self, file_id: int, error: str, retry_at: float | None = None, *, refund: bool = False
    ) -> str:
        """running -> queued after a retryable failure; the error is kept for status.

        ``refund`` gives the attempt back when the file was not at fault (shutdown,
        a full disk), so only the file's own failures count towards ``max_attempts``.

        If an operator cancelled the job while the file was running, it must not run
        again: it goes to ``failing`` with the reason "cancelled" instead, and the daemon
        finishes it like any failing file (at once, or in its periodic pass over
        ``stuck()``). Returns the state the file is now in.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT j.cancelled FROM files f JOIN jobs j ON j.id = f.job_id "
                "WHERE f.id = ? AND f.state = 'running'",
                (file_id,),
            ).fetchone()
            if row is None:
                raise LedgerError(f"file {file_id} is not running")
            if row[0]:
                db.execute(
                    "UPDATE files SET state = 'failing', error = ?, retry_at = NULL, "
                    "attempts = attempts - ? WHERE id = ? AND state = 'running'",
                    (CANCELLED_REASON, 1 if refund else 0, file_id),
                )
                return FileState.FAILING.value
            db.execute(
                "UPDATE files SET state = 'queued', error = ?, retry_at = ?, "
                "attempts = attempts - ? WHERE id = ? AND state = 'running'",
                (_text(error), retry_at, 1 if refund else 0, file_id),
            )
        return FileState.QUEUED.value

    def set_pages(self, file_id: int, pages: int) -> None:
        """Record, before the first page is written, how many outputs a running file makes.

        The dispatcher checks a multi-page document's page names against the outbox once,
        when it first learns the page count; a rerun after a crash between two pages finds
        its count here and overwrites its own pages instead of taking them for someone else's.
        """
        self._transition(
            file_id,
            "running",
            "UPDATE files SET pages = ? WHERE id = ? AND state = 'running'",
            (pages, file_id),
        )

    def mark_written(
        self,
        file_id: int,
        output_bytes: int,
        pages: int = 1,
        quality: Sequence[Mapping[str, Any]] | None = None,
        reused_from: int | None = None,
    ) -> None:
        """running -> written: the output (``pages`` outputs for a multi-page input) is complete.

        ``quality``: its figures, one per page (watchd/quality.py). ``reused_from``: the
        file whose cached outputs were written (the content cache).
        """
        self._transition(
            file_id,
            "running",
            "UPDATE files SET state = 'written', output_bytes = ?, pages = ?, error = NULL, "
            "quality = ?, reused_from = ? WHERE id = ? AND state = 'running'",
            (output_bytes, pages, _quality(quality), reused_from, file_id),
        )

    # --- the review folder (issue 18: the quality gate) -------------------------------------------

    def set_review_path(self, file_id: int, path: Path) -> None:
        """Record where a running file's output will wait for approval, before writing it."""
        self._transition(
            file_id,
            "running",
            "UPDATE files SET review_path = ? WHERE id = ? AND state = 'running'",
            (_blob(path), file_id),
        )

    def review_path_in_use(self, path: Path) -> bool:
        """Whether an unfinished file waits (or will wait) at ``path`` in a review folder."""
        row = self._db.execute(
            "SELECT 1 FROM files WHERE review_path = ? AND state NOT IN ('done', 'failed') LIMIT 1",
            (_blob(path),),
        ).fetchone()
        return row is not None

    def mark_review(
        self,
        file_id: int,
        output_bytes: int,
        pages: int,
        quality: Sequence[Mapping[str, Any]],
        reason: str,
    ) -> None:
        """running -> review: the output is complete in the review folder; ``reason`` says
        which figure tripped (shown by ``watchd job`` as the file's note)."""
        self._transition(
            file_id,
            "running",
            "UPDATE files SET state = 'review', output_bytes = ?, pages = ?, error = ?, "
            "quality = ? WHERE id = ? AND state = 'running' AND review_path IS NOT NULL",
            (output_bytes, pages, _text(reason), _quality(quality), file_id),
        )

    def in_review(self, job_id: int) -> list[FileRecord]:
        """The job's files waiting in the review folder (NotFound: no such job)."""
        if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            raise NotFound(f"no job {job_id}")
        return self._files_where(self._db, "f.job_id = ? AND f.state = 'review'", (job_id,))

    def approve(self, file_id: int) -> None:
        """review -> written: an operator approved it and its output is now in the outbox."""
        self._transition(
            file_id,
            "review",
            "UPDATE files SET state = 'written', error = NULL WHERE id = ? AND state = 'review'",
            (file_id,),
        )

    # --- the content cache's index (watchd/content_cache.py owns the copies) ---------------------

    def cache_entry(self, key: str) -> CacheEntry | None:
        """The cache row of ``key`` with the file that made it, or None."""
        row = self._db.execute(
            "SELECT c.key, c.file_id, f.job_id, f.rel_path, f.output_path, c.pages, c.bytes, "
            "c.digests, c.width, c.height FROM content_cache c JOIN files f ON f.id = c.file_id "
            "WHERE c.key = ?",
            (key,),
        ).fetchone()
        return None if row is None else _from_row(CacheEntry, row, _CACHE_ENTRY_DECODE)

    def cache_put(
        self,
        key: str,
        file_id: int,
        *,
        digests: Sequence[str],
        size: int,
        dimensions: tuple[int, int],
        now: float,
    ) -> None:
        """Record (or replace) the cache row of ``key``: ``file_id`` made outputs whose
        copies have these SHA-256 ``digests`` (one per page), ``size`` bytes in all."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO content_cache (key, file_id, pages, bytes, digests, "
                "width, height, created_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    file_id,
                    len(digests),
                    size,
                    json.dumps(list(digests)),
                    *dimensions,
                    now,
                    now,
                ),
            )

    def cache_touch(self, key: str, now: float) -> None:
        """``key`` was used: it is the last to go when the cache is full."""
        with self._transaction() as db:
            db.execute("UPDATE content_cache SET used_at = ? WHERE key = ?", (now, key))

    def cache_forget(self, key: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM content_cache WHERE key = ?", (key,))

    def cache_evict(self, max_bytes: int) -> list[str]:
        """Delete the least recently used rows until their copies fit ``max_bytes``;
        returns the keys deleted (their copies are the caller's to remove)."""
        with self._transaction() as db:
            total = int(
                db.execute("SELECT COALESCE(SUM(bytes), 0) FROM content_cache").fetchone()[0]
            )
            if total <= max_bytes:
                return []
            evicted: list[str] = []
            rows = db.execute("SELECT key, bytes FROM content_cache ORDER BY used_at, key")
            for key, size in rows.fetchall():
                if total <= max_bytes:
                    break
                evicted.append(key)
                total -= size
            db.executemany("DELETE FROM content_cache WHERE key = ?", [(k,) for k in evicted])
        return evicted

    def cache_keys(self) -> set[str]:
        """Every key with a row (the daemon's sweep removes copies without one)."""
        return {row[0] for row in self._db.execute("SELECT key FROM content_cache")}

    def cache_size(self) -> tuple[int, int]:
        """(entries, bytes of their copies)."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM content_cache")
        count, size = row.fetchone()
        return int(count), int(size)

    def mark_failing(self, file_id: int, error: str) -> None:
        """any unfinished state -> failing, recording the reason people will read."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE files SET state = 'failing', error = ? WHERE id = ? "
                "AND state IN ('pending', 'queued', 'running', 'review')",
                (_text(error), file_id),
            )
            if cursor.rowcount != 1:
                raise LedgerError(f"file {file_id} cannot fail from its current state")

    def mark_done(self, file_id: int) -> FinishedJob | None:
        """written -> done; returns the job when this was its last open file."""
        return self._finish(file_id, "written", "done")

    def mark_failed(self, file_id: int) -> FinishedJob | None:
        """failing -> failed; returns the job when this was its last open file."""
        return self._finish(file_id, "failing", "failed")

    def _finish(self, file_id: int, from_state: str, to_state: str) -> FinishedJob | None:
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE files SET state = ?, finished_at = ? WHERE id = ? AND state = ?",
                (to_state, now, file_id, from_state),
            )
            if cursor.rowcount != 1:
                raise LedgerError(f"file {file_id} is not {from_state}")
            job_id = db.execute("SELECT job_id FROM files WHERE id = ?", (file_id,)).fetchone()[0]
            return self._close_job_if_finished(db, job_id, now)

    def _close_job_if_finished(
        self, db: sqlite3.Connection, job_id: int, now: float
    ) -> FinishedJob | None:
        # One index probe per unfinished state: the cost of finishing a file does not grow
        # with the size of its job (a COUNT over the job's files would, quadratically).
        open_file = db.execute(
            f"SELECT 1 FROM files WHERE job_id = ? AND state IN ({_UNFINISHED_SQL}) LIMIT 1",
            (job_id,),
        ).fetchone()
        if open_file:
            return None
        failed = db.execute(
            "SELECT COUNT(*) FROM files WHERE job_id = ? AND state = 'failed'", (job_id,)
        ).fetchone()[0]
        row = db.execute(
            "SELECT watch, name, total, created_at, cancelled FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row[4]:
            state = JobState.CANCELLED.value
        else:
            state = JobState.FAILED.value if failed else JobState.DONE.value
        db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, reported = 0 "
            "WHERE id = ? AND state = 'active'",
            (state, now, job_id),
        )
        return FinishedJob(
            id=job_id,
            watch=row[0],
            name=row[1],
            state=state,
            total=row[2],
            failed=failed,
            seconds=now - row[3],
        )

    def unreported_jobs(self, limit: int = 100) -> list[int]:
        """Ended jobs whose completion (manifest, hooks) was not handled yet, oldest first.

        A job ends in the same transaction as its last file; a crash before
        :meth:`mark_reported` leaves it here, so the daemon reports it after a restart
        (at least once).
        """
        rows = self._db.execute(
            "SELECT id FROM jobs WHERE reported = 0 AND state != 'active' ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [int(row[0]) for row in rows]

    def hook_delivery(self, job_id: int, hook: str, new_id: str) -> tuple[str, bool]:
        """The delivery of ``hook`` for the job's current report: its id (``new_id`` when
        recorded now) and whether it has finished already (then it must not run again)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO hook_deliveries (job_id, hook, delivery) VALUES (?, ?, ?)",
                (job_id, hook, new_id),
            )
            row = db.execute(
                "SELECT delivery, finished_at FROM hook_deliveries WHERE job_id = ? AND hook = ?",
                (job_id, hook),
            ).fetchone()
        return str(row[0]), row[1] is not None

    def finish_hook(self, job_id: int, hook: str, delivery: str) -> None:
        """That delivery has finished (delivered, failed for good, or the command ended)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE hook_deliveries SET finished_at = ? "
                "WHERE job_id = ? AND hook = ? AND delivery = ?",
                (self._clock(), job_id, hook, delivery),
            )

    def mark_reported(self, job_id: int) -> None:
        """The job's manifest is written and its hooks are handed over."""
        with self._transaction() as db:
            # not a job reopened by a retry meanwhile: its next end is reported anew
            db.execute("UPDATE jobs SET reported = 1 WHERE id = ? AND state != 'active'", (job_id,))

    def _transition(self, file_id: int, from_state: str, sql: str, params: tuple[Any, ...]) -> None:
        with self._transaction() as db:
            if db.execute(sql, params).rowcount != 1:
                raise LedgerError(f"file {file_id} is not {from_state}")

    # --- recovery and queries ---------------------------------------------------------------------

    def recover(self) -> Recovery:
        """After a crash: running files go back to the queue; report what needs finishing.

        Running files of a cancelled job do not run again: they become ``failing``
        ("cancelled") and are reported with the other failing files.
        """
        with self._transaction() as db:
            running = self._files_where(db, "f.state = 'running' AND j.cancelled = 0")
            db.execute(
                "UPDATE files SET state = 'failing', error = ? WHERE state = 'running' "
                "AND (SELECT cancelled FROM jobs WHERE id = files.job_id) = 1",
                (CANCELLED_REASON,),
            )
            # The daemon died, not (as far as we know) because of these files: refund the attempt.
            db.execute(
                "UPDATE files SET state = 'queued', attempts = MAX(attempts - 1, 0) "
                "WHERE state = 'running'"
            )
        return Recovery(
            requeued=tuple(
                replace(r, state="queued", attempts=max(r.attempts - 1, 0)) for r in running
            ),
            pending=tuple(self._files_where(self._db, "f.state = 'pending'")),
            written=tuple(self._files_where(self._db, "f.state = 'written'")),
            failing=tuple(self._files_where(self._db, "f.state = 'failing'")),
        )

    def stuck(self) -> Recovery:
        """Files whose side effects failed earlier (I/O errors) and wait to be finished."""
        return Recovery(
            requeued=(),
            pending=tuple(self._files_where(self._db, "f.state = 'pending'")),
            written=tuple(self._files_where(self._db, "f.state = 'written'")),
            failing=tuple(self._files_where(self._db, "f.state = 'failing'")),
        )

    @staticmethod
    def _files_where(
        db: sqlite3.Connection, condition: str, params: tuple[Any, ...] = ()
    ) -> list[FileRecord]:
        rows = db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id "
            f"WHERE {condition} ORDER BY f.id",
            params,
        ).fetchall()
        return [_file_record(row) for row in rows]

    def file(self, file_id: int) -> FileRecord:
        rows = self._files_where(self._db, "f.id = ?", (file_id,))
        if not rows:
            raise NotFound(f"no file {file_id}")
        return rows[0]

    def job_files(self, job_id: int) -> list[FileRecord]:
        return self._files_where(self._db, "f.job_id = ?", (job_id,))

    def job(self, job_id: int) -> JobSummary:
        """One job as ``watchd jobs`` lists it. Unknown id: NotFound."""
        return _job_summary(self._job_row(job_id), self._tallies([job_id]).get(job_id, {}))

    def _job_row(self, job_id: int, more: str = "") -> Sequence[Any]:
        """The job's ``_JOB_COLUMNS`` (then the columns ``more`` adds); NotFound if none."""
        sql = f"SELECT {_JOB_COLUMNS}{more} FROM jobs WHERE id = ?"
        row: Sequence[Any] | None = self._db.execute(sql, (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return row

    def unfinished(self) -> int:
        """Files not yet in a terminal state (from the counters, constant cost)."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(n), 0) FROM file_counts WHERE state NOT IN ('done', 'failed')"
        ).fetchone()
        return int(row[0])

    # --- the operators' view: counters, listing, control ------------------------------------------
    # Everything here costs the same however long the history is: counters come from the
    # trigger-kept tables, lists are keyset-paged through indexes, and per-job aggregates
    # only touch the files of the jobs returned.

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Files and jobs per watch and state, for ``watchd status``, stats and metrics.

        ``{"files": {watch: {state: n}}, "jobs": {watch: {state: n}}}``; states with
        nothing in them are absent. Read from the counter tables: never scans ``files``.
        """
        result: dict[str, dict[str, dict[str, int]]] = {"files": {}, "jobs": {}}
        for key, table in (("files", "file_counts"), ("jobs", "job_counts")):
            for watch, state, n in self._db.execute(
                f"SELECT watch, state, n FROM {table} WHERE n != 0 ORDER BY watch, state"
            ):
                result[key].setdefault(watch, {})[state] = int(n)
        return result

    def totals(self) -> dict[str, dict[str, int]]:
        """Lifetime totals per watch: files_done, files_failed, bytes_in, bytes_out.

        They only ever grow (Prometheus counters): pruning history or retrying a failed
        file does not take anything back, so a retried file that then succeeds is counted
        once as failed and once as done.
        """
        rows = self._db.execute(
            "SELECT watch, files_done, files_failed, bytes_in, bytes_out FROM totals ORDER BY watch"
        ).fetchall()
        return {
            row[0]: {
                "files_done": int(row[1]),
                "files_failed": int(row[2]),
                "bytes_in": int(row[3]),
                "bytes_out": int(row[4]),
            }
            for row in rows
        }

    def list_jobs(
        self,
        *,
        state: str | None = None,
        watch: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[JobSummary]:
        """Jobs newest first, optionally of one state and/or watch, ``limit`` at a time.

        Paged by key (``before_id``: the last id of the previous page), not by OFFSET,
        so page 1000 costs what page 1 costs and rows arriving meanwhile neither repeat
        nor skip anything. Each filter combination has an index that yields rows in id
        order. Raises ValueError for a state that jobs never have.
        """
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}; one of {', '.join(JOB_STATES)}")
        if limit <= 0:
            return []
        conditions: list[str] = []
        params: list[Any] = []
        if state is not None:
            conditions.append("state = ?")
            params.append(JobState(state).value)  # a JobState member binds as its value
        if watch is not None:
            conditions.append("watch = ?")
            params.append(watch)
        if before_id is not None:
            conditions.append("id < ?")
            params.append(before_id)
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs {where}ORDER BY id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        tallies = self._tallies([row[0] for row in rows])
        return [_job_summary(row, tallies.get(row[0], {})) for row in rows]

    def _tallies(self, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """done/failed counts of these jobs: one aggregate over the (job_id, state) index."""
        tallies: dict[int, dict[str, int]] = {}
        for start in range(0, len(job_ids), _IN_CHUNK):
            chunk = job_ids[start : start + _IN_CHUNK]
            for job_id, state, n in self._db.execute(
                f"SELECT job_id, state, COUNT(*) FROM files WHERE job_id IN ({_marks(len(chunk))}) "
                "AND state IN ('done', 'failed') GROUP BY job_id, state",
                chunk,
            ):
                tallies.setdefault(job_id, {})[state] = int(n)
        return tallies

    def job_detail(self, job_id: int, *, file_limit: int | None = None) -> JobDetail:
        """``watchd job ID``: the job, its counts by state, its options and its files.

        ``file_limit`` caps the file list (first files by id) for very large jobs; the
        counts always cover every file. Unknown id: NotFound.
        """
        row = self._job_row(job_id, ", options, manifest_path")
        by_state = {
            state: int(n)
            for state, n in self._db.execute(
                "SELECT state, COUNT(*) FROM files WHERE job_id = ? GROUP BY state", (job_id,)
            )
        }
        files = self._db.execute(
            f"SELECT {_FILE_DETAIL_COLUMNS} FROM files WHERE job_id = ? ORDER BY id LIMIT ?",
            (job_id, -1 if file_limit is None else max(file_limit, 0)),
        ).fetchall()
        summary = _job_summary(row, by_state)
        return JobDetail(
            **{field.name: getattr(summary, field.name) for field in fields(JobSummary)},
            queued=by_state.get(FileState.QUEUED.value, 0),
            running=by_state.get(FileState.RUNNING.value, 0),
            options=JobOptions.from_json(json.loads(row[10])),
            manifest=_maybe_path(row[11]),
            files=tuple(_file_detail(f) for f in files),
        )

    def job_last_file_id(self, job_id: int) -> int:
        """The highest file id of a job (0 for none): where :meth:`job_files_page` stops."""
        row = self._db.execute("SELECT MAX(id) FROM files WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0] or 0)

    def job_files_page(
        self, job_id: int, after_id: int, limit: int, upto_id: int
    ) -> list[FileDetail]:
        """The job's files with ids in (``after_id``, ``upto_id``], in id order, at most
        ``limit``: a big job's manifest is written a page per pass of the daemon's loop.

        A rowid range scan (a job's files were recorded together, so their ids are
        contiguous but for jobs recorded in between): each page costs its own rows, not
        a sort of the whole job.
        """
        rows = self._db.execute(
            f"SELECT {_FILE_DETAIL_COLUMNS} FROM files NOT INDEXED "
            "WHERE id > ? AND id <= ? AND job_id = ? ORDER BY id LIMIT ?",
            (after_id, upto_id, job_id, limit),
        ).fetchall()
        return [_file_detail(f) for f in rows]

    def cancel_job(self, job_id: int) -> list[FileRecord]:
        """Cancel an active job: its files not yet started fail with the reason "cancelled".

        One transaction marks the job cancelled and moves its ``pending``/``queued`` files
        (and those waiting in the review folder) to ``failing``; the daemon then moves those
        originals to the failed folder and calls ``mark_failed`` as for any failure. Running
        files are let finish (a worker cannot be interrupted cleanly); should one come back
        for a retry, ``requeue`` fails it instead. The job ends ``cancelled`` when its last
        file is terminal.

        Returns the files moved to ``failing`` (none when the job was already cancelled and
        only running files remain). Unknown job: NotFound; finished job: Conflict.
        """
        now = self._clock()
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}")
            if row[0] != JobState.ACTIVE.value:
                raise Conflict(
                    f"job {job_id} is already {row[0]}: only an active job can be cancelled"
                )
            waiting = "f.job_id = ? AND f.state IN ('pending', 'queued', 'review')"
            records = self._files_where(db, waiting, (job_id,))
            db.execute("UPDATE jobs SET cancelled = 1 WHERE id = ?", (job_id,))
            db.execute(
                "UPDATE files SET state = 'failing', error = ?, retry_at = NULL "
                "WHERE job_id = ? AND state IN ('pending', 'queued', 'review')",
                (CANCELLED_REASON, job_id),
            )
            self._close_job_if_finished(db, job_id, now)  # only a job without files closes here
        return [replace(r, state=FileState.FAILING.value, error=CANCELLED_REASON) for r in records]

    def retry_job(self, job_id: int) -> list[FileRecord]:
        """The failed files of a job, for the daemon to put back one by one.

        Reads only: each file needs fresh output/archive/failed names (the old output name
        may have been taken meanwhile), which the daemon chooses and passes, with the
        original's place in the failed folder, to ``requeue_failed``.
        Unknown job: NotFound; no failed file: Conflict.
        """
        if self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            raise NotFound(f"no job {job_id}")
        records = self._files_where(self._db, "f.job_id = ? AND f.state = 'failed'", (job_id,))
        if not records:
            raise Conflict(f"job {job_id} has no failed files to retry")
        return records

    def requeue_failed(
        self, file_id: int, source: Path, output: Path, archive: Path, failed: Path
    ) -> FileRecord:
        """failed -> pending with fresh paths and a clean slate; reopens its job.

        ``source`` is where the original waits now (its place in the failed folder), so
        that the usual pending -> spool move (``finish_pending``, also after a crash)
        starts from there; ``output``/``archive``/``failed`` are fresh names, because the
        old output name may have been taken by someone else meanwhile. Attempts, error,
        back-off and timings are reset; the job becomes ``active`` again (no finish time,
        no longer cancelled). The lifetime totals keep the failure.
        Unknown file: NotFound; a file that is not failed: Conflict.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE files SET state = 'pending', attempts = 0, error = NULL, "
                "retry_at = NULL, started_at = NULL, finished_at = NULL, output_bytes = NULL, "
                "quality = NULL, review_path = NULL, "
                "source_path = ?, output_path = ?, archive_path = ?, failed_path = ? "
                "WHERE id = ? AND state = 'failed'",
                (_blob(source), _blob(output), _blob(archive), _blob(failed), file_id),
            )
            if cursor.rowcount != 1:
                row = db.execute("SELECT state FROM files WHERE id = ?", (file_id,)).fetchone()
                if row is None:
                    raise NotFound(f"no file {file_id}")
                raise Conflict(f"file {file_id} is {row[0]}, not failed: nothing to retry")
            db.execute("DELETE FROM name_keys WHERE file_id = ?", (file_id,))
            _add_name_keys(db, file_id, (output, archive, failed))
            # its job ends again later: a new report, every hook runs again
            db.execute(
                "DELETE FROM hook_deliveries "
                "WHERE job_id = (SELECT job_id FROM files WHERE id = ?)",
                (file_id,),
            )
            db.execute(
                "UPDATE jobs SET state = 'active', finished_at = NULL, cancelled = 0, "
                "reported = 0 WHERE id = (SELECT job_id FROM files WHERE id = ?)",
                (file_id,),
            )
        return self.file(file_id)

    def prune(self, older_than: float, *, limit: int | None = None) -> int:
        """Forget finished jobs (and their files) that finished before ``older_than``.

        One transaction; ``limit`` caps how many jobs it deletes, oldest first, so a
        daemon can prune a long history in short steps between other work. The counters
        of files and jobs go down with the rows; the lifetime totals do not.
        Returns how many jobs were deleted.
        """
        with self._transaction() as db:
            job_ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE finished_at < ? AND state != 'active' "
                    "ORDER BY finished_at, id LIMIT ?",
                    (older_than, -1 if limit is None else max(limit, 0)),
                )
            ]
            # Files first: their counters find the watch through the job row.
            db.executemany("DELETE FROM files WHERE job_id = ?", [(i,) for i in job_ids])
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])
        return len(job_ids)

    def get_setting(self, key: str) -> str | None:
        """A persisted setting (``paused``, ...): survives restarts with the ledger."""
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        """Store a setting (one transaction; replaces an earlier value)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def unfinished_folder_roots(self) -> list[tuple[str, Path]]:
        """(watch, folder) of each unfinished folder job taken from an inbox: the folder
        it was dropped as (its first file's source path minus its relative path)."""
        rows = self._db.execute(
            "SELECT j.watch, j.options, f.source_path, f.rel_path FROM jobs j "
            "JOIN files f ON f.id = (SELECT MIN(id) FROM files WHERE job_id = j.id) "
            "WHERE j.state = 'active' AND j.kind = 'folder'"
        ).fetchall()
        roots = []
        for watch, options, source, rel in rows:
            opts = JobOptions.from_json(json.loads(options))
            if opts.intake != "inbox" or opts.in_place:
                continue
            root = _path(source)
            for _part in Path(os.fsdecode(rel)).parts:
                root = root.parent
            roots.append((str(watch), root))
        return roots


#: The first 16 bytes of every SQLite database file.
_SQLITE_HEADER = b"SQLite format 3\x00"
#: Tables every watchd ledger has had since its first schema.
_LEDGER_TABLES = frozenset({"jobs", "files"})
_RESTORE_HINT = (
    "restore the ledger from a backup, or move the file away to start an empty ledger "
    "(the history of every job is lost then; see docs/reliability.md)"
)


def _create(path: Path) -> None:
    """A new, empty ledger at ``path``, appearing there whole or not at all.

    Built at ``<path>.new`` with its complete schema, synced, then renamed: a crash
    during creation leaves at most that temporary file (replaced by the next start),
    never a half-made ledger that a later start could not tell from a damaged one.
    """
    temp = path.with_name(path.name + ".new")
    for leftover in (temp, temp.with_name(temp.name + "-journal")):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    try:
        connection = sqlite3.connect(temp, isolation_level=None)
        try:
            connection.create_function("watchd_name_key", 1, _sql_name_key, deterministic=True)
            ledger = Ledger(connection, time.time)
            ledger._migrate()
        finally:
            connection.close()
        fsync_file(temp)
        os.rename(temp, path)
        fsync_dir(path.parent)
    except (OSError, sqlite3.Error) as exc:
        raise LedgerError(f"cannot create the ledger {path}: {exc}") from None


def _check_file(path: Path) -> None:
    """Refuse, before SQLite touches it, a ledger file that is empty or not a database."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc.strerror or exc}") from None
    if not header:
        raise LedgerError(
            f"the ledger {path} is empty (0 bytes): it was truncated (a disk fault, a bad "
            f"restore?) and watchd will not start over on its own; {_RESTORE_HINT}"
        )
    if header != _SQLITE_HEADER:
        raise LedgerError(
            f"the ledger {path} is not a watchd ledger (not an SQLite database); {_RESTORE_HINT}"
        )


def _check_health(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse a database that is not a watchd ledger, or is damaged (``quick_check``)."""
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    tables = {
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if version < 1 or not tables >= _LEDGER_TABLES:
        raise LedgerError(
            f"the ledger {path} is not a watchd ledger (an SQLite database without "
            f"watchd's tables); {_RESTORE_HINT}"
        )
    problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise LedgerError(
            f"cannot use the ledger {path}: the database is damaged "
            f"({'; '.join(problems)[:300]}); {_RESTORE_HINT}"
        )


def _file_detail(row: Sequence[Any]) -> FileDetail:
    """A row of ``_FILE_DETAIL_COLUMNS`` as a :class:`FileDetail`."""
    return _from_row(FileDetail, row, _FILE_DETAIL_DECODE)


def _quality(figures: Sequence[Mapping[str, Any]] | None) -> str | None:
    return None if figures is None else json.dumps([dict(page) for page in figures])


def _sql_name_key(value: bytes | str | None) -> bytes | None:
    """``watchd_name_key(blob)`` in SQL (migration 4 fills name_keys with it)."""
    if value is None:
        return None
    return name_key(value.encode() if isinstance(value, str) else value)


def _add_name_keys(db: sqlite3.Connection, file_id: int, paths: Iterable[Path]) -> None:
    db.executemany(
        "INSERT INTO name_keys (key, file_id) VALUES (?, ?)",
        [(name_key(p), file_id) for p in paths],
    )


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements.

    A trigger's body holds semicolons of its own, so pieces between semicolons are joined
    until SQLite says the statement is complete. (``executescript`` would do the split,
    but it commits first, and a migration must be one transaction with its version.)
    """
    statements: list[str] = []
    buffer = ""
    for part in script.split(";"):
        buffer += part + ";"
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            if statement != ";":
                statements.append(statement)
            buffer = ""
    if buffer.strip(" \t\n;"):
        raise LedgerError(f"incomplete statement in a migration: {buffer.strip()[:60]}")
    return statements
