"""What a worker gets and gives back: a file's bytes and options in, encoded outputs out.

A worker never sees the ledger or the users' folders (docs/design.md, invariant 5):
both types carry bytes and options only, so they travel to a process or a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from watchd.config import OutputConfig


@dataclass(frozen=True)
class Task:
    """One file's work: the bytes and the options it was accepted with."""

    file_id: int
    data: bytes
    model: str
    output: OutputConfig = field(default_factory=OutputConfig)
    #: onnxruntime threads for this file: 0 is the worker's own count; more when the file is
    #: alone in the pool and may use all of it (the pool's ``alone_threads``).
    threads: int = 0
    #: a hand-edited mask (PNG bytes, watchd/masks.py): used instead of the model's
    mask: bytes | None = None
    mask_name: str = ""


@dataclass(frozen=True)
class Result:
    """The encoded outputs of one input: one per page (a single-page input has one).

    ``width``/``height`` are those of the first page. The daemon names the pages with
    :func:`watchd.files.page_paths`.
    """

    file_id: int
    pages: tuple[bytes, ...]
    width: int
    height: int
    timings: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1  # the onnxruntime threads its inference ran on
    worker_pid: int = 0  # the worker process that made it (0: not known), for the log

    @property
    def data(self) -> bytes:
        """The output of a single-page input (the first page of a multi-page one)."""
        return self.pages[0]

    @property
    def output_bytes(self) -> int:
        return sum(len(page) for page in self.pages)
