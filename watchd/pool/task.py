"""What a worker gets and gives back: a file's bytes and options in, encoded outputs out.

A worker never sees the ledger or the users' folders (docs/design.md, invariant 5):
both types carry bytes and options only, so they travel to a process or a cluster.
Their byte fields are left out of ``repr``: a pool or a Dask worker that logs a task
or a result (a failed compute does) must not build a string of megabytes of image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from watchd.config import OutputConfig
from watchd.quality import Figures


@dataclass(frozen=True)
class Task:
    """One file's work: the bytes and the options it was accepted with."""

    file_id: int
    data: bytes = field(repr=False)
    model: str
    output: OutputConfig = field(default_factory=OutputConfig)
    #: onnxruntime threads for this file: 0 is the worker's own count; more when the file is
    #: alone in the pool and may use all of it (the pool's ``alone_threads``).
    threads: int = 0
    #: the bytes of ``output.background_image``, read by the daemon (workers never open
    #: user paths: docs/design.md, invariant 5; watchd/product_input.py)
    background_image: bytes | None = field(default=None, repr=False)
    #: ``review_if`` conditions (watchd/quality.py): a page that trips one gets a sheet
    review_if: tuple[str, ...] = ()
    #: a hand-edited mask (PNG bytes, watchd/masks.py): used instead of the model's
    mask: bytes | None = field(default=None, repr=False)
    mask_name: str = ""


@dataclass(frozen=True)
class Result:
    """The encoded outputs of one input: one per page (a single-page input has one).

    ``width``/``height`` are those of the first page. The daemon names the pages with
    :func:`watchd.files.page_paths`.
    """

    file_id: int
    pages: tuple[bytes, ...] = field(repr=False)
    width: int
    height: int
    timings: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1  # the onnxruntime threads its inference ran on
    worker_pid: int = 0  # the worker process that made it (0: not known), for the log
    #: the quality figures of each page (watchd/quality.py), of the mask before any crop
    quality: tuple[Figures, ...] = ()
    #: what tripped ``review_if`` (empty: the output goes to the outbox), and the
    #: side-by-side sheet of the first page that did (watchd/imaging/review_sheet.py)
    review: tuple[str, ...] = ()
    sheet: bytes | None = field(default=None, repr=False)

    @property
    def data(self) -> bytes:
        """The output of a single-page input (the first page of a multi-page one)."""
        return self.pages[0]

    @property
    def output_bytes(self) -> int:
        return sum(len(page) for page in self.pages)
