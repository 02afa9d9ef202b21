"""Completion hooks: the ``on_complete`` command and the webhook, off the main thread.

Both run in their own thread with a bounded queue, so a slow command or an
unreachable receiver never holds up processing (docs/design.md, invariant 6): when a
queue is full, the new hook is refused with a warning and a counter (``deferred``);
:class:`watchd.completion.Completion` keeps its job unreported and hands the hook
over again on its periodic pass, so it waits in the ledger instead of being lost.

* :class:`CommandRunner` runs one command at a time, never through a shell, with the
  job's facts in ``WATCHD_*`` variables, its own process group (killed whole at the
  time limit) and the last few KiB of its output kept for the log.
* :class:`WebhookSender` POSTs the job's facts as JSON, signed with HMAC-SHA256 when a
  secret is configured, and retries connection errors, 5xx and 429 with exponential
  backoff and jitter; other 4xx answers are final. Deliveries waiting for a retry do
  not hold up newer ones (a schedule ordered by due time, not a FIFO).

Each hook calls its ``done`` callback once it has finished, whatever the outcome;
:class:`watchd.completion.Completion` marks the job reported only then. A hook cut
short by shutdown does not call back, so its job is reported again after a restart.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import os
import queue
import random
import selectors
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from watchd import __version__
from watchd.backoff import BACKOFF_BASE, BACKOFF_MAX, backoff_delay
from watchd.completion import HookCall

log = structlog.get_logger()

#: Hooks waiting per kind (command, webhook) before new ones are dropped.
QUEUE_LIMIT = 1000
#: Bytes of a command's output (stdout and stderr together) kept for the log: the last ones.
OUTPUT_LIMIT = 8192
#: After SIGTERM at the time limit, how long a command's process group has before SIGKILL.
KILL_GRACE = 5.0
#: Seconds each webhook request may take (connect, send, answer).
REQUEST_TIMEOUT = 10.0
#: Webhook attempts before a delivery is given up (the wait between them: watchd/backoff.py).
WEBHOOK_ATTEMPTS = 8
#: Bytes of a receiver's answer read (and logged in part on failure).
ANSWER_LIMIT = 65536
#: The event name in ``X-Watchd-Event`` and the body.
EVENT = "job.finished"

#: Inherited variables a hook must not see: systemd's, meant for the daemon alone
#: (a command that wrote to NOTIFY_SOCKET would speak for watchd), and our own.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_", "WATCHD_")


class HookCounters:
    """Outcomes of hooks since start, for the stats file and metrics (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {
            # "dropped" stays (always 0) for the stats file's schema version 1: a full
            # queue defers a hook now (docs/completion.md) instead of dropping it
            "command": {"ok": 0, "failed": 0, "dropped": 0, "deferred": 0},
            "webhook": {"delivered": 0, "failed": 0, "dropped": 0, "deferred": 0, "retried": 0},
        }

    def add(self, hook: str, outcome: str) -> None:
        with self._lock:
            self._counts[hook][outcome] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {hook: dict(outcomes) for hook, outcomes in self._counts.items()}


# --- the command --------------------------------------------------------------------------------


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment as a hook's base: without systemd's and watchd's own keys."""
    return {k: v for k, v in parent.items() if not k.startswith(_PRIVATE_ENV)}


def command_environment(base: Mapping[str, str], facts: Mapping[str, Any]) -> dict[str, str]:
    """``base`` plus the job's facts as ``WATCHD_*`` variables (see docs/completion.md)."""
    files = facts["files"]
    env = dict(base)
    env.update(
        WATCHD_EVENT=EVENT,
        WATCHD_JOB_ID=str(facts["job"]),
        WATCHD_JOB_NAME=str(facts["name"]),
        WATCHD_JOB_KIND=str(facts["kind"]),
        WATCHD_JOB_STATE=str(facts["state"]),
        WATCHD_WATCH=str(facts["watch"]),
        WATCHD_OUTBOX=str(facts["outbox"]),
        WATCHD_MANIFEST=str(facts["manifest"] or ""),
        WATCHD_FILES_TOTAL=str(files["total"]),
        WATCHD_FILES_DONE=str(files["done"]),
        WATCHD_FILES_FAILED=str(files["failed"]),
    )
    return env


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit status (None: it could not start), or killed."""

    returncode: int | None
    timed_out: bool
    output: bytes  # the last OUTPUT_LIMIT bytes of stdout and stderr, interleaved
    dropped: int  # output bytes left out before those
    seconds: float
    error: str | None = None  # why it could not start, or was cut short


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the command's whole process group, SIGKILL what is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _read_until(
    proc: subprocess.Popen[bytes], deadline: float, limit: int, clock: Callable[[], float]
) -> tuple[bytearray, int, bool]:
    """Read the command's output until EOF or ``deadline``; keep the last ``limit`` bytes.

    EOF means every process holding the pipe has closed it: a command that leaves a
    child behind with its output open is still running, as far as its time limit goes.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    tail = bytearray()
    dropped = 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                return tail, dropped, True
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return tail, dropped, False
            tail += chunk
            if len(tail) > limit:
                dropped += len(tail) - limit
                del tail[: len(tail) - limit]


def run_command(
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
    *,
    grace: float = KILL_GRACE,
    output_limit: int = OUTPUT_LIMIT,
    clock: Callable[[], float] = time.monotonic,
    started: Callable[[subprocess.Popen[bytes]], None] = lambda _proc: None,
    cwd: Path | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell) with ``env`` and a time limit; its process group dies with it.

    ``start_new_session`` puts the command and everything it starts in a group of
    their own, so the time limit kills all of them, never the daemon. ``started`` is
    told the process (for shutdown to cut it short).
    """
    begin = clock()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
            cwd=cwd,
        )
    except OSError as exc:  # missing, not executable, a folder, ...
        reason = f"cannot run {argv[0]}: {exc.strerror or exc}"
        return CommandResult(None, False, b"", 0, clock() - begin, reason)
    started(proc)
    with proc:
        deadline = begin + timeout
        tail, dropped, timed_out = _read_until(proc, deadline, output_limit, clock)
        if not timed_out:
            try:
                proc.wait(max(0.0, deadline - clock()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            _kill_group(proc, grace)
        return CommandResult(proc.returncode, timed_out, bytes(tail), dropped, clock() - begin)


@dataclass
class CommandJob:
    """One ``on_complete`` run waiting in :class:`CommandRunner`'s queue."""

    job: int
    argv: tuple[str, ...]
    env: dict[str, str]
    timeout: float
    done: Callable[[], None]


class CommandRunner:
    """Runs ``on_complete`` commands one at a time in a thread of its own."""

    def __init__(
        self,
        counters: HookCounters,
        *,
        limit: int = QUEUE_LIMIT,
        grace: float = KILL_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._queue: queue.Queue[CommandJob | None] = queue.Queue(limit)
        self._grace = grace
        self._clock = clock
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: subprocess.Popen[bytes] | None = None
        self._cut_short = False
        self._thread = threading.Thread(target=self._serve, name="watchd-command", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: CommandJob) -> bool:
        """Queue ``job``; False (nothing queued) when the queue is full or shutting down."""
        if self._stopping.is_set():
            return False
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            job = self._queue.get()
            if job is None or self._stopping.is_set():
                return
            try:
                result = run_command(
                    job.argv,
                    job.env,
                    job.timeout,
                    grace=self._grace,
                    clock=self._clock,
                    started=self._track,
                )
            except Exception as exc:  # a bug must cost this hook, never the thread
                log.exception("hook.command_failed", job=job.job, error=repr(exc))
                result = CommandResult(None, False, b"", 0, 0.0, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._running = None
                if self._cut_short:
                    return  # killed by shutdown: not reported, it runs again after a restart
            self._report(job, result)
            job.done()

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running = proc

    def _report(self, job: CommandJob, result: CommandResult) -> None:
        output = result.output.decode("utf-8", "replace").strip()
        facts = {
            "job": job.job,
            "argv": list(job.argv),
            "seconds": round(result.seconds, 3),
            "output": output,
        }
        if result.dropped:
            facts["output_dropped_bytes"] = result.dropped
        if result.error is not None:
            self._counters.add("command", "failed")
            log.error("hook.command_failed", error=result.error, **facts)
        elif result.timed_out:
            self._counters.add("command", "failed")
            log.warning(
                "hook.command_timeout",
                error=f"killed after its time limit of {job.timeout:g} s",
                exit_code=result.returncode,
                **facts,
            )
        elif result.returncode != 0:
            self._counters.add("command", "failed")
            log.warning("hook.command_failed", exit_code=result.returncode, **facts)
        else:
            self._counters.add("command", "ok")
            log.info("hook.command_done", exit_code=0, **facts)

    def close(self, deadline: float) -> int:
        """Start nothing new; let a running command go on until ``deadline`` (monotonic),
        then kill its group. Returns how many queued commands were left (they run again
        after a restart: their jobs stay unreported)."""
        left = self._queue.qsize()
        self._stopping.set()
        if self._thread.ident is None:  # never started (start-up failed)
            return left
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes an idle thread (a full queue: it is busy)
        self._thread.join(max(0.0, deadline - self._clock()))
        with self._lock:
            running = self._running
            if running is not None and running.returncode is None and self._thread.is_alive():
                self._cut_short = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.pid, signal.SIGKILL)
        self._thread.join(self._grace)
        return left


# --- the webhook --------------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """The ``X-Watchd-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True)
class Answer:
    """What one POST got: an HTTP status, or the error that kept it from getting one."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    body: bytes = b""

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Connection errors, timeouts, 5xx and 429 may heal; other answers will not."""
        return self.status is None or self.status >= 500 or self.status == 429


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
    """POST ``body`` to ``url`` with http.client: no redirects followed, no proxy, a timeout.

    A webhook that redirects is a misconfigured URL (following a 302 would turn the
    POST into a GET); HTTPS verifies the certificate against the system's CAs.
    """
    parts = urllib.parse.urlsplit(url)
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    all_headers = dict(headers)
    if parts.username is not None:  # https://user:password@host/...
        user, password = (urllib.parse.unquote(p or "") for p in (parts.username, parts.password))
        userinfo = f"{user}:{password}"
        all_headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = connection_type(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("POST", target, body=body, headers=all_headers)
        response = connection.getresponse()
        answer = response.read(ANSWER_LIMIT)
        retry_after = _retry_after(response.getheader("Retry-After"))
        return Answer(response.status, None, retry_after, answer)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the date form is not worth a parser here: ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


@dataclass(order=True)
class _Scheduled:
    due: float
    seq: int
    delivery: Delivery = field(compare=False)


@dataclass
class Delivery:
    """One webhook call for one job; its id stays the same across retries (for dedup)."""

    job: int
    url: str
    secret: str | None
    facts: Mapping[str, Any]
    done: Callable[[], None]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    attempts: int = 0

    def request(self, now_wall: float) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the next attempt, signed when a secret is set.

        The timestamp is inside the signed body (and repeated in a header), so a
        receiver that checks it against its clock refuses a replayed request.
        """
        timestamp = int(now_wall)
        payload = {"event": EVENT, "delivery": self.id, "timestamp": timestamp, **self.facts}
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"watchd/{__version__}",
            "X-Watchd-Event": EVENT,
            "X-Watchd-Delivery": self.id,
            "X-Watchd-Timestamp": str(timestamp),
            "X-Watchd-Attempt": str(self.attempts),
        }
        if self.secret is not None:
            headers["X-Watchd-Signature"] = sign(self.secret, body)
        return body, headers


@dataclass(frozen=True)
class WebhookPolicy:
    """How hard :class:`WebhookSender` tries: how many deliveries may wait, how many times
    each is attempted, the backoff between attempts and each request's time limit."""

    limit: int = QUEUE_LIMIT
    attempts: int = WEBHOOK_ATTEMPTS
    base_delay: float = BACKOFF_BASE
    max_delay: float = BACKOFF_MAX
    timeout: float = REQUEST_TIMEOUT


class WebhookSender:
    """Delivers webhooks from one thread; deliveries wait in a schedule ordered by due time."""

    def __init__(
        self,
        counters: HookCounters,
        policy: WebhookPolicy = WebhookPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        send: Callable[[str, bytes, Mapping[str, str], float], Answer] = post,
    ) -> None:
        self._counters = counters
        self._policy = policy
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self._send = send
        self._cond = threading.Condition()
        self._schedule: list[_Scheduled] = []
        self._seq = itertools.count()
        self._busy = False
        self._stop_at: float | None = None
        self._thread = threading.Thread(target=self._serve, name="watchd-webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        """Deliveries waiting or being sent."""
        with self._cond:
            return len(self._schedule) + self._busy

    def submit(self, delivery: Delivery) -> bool:
        """Schedule ``delivery`` now; False (dropped) when :data:`QUEUE_LIMIT` are waiting."""
        with self._cond:
            if self._stop_at is not None or len(self._schedule) + self._busy >= self._policy.limit:
                return False
            heapq.heappush(self._schedule, _Scheduled(self._clock(), next(self._seq), delivery))
            self._cond.notify()
        return True

    def _next(self) -> Delivery | None:
        """Wait for the next due delivery; None when shutting down and nothing more is due
        before the stop time."""
        with self._cond:
            while True:
                now = self._clock()
                first = self._schedule[0] if self._schedule else None
                if self._stop_at is not None and (
                    first is None or first.due > self._stop_at or now >= self._stop_at
                ):
                    return None
                if first is not None and first.due <= now:
                    heapq.heappop(self._schedule)
                    self._busy = True
                    return first.delivery
                wake_at = first.due if first is not None else None
                if self._stop_at is not None:
                    wake_at = min(wake_at or self._stop_at, self._stop_at)
                self._cond.wait(None if wake_at is None else max(0.0, wake_at - now))

    def _serve(self) -> None:
        while (delivery := self._next()) is not None:
            try:
                self._attempt(delivery)
            except Exception as exc:  # a bug (or an unusable URL) costs this delivery only
                self._counters.add("webhook", "failed")
                log.exception("hook.webhook_failed", job=delivery.job, error=repr(exc))
                delivery.done()
            finally:
                with self._cond:
                    self._busy = False

    def _attempt(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        body, headers = delivery.request(self._wall())
        answer = self._send(delivery.url, body, headers, self._policy.timeout)
        facts = {
            "job": delivery.job,
            "delivery": delivery.id,
            "url": _redacted(delivery.url),
            "attempt": delivery.attempts,
            "status": answer.status,
        }
        if answer.delivered:
            self._counters.add("webhook", "delivered")
            log.info("hook.webhook_delivered", **facts)
            delivery.done()
            return
        error = answer.error or f"HTTP {answer.status}: {_snippet(answer.body)}"
        if answer.retryable and delivery.attempts < self._policy.attempts:
            delay = backoff_delay(
                delivery.attempts, self._rng, self._policy.base_delay, self._policy.max_delay
            )
            if answer.retry_after is not None:
                delay = max(delay, min(answer.retry_after, self._policy.max_delay))
            self._counters.add("webhook", "retried")
            log.warning("hook.webhook_retry", error=error, retry_in=round(delay, 2), **facts)
            with self._cond:
                due = self._clock() + delay
                heapq.heappush(self._schedule, _Scheduled(due, next(self._seq), delivery))
            return
        self._counters.add("webhook", "failed")
        final = "not retried" if not answer.retryable else "gave up"
        log.error("hook.webhook_failed", error=error, outcome=final, **facts)
        delivery.done()

    def close(self, deadline: float) -> int:
        """Deliver what falls due before ``deadline`` (monotonic), then stop.

        Returns how many deliveries were left undelivered: their jobs stay unreported
        and are delivered again after a restart.
        """
        with self._cond:
            self._stop_at = deadline
            self._cond.notify_all()
        if self._thread.ident is None:  # never started (start-up failed)
            return self.pending
        self._thread.join(max(0.0, deadline - self._clock()))
        return self.pending


def _redacted(url: str) -> str:
    """The URL for the log, without a password in it."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return text + ("…" if len(body) > limit else "")


# --- both, per job --------------------------------------------------------------------------------


class Hooks:
    """The :class:`watchd.completion.HookSink` of the daemon: a command runner and a sender."""

    def __init__(
        self,
        base_env: Mapping[str, str],
        *,
        counters: HookCounters | None = None,
        runner: CommandRunner | None = None,
        sender: WebhookSender | None = None,
    ) -> None:
        self.counters = counters or HookCounters()
        self._base_env = child_environment(base_env)
        self.runner = runner or CommandRunner(self.counters)
        self.sender = sender or WebhookSender(self.counters)

    def start(self) -> None:
        self.runner.start()
        self.sender.start()

    def run(self, call: HookCall) -> int:
        """Queue the job's command and webhook; returns how many were queued. A full queue
        refuses one (a warning and the ``deferred`` counter): the caller keeps it and hands
        it over again later (``Completion``: the job stays unreported in the ledger)."""
        started = 0
        facts, hooks, done = call.facts, call.hooks, call.done
        job = int(facts["job"])
        delivery_id = call.delivery or uuid.uuid4().hex
        if hooks.on_complete:
            env = command_environment(self._base_env, facts)
            env["WATCHD_DELIVERY_ID"] = delivery_id
            command = CommandJob(job, hooks.on_complete, env, hooks.on_complete_timeout, done)
            if self.runner.submit(command):
                started += 1
            else:
                self._deferred("command", job, self.runner.pending)
        if hooks.webhook_url:
            delivery = Delivery(
                job, hooks.webhook_url, hooks.webhook_secret, facts, done, delivery_id
            )
            if self.sender.submit(delivery):
                started += 1
            else:
                self._deferred("webhook", job, self.sender.pending)
        return started

    def _deferred(self, hook: str, job: int, waiting: int) -> None:
        self.counters.add(hook, "deferred")
        log.warning(
            "hook.deferred",
            hook=hook,
            job=job,
            waiting=waiting,
            message=f"{waiting} {hook} hooks are already waiting; this one runs later",
        )

    def close(self, deadline: float) -> dict[str, int]:
        """Stop both within ``deadline`` (monotonic); what was left is redone after a restart."""
        return {"commands": self.runner.close(deadline), "webhooks": self.sender.close(deadline)}
