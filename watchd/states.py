"""The states a file and a job can be in: the one list of them (docs/design.md, "States").

The ledger stores these strings; the stats file, the metrics, the control protocol
(``jobs --state``), the CLI and the HTTP views name the same ones. Everything that
lists states takes them from here, so a new state is added in one place.
"""

from __future__ import annotations

from enum import Enum


class FileState(str, Enum):
    """Where one input file is (docs/design.md, "States and transitions")."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    WRITTEN = "written"
    FAILING = "failing"
    DONE = "done"
    FAILED = "failed"


class JobState(str, Enum):
    """Where one job is: active until every file has reached a terminal state."""

    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"  # finished, with at least one failed file
    CANCELLED = "cancelled"  # finished after an operator cancelled it


#: Every file state, in the order of a file's life (the stats file lists them so).
FILE_STATES: tuple[str, ...] = tuple(s.value for s in FileState)
#: A file in one of these states has nothing more to happen to it.
TERMINAL: tuple[str, ...] = (FileState.DONE.value, FileState.FAILED.value)
#: File states with work still to do (recovery and "is the job finished?" look for these).
UNFINISHED: tuple[str, ...] = tuple(s for s in FILE_STATES if s not in TERMINAL)
#: Every job state (``watchd jobs --state``, the stats file).
JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
#: The states of a job that has ended (``watchd job --wait`` stops at one of them).
FINISHED_JOB_STATES: tuple[str, ...] = tuple(s for s in JOB_STATES if s != JobState.ACTIVE.value)
