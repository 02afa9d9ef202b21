"""A rig for component tests of what the dispatcher decides, from intake to outputs.

The real parts the daemon uses — a real config file, the real ledger (SQLite on disk),
real intake into a real spool, the real dispatcher writing real outputs, notes and
archives — around a pool that answers each task at once (:class:`ImmediatePool`), the
one fake, at the slow edge.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from watchd.commands import submitted_batch
from watchd.config import WatchConfig, load_config
from watchd.content_cache import ContentCache
from watchd.dispatcher import Dispatcher, Pause
from watchd.errors import InputRejected
from watchd.finisher import Finisher
from watchd.intake import Intake
from watchd.ledger import Ledger
from watchd.pool.task import Result, Task
from watchd.stats import Activity


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class ImmediatePool:
    """Answers each task at once (:meth:`answer`) and keeps the tasks it was given.

    The default answer is a stand-in cutout made from the input's bytes, so equal inputs
    give equal outputs, as the model does.
    """

    alone_threads = 0
    size = 1
    capacity = 4
    file_timeout = 60.0

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def check(self) -> None:
        pass

    def answer(self, task: Task) -> Result:
        made = b"cutout of " + hashlib.sha256(task.data).hexdigest().encode()
        return Result(task.file_id, (made,), 32, 24, threads=1, worker_pid=7)

    def submit(self, task: Task) -> Future[Result]:
        self.tasks.append(task)
        future: Future[Result] = Future()
        try:
            future.set_result(self.answer(task))
        except InputRejected as exc:
            future.set_exception(exc)
        return future


@dataclass
class DispatchRig:
    root: Path
    watch: WatchConfig
    ledger: Ledger
    intake: Intake
    dispatcher: Dispatcher
    pool: ImmediatePool
    cache: ContentCache | None
    wakes: list[str] = field(default_factory=list)

    def run(self, path: Path) -> int:
        """Submit a file or folder (moved into the spool, as from an inbox), run it to its end."""
        job = self.intake.accept(submitted_batch(self.watch.name, [path], None), self.watch, "move")
        assert job is not None
        self.dispatcher.fill()
        self.dispatcher.collect()
        return job


def make_dispatch_rig(
    root: Path, pool: ImmediatePool, watch_lines: str = "", *, cache: bool = True
) -> DispatchRig:
    """A watch ``photos`` under ``root`` (``watch_lines``: more of its keys, as TOML)."""
    config_path = root / "watchd.toml"
    config_path.write_text(
        '[daemon]\nstate_dir = "state"\n\n[[watch]]\nname = "photos"\ninbox = "inbox"\n'
        f'outbox = "outbox"\narchive = "archive"\nfailed = "failed"\n{watch_lines}\n'
    )
    watch = load_config(config_path).watches[0]
    for folder in ("inbox", "outbox", "archive", "failed", "state/spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    clock = Clock()
    ledger = Ledger.open(root / "state" / "ledger.sqlite3", clock=clock)
    content = ContentCache(ledger, root / "state" / "cache", max_bytes=1 << 20) if cache else None
    wakes: list[str] = []
    activity = Activity()
    finisher = Finisher(
        ledger,
        root / "state" / "spool",
        activity=activity,
        clock=clock,
        monotonic=clock,
        job_ended=lambda _job: None,
    )
    dispatcher = Dispatcher(
        ledger,
        pool,  # type: ignore[arg-type]
        finisher,
        Pause(ledger),
        max_attempts=3,
        wake=lambda: wakes.append("wake"),
        clock=clock,
        rng=random.Random(0),
        activity=activity,
        monotonic=clock,
        cache=content,
    )
    intake = Intake(ledger, root / "state" / "spool", finisher)
    return DispatchRig(root, watch, ledger, intake, dispatcher, pool, content, wakes)
