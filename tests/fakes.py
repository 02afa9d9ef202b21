"""A fake worker pool: the :class:`~watchd.pool.protocol.Pool` protocol without workers.

The one fake at the slow edge (a real pool spawns processes and loads the model): the
dispatcher, the finisher and intake run against it with a real SQLite ledger and real
files, so their rules are tested in milliseconds. A test decides each file's fate by
hand (:meth:`FakePool.finish`, :meth:`FakePool.reject`, :meth:`FakePool.lose`,
:meth:`FakePool.break_pool`), as a worker or a broken pool would.
"""

from __future__ import annotations

from concurrent.futures import Future

from watchd.errors import AttemptFailed, InputRejected, ModelError, PoolBroken
from watchd.pool.protocol import ModelCheck, PoolStatus
from watchd.pool.task import Result, Task


class FakePool:
    """Holds every submitted task until the test says how it ends."""

    def __init__(
        self, capacity: int = 4, *, alone_threads: int = 0, models: tuple[str, ...] = ("u2netp",)
    ) -> None:
        self.capacity = capacity
        self.alone_threads = alone_threads
        self.models = models
        self.tasks: dict[int, Task] = {}  # file id -> the task, while its future is open
        self.futures: dict[int, Future[Result]] = {}
        self.submitted: list[Task] = []  # every task ever submitted, in order
        self.checks = 0
        self.closed: bool | None = None  # None: open; else the ``cancel`` it was closed with

    # --- the protocol ---------------------------------------------------------------------------

    def submit(self, task: Task) -> Future[Result]:
        if self.closed is not None:
            raise RuntimeError("the fake pool is closed")
        future: Future[Result] = Future()
        self.tasks[task.file_id] = task
        self.futures[task.file_id] = future
        self.submitted.append(task)
        return future

    def check(self) -> None:
        self.checks += 1

    def check_model(self, model: str, timeout: float) -> ModelCheck:
        self.verify_model(model)
        return ModelCheck("CPUExecutionProvider")

    def verify_model(self, model: str) -> None:
        if model not in self.models:
            raise ModelError(f"model {model!r} is not installed (fake pool)")

    def status(self) -> PoolStatus:
        running = sum(not f.done() for f in self.futures.values())
        return PoolStatus(backend="fake", workers=1, threads=1, busy=min(1, running))

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        self.closed = cancel

    # --- a test decides ---------------------------------------------------------------------------

    def finish(self, file_id: int, *pages: bytes, width: int = 8, height: int = 6) -> Result:
        """The worker made ``pages`` (default: one small output) from the file."""
        result = Result(
            file_id=file_id, pages=pages or (b"\x89PNG fake output",), width=width, height=height
        )
        self._end(file_id).set_result(result)
        return result

    def reject(self, file_id: int, reason: str = "not an image watchd can read") -> None:
        self._end(file_id).set_exception(InputRejected(reason))

    def lose(self, file_id: int, reason: str = "the worker process died (signal 9)") -> None:
        self._end(file_id).set_exception(AttemptFailed(reason))

    def break_pool(self) -> None:
        """Every open file comes back as lost by a broken pool (not run by a worker)."""
        for file_id in list(self.futures):
            if not self.futures[file_id].done():
                self._end(file_id).set_exception(PoolBroken("the worker pool broke"))

    def open_ids(self) -> list[int]:
        return sorted(i for i, f in self.futures.items() if not f.done())

    def _end(self, file_id: int) -> Future[Result]:
        self.tasks.pop(file_id)
        return self.futures[file_id]
