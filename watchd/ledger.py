"""The ledger: every SQL statement of watchd, and the daemon's memory across restarts.

Only the daemon's main process opens it (DESIGN.md invariant 5). Callers use
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
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from watchd.errors import LedgerError


class FileState(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WRITTEN = "written"
    FAILING = "failing"
    DONE = "done"
    FAILED = "failed"


TERMINAL = (FileState.DONE.value, FileState.FAILED.value)


class JobState(str, Enum):
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"  # finished, with at least one failed file


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


@dataclass(frozen=True)
class NewJob:
    watch: str
    name: str
    kind: str
    options: Mapping[str, Any]
    files: Sequence[NewFile]


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
    options: Mapping[str, Any]
    created_at: float


@dataclass(frozen=True)
class JobRecord:
    id: int
    watch: str
    name: str
    kind: str
    state: str
    total: int
    created_at: float
    finished_at: float | None


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
class Recovery:
    """What a crash left behind, for the daemon to finish."""

    requeued: tuple[FileRecord, ...]  # were running: redo into the same output path
    pending: tuple[FileRecord, ...]  # recorded, maybe not yet spooled
    written: tuple[FileRecord, ...]  # output complete, original not yet disposed of
    failing: tuple[FileRecord, ...]  # reason known, original not yet in failed/


# --- schema ---------------------------------------------------------------------------------------
# Append-only: a released migration is never edited; a new one is added at the end.
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
)

SCHEMA_VERSION = len(MIGRATIONS)

_FILE_COLUMNS = (
    "f.id, f.job_id, j.watch, f.rel_path, f.source_path, f.output_path, f.archive_path, "
    "f.failed_path, f.state, f.attempts, f.error, j.options, f.created_at"
)


def _blob(path: Path) -> bytes:
    return os.fsencode(path)


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


def _file_record(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        id=row[0],
        job_id=row[1],
        watch=row[2],
        rel=os.fsdecode(row[3]),
        source=_path(row[4]),
        output=_path(row[5]),
        archive=_path(row[6]),
        failed=_path(row[7]),
        state=row[8],
        attempts=row[9],
        error=row[10],
        options=json.loads(row[11]),
        created_at=row[12],
    )


class Ledger:
    """The SQLite ledger. Not thread-safe by design: one owner, the daemon's main thread."""

    def __init__(self, connection: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self._db = connection
        self._clock = clock

    # --- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, clock: Callable[[], float] = time.time) -> Ledger:
        """Open (creating and migrating as needed) the ledger at ``path``."""
        try:
            connection = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=10000")
            connection.execute("PRAGMA foreign_keys=ON")
            ledger = cls(connection, clock)
            ledger._migrate()
        except LedgerError:
            connection.close()  # a refused ledger (newer schema) must not stay open
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
                "INSERT INTO jobs (watch, name, kind, state, options, total, created_at) "
                "VALUES (?, ?, ?, 'active', ?, ?, ?)",
                (
                    job.watch,
                    _text(job.name),
                    job.kind,
                    json.dumps(dict(job.options)),
                    len(job.files),
                    now,
                ),
            )
            job_id = int(cursor.lastrowid or 0)
            file_ids: list[int] = []
            for item in job.files:
                cursor = db.execute(
                    "INSERT INTO files (job_id, rel_path, source_path, output_path, archive_path, "
                    "failed_path, state, size, mtime_ns, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
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
                    ),
                )
                file_ids.append(int(cursor.lastrowid or 0))
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
        return False

    def is_known_source(self, path: Path, size: int, mtime_ns: int) -> bool:
        """Whether this exact input (path, size, mtime) was already taken (``after = "keep"``)."""
        row = self._db.execute(
            "SELECT 1 FROM files WHERE source_path = ? AND size = ? AND mtime_ns = ? LIMIT 1",
            (_blob(path), size, mtime_ns),
        ).fetchone()
        return row is not None

    # --- transitions ------------------------------------------------------------------------------

    def mark_queued(self, file_ids: Iterable[int]) -> None:
        """pending -> queued, for inputs now in the spool (or kept in place)."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE files SET state = 'queued' WHERE id = ? AND state = 'pending'",
                [(file_id,) for file_id in file_ids],
            )

    def claim(self, limit: int) -> list[FileRecord]:
        """queued -> running for up to ``limit`` files, oldest first, skipping backed-off ones."""
        if limit <= 0:
            return []
        now = self._clock()
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id "
                "WHERE f.state = 'queued' AND (f.retry_at IS NULL OR f.retry_at <= ?) "
                "ORDER BY f.id LIMIT ?",
                (now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                cursor = db.execute(
                    "UPDATE files SET state = 'running', attempts = attempts + 1, "
                    "started_at = ?, retry_at = NULL WHERE id = ? AND state = 'queued'",
                    (now, row[0]),
                )
                if cursor.rowcount == 1:
                    claimed.append(_file_record(row))
        return [replace(r, state="running", attempts=r.attempts + 1) for r in claimed]

    def next_retry_at(self) -> float | None:
        """When the earliest backed-off queued file becomes claimable (None: none is waiting)."""
        row = self._db.execute(
            "SELECT MIN(retry_at) FROM files WHERE state = 'queued' AND retry_at IS NOT NULL"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def requeue(
        self, file_id: int, error: str, retry_at: float | None = None, *, refund: bool = False
    ) -> None:
        """running -> queued after a retryable failure; the error is kept for status.

        ``refund`` gives the attempt back when the file was not at fault (shutdown,
        a full disk), so only the file's own failures count towards ``max_attempts``.
        """
        self._transition(
            file_id,
            "running",
            "UPDATE files SET state = 'queued', error = ?, retry_at = ?, "
            "attempts = attempts - ? WHERE id = ? AND state = 'running'",
            (_text(error), retry_at, 1 if refund else 0, file_id),
        )

    def mark_written(self, file_id: int, output_bytes: int) -> None:
        """running -> written: the output is complete in the outbox."""
        self._transition(
            file_id,
            "running",
            "UPDATE files SET state = 'written', output_bytes = ?, error = NULL WHERE id = ? "
            "AND state = 'running'",
            (output_bytes, file_id),
        )

    def mark_failing(self, file_id: int, error: str) -> None:
        """any unfinished state -> failing, recording the reason people will read."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE files SET state = 'failing', error = ? WHERE id = ? "
                "AND state IN ('pending', 'queued', 'running')",
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
        open_files = db.execute(
            "SELECT COUNT(*) FROM files WHERE job_id = ? AND state NOT IN ('done', 'failed')",
            (job_id,),
        ).fetchone()[0]
        if open_files:
            return None
        failed = db.execute(
            "SELECT COUNT(*) FROM files WHERE job_id = ? AND state = 'failed'", (job_id,)
        ).fetchone()[0]
        state = JobState.FAILED.value if failed else JobState.DONE.value
        db.execute(
            "UPDATE jobs SET state = ?, finished_at = ? WHERE id = ? AND state = 'active'",
            (state, now, job_id),
        )
        row = db.execute(
            "SELECT watch, name, total, created_at FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return FinishedJob(
            id=job_id,
            watch=row[0],
            name=row[1],
            state=state,
            total=row[2],
            failed=failed,
            seconds=now - row[3],
        )

    def _transition(self, file_id: int, from_state: str, sql: str, params: tuple[Any, ...]) -> None:
        with self._transaction() as db:
            if db.execute(sql, params).rowcount != 1:
                raise LedgerError(f"file {file_id} is not {from_state}")

    # --- recovery and queries ---------------------------------------------------------------------

    def recover(self) -> Recovery:
        """After a crash: running files go back to the queue; report what needs finishing."""
        with self._transaction() as db:
            running = self._files_where(db, "f.state = 'running'")
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
    def _files_where(db: sqlite3.Connection, condition: str) -> list[FileRecord]:
        rows = db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id "
            f"WHERE {condition} ORDER BY f.id"
        ).fetchall()
        return [_file_record(row) for row in rows]

    def file(self, file_id: int) -> FileRecord:
        rows = self._files_where_params("f.id = ?", (file_id,))
        if not rows:
            raise LedgerError(f"no file {file_id}")
        return rows[0]

    def job_files(self, job_id: int) -> list[FileRecord]:
        return self._files_where_params("f.job_id = ?", (job_id,))

    def _files_where_params(self, condition: str, params: tuple[Any, ...]) -> list[FileRecord]:
        rows = self._db.execute(
            f"SELECT {_FILE_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id "
            f"WHERE {condition} ORDER BY f.id",
            params,
        ).fetchall()
        return [_file_record(row) for row in rows]

    def job(self, job_id: int) -> JobRecord:
        row = self._db.execute(
            "SELECT id, watch, name, kind, state, total, created_at, finished_at "
            "FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise LedgerError(f"no job {job_id}")
        return JobRecord(*row)

    def jobs(self, limit: int = 100) -> list[JobRecord]:
        rows = self._db.execute(
            "SELECT id, watch, name, kind, state, total, created_at, finished_at "
            "FROM jobs ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [JobRecord(*row) for row in rows]

    def file_counts(self) -> dict[str, int]:
        """Files by state (states with no files are absent)."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def unfinished(self) -> int:
        """Files not yet in a terminal state."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM files WHERE state NOT IN ('done', 'failed')"
        ).fetchone()
        return int(row[0])

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (they contain no semicolons inside literals)."""
    return [part.strip() for part in script.split(";") if part.strip()]
