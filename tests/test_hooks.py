"""Completion hooks against the real thing: scripts run as processes, webhooks posted to a
real HTTP server on 127.0.0.1 that checks the signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support import Received, WebhookReceiver, wait_for
from watchd.completion import HookCall
from watchd.config import HooksConfig
from watchd.hooks import (
    CommandJob,
    CommandRunner,
    Delivery,
    HookCounters,
    Hooks,
    WebhookPolicy,
    WebhookSender,
    child_environment,
    command_environment,
    run_command,
    sign,
)

ROOT = Path(__file__).resolve().parent.parent
POLICY_FIELDS = {f.name for f in fields(WebhookPolicy)}
SECRET = "s3cret with spaces ünd ümlauts"

FACTS: dict[str, Any] = {
    "job": 42,
    "watch": "photos",
    "name": "shoot",
    "kind": "folder",
    "state": "failed",
    "cancelled": False,
    "created": {"iso": "2023-11-14T22:13:20.000Z", "epoch": 1_700_000_000.0},
    "finished": {"iso": "2023-11-14T22:13:32.500Z", "epoch": 1_700_000_012.5},
    "files": {"total": 3, "done": 2, "failed": 1},
    "outbox": "/srv/out",
    "manifest": "/srv/out/shoot.manifest.json",
}


# --- a real receiver ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


class Done:
    """A thread-safe ``done`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1


@pytest.fixture
def sender_factory() -> Iterator[Callable[..., WebhookSender]]:
    made: list[WebhookSender] = []

    def make(counters: HookCounters | None = None, **kwargs: Any) -> WebhookSender:
        """``kwargs``: WebhookPolicy's fields (fast ones by default) and WebhookSender's."""
        policy = {name: kwargs.pop(name) for name in list(kwargs) if name in POLICY_FIELDS}
        fast = WebhookPolicy(**{"base_delay": 0.01, "max_delay": 0.05, "timeout": 5.0, **policy})
        kwargs.setdefault("rng", random.Random(1))
        sender = WebhookSender(counters or HookCounters(), fast, **kwargs)
        sender.start()
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close(time.monotonic())


def verify(secret: str, request: Received) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request.headers["X-Watchd-Signature"])


# --- the webhook ----------------------------------------------------------------------------------


def test_webhook_posts_signed_json_the_receiver_can_verify(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    counters = HookCounters()
    sender = sender_factory(counters=counters, wall=lambda: 1_700_000_100.7)
    done = Done()
    assert sender.submit(Delivery(42, receiver.url, SECRET, FACTS, done))

    wait_for(lambda: done.calls == 1, 10, "delivered")
    [request] = receiver.requests
    assert verify(SECRET, request)
    assert not verify("wrong secret", request)
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Watchd-Event"] == "job.finished"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Watchd-Delivery"])
    assert headers["X-Watchd-Timestamp"] == "1700000100"
    assert headers["User-Agent"].startswith("watchd/")
    body = json.loads(request.body)
    assert body == {
        "event": "job.finished",
        "delivery": headers["X-Watchd-Delivery"],
        "timestamp": 1_700_000_100,
        **FACTS,
    }
    assert counters.snapshot()["webhook"] == {
        "delivered": 1,
        "failed": 0,
        "dropped": 0,
        "deferred": 0,
        "retried": 0,
    }


def test_without_a_secret_there_is_no_signature_header(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    done = Done()
    sender_factory().submit(Delivery(1, receiver.url, None, FACTS, done))
    wait_for(lambda: done.calls == 1, 10, "delivered")
    assert "X-Watchd-Signature" not in receiver.requests[0].headers


def test_500_twice_then_200_is_retried_with_the_same_delivery_id(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    receiver.answer = lambda _r: 500 if len(receiver.requests) <= 2 else 200
    counters = HookCounters()
    done = Done()
    with capture_logs() as logs:
        sender_factory(counters=counters).submit(Delivery(7, receiver.url, SECRET, FACTS, done))
        wait_for(lambda: done.calls == 1, 10, "delivered after two 500s")

    assert len(receiver.requests) == 3
    assert len({r.headers["X-Watchd-Delivery"] for r in receiver.requests}) == 1
    assert [r.headers["X-Watchd-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert all(verify(SECRET, r) for r in receiver.requests)
    assert counters.snapshot()["webhook"]["retried"] == 2
    assert counters.snapshot()["webhook"]["delivered"] == 1
    retries = [e for e in logs if e["event"] == "hook.webhook_retry"]
    assert [e["status"] for e in retries] == [500, 500]
    assert "HTTP 500" in retries[0]["error"]
    assert done.calls == 1


def test_429_is_retried_and_other_4xx_are_final(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    receiver.answer = lambda r: 429 if json.loads(r.body)["job"] == 1 else 403
    counters = HookCounters()
    sender = sender_factory(counters=counters, attempts=3)
    limited, forbidden = Done(), Done()
    with capture_logs() as logs:
        sender.submit(Delivery(1, receiver.url, SECRET, FACTS | {"job": 1}, limited))
        sender.submit(Delivery(2, receiver.url, SECRET, FACTS | {"job": 2}, forbidden))
        wait_for(lambda: limited.calls == 1 and forbidden.calls == 1, 10, "both given up")

    jobs = [b["job"] for b in [r.json() for r in receiver.requests]]
    assert jobs.count(1) == 3  # every attempt
    assert jobs.count(2) == 1  # never retried
    failed = {e["job"]: e for e in logs if e["event"] == "hook.webhook_failed"}
    assert failed[1]["outcome"] == "gave up" and failed[1]["status"] == 429
    assert failed[2]["outcome"] == "not retried" and failed[2]["status"] == 403
    assert counters.snapshot()["webhook"]["failed"] == 2


def test_a_delivery_waiting_to_retry_does_not_hold_up_newer_ones(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    receiver.answer = lambda r: 503 if json.loads(r.body)["job"] == 1 else 200
    sender = sender_factory(base_delay=30.0, max_delay=30.0)
    stuck, fresh = Done(), Done()
    sender.submit(Delivery(1, receiver.url, None, FACTS | {"job": 1}, stuck))
    wait_for(lambda: receiver.requests, 10, "the first attempt")
    sender.submit(Delivery(2, receiver.url, None, FACTS | {"job": 2}, fresh))
    wait_for(lambda: fresh.calls == 1, 10, "the second delivered while the first waits")
    assert stuck.calls == 0
    assert sender.pending == 1


def test_receiver_down_the_queue_is_bounded_and_submit_never_blocks(
    sender_factory: Callable[..., WebhookSender],
) -> None:
    counters = HookCounters()
    sender = sender_factory(counters=counters, limit=3, base_delay=60.0, max_delay=60.0)
    url = closed_port_url()
    hooks = Hooks({}, counters=counters, sender=sender, runner=CommandRunner(counters))
    config = HooksConfig(webhook_url=url, webhook_secret=SECRET)
    done = Done()

    with capture_logs() as logs:
        started = time.monotonic()
        accepted = [hooks.run(HookCall(FACTS | {"job": n}, config, done)) for n in range(10)]
        elapsed = time.monotonic() - started

    assert (
        accepted == [1, 1, 1] + [0] * 7
    )  # a deferred hook is not waited for (Completion keeps it)
    assert elapsed < 1.0  # nothing waited for the dead receiver
    assert counters.snapshot()["webhook"]["deferred"] == 7
    dropped = [e for e in logs if e["event"] == "hook.deferred"]
    assert len(dropped) == 7 and dropped[0]["hook"] == "webhook" and dropped[0]["waiting"] == 3
    wait_for(lambda: counters.snapshot()["webhook"]["retried"] == 3, 10, "three refused attempts")
    assert done.calls == 0
    assert sender.close(time.monotonic()) == 3  # left for the next start: jobs stay unreported
    assert done.calls == 0


def test_connection_refused_is_retried_then_given_up(
    sender_factory: Callable[..., WebhookSender],
) -> None:
    counters = HookCounters()
    done = Done()
    with capture_logs() as logs:
        sender_factory(counters=counters, attempts=3).submit(
            Delivery(5, closed_port_url(), None, FACTS, done)
        )
        wait_for(lambda: done.calls == 1, 10, "given up")
    assert counters.snapshot()["webhook"] == {
        "delivered": 0,
        "failed": 1,
        "dropped": 0,
        "deferred": 0,
        "retried": 2,
    }
    [failed] = [e for e in logs if e["event"] == "hook.webhook_failed"]
    assert failed["status"] is None and "ConnectionRefused" in failed["error"]


def test_shutdown_delivers_what_is_due_within_the_grace(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    sender = sender_factory()
    done = Done()
    for n in range(5):
        sender.submit(Delivery(n, receiver.url, SECRET, FACTS | {"job": n}, done))
    assert sender.close(time.monotonic() + 10) == 0
    assert done.calls == 5
    assert not sender.submit(Delivery(9, receiver.url, SECRET, FACTS, done))  # closed


def test_sign_is_hmac_sha256_of_the_body() -> None:
    body = b'{"job":1}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_the_receiver_snippet_in_the_docs_verifies_a_real_delivery(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    """docs/completion.md's verification code, run against what watchd really sent."""
    text = (ROOT / "docs" / "completion.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/completion.md", "exec"), namespace)
    done = Done()
    sender_factory().submit(Delivery(42, receiver.url, SECRET, FACTS, done))
    wait_for(lambda: done.calls == 1, 10, "delivered")
    [request] = receiver.requests
    headers = {k.lower(): v for k, v in request.headers.items()}
    now = json.loads(request.body)["timestamp"]

    assert namespace["verify"](SECRET.encode(), headers, request.body, now=now + 10)["job"] == 42
    with pytest.raises(ValueError, match="signature"):
        namespace["verify"](b"other", headers, request.body, now=now)
    with pytest.raises(ValueError, match="old"):
        namespace["verify"](SECRET.encode(), headers, request.body, now=now + 3600)
    tampered = request.body.replace(b'"failed"', b'"done"')
    with pytest.raises(ValueError, match="signature"):
        namespace["verify"](SECRET.encode(), headers, tampered, now=now)


# --- the command ----------------------------------------------------------------------------------


def script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script (a real program for argv[0], not a shell line)."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def test_command_sees_the_job_in_its_environment_and_arguments_literally(tmp_path: Path) -> None:
    record = tmp_path / "seen.json"
    program = script(
        tmp_path,
        "record.py",
        "import json, os, sys\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('WATCHD_')}\n"
        "json.dump({'argv': sys.argv[1:], 'env': env, 'keep': os.environ.get('KEEP'),\n"
        "           'notify': os.environ.get('NOTIFY_SOCKET')}, open(sys.argv[1], 'w'))\n"
        "print('recorded')\n",
    )
    hostile = ["a; touch pwned", "$(touch pwned2)", "`touch pwned3`", "*", "> x"]
    parent = {"KEEP": "yes", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHD_STALE": "1"}
    env = command_environment(child_environment(parent), FACTS)

    result = run_command([str(program), str(record), *hostile], env, timeout=30, cwd=tmp_path)

    assert (result.returncode, result.timed_out, result.error) == (0, False, None)
    assert result.output == b"recorded\n"
    seen = json.loads(record.read_text())
    assert seen["argv"] == [str(record), *hostile]
    assert not list(tmp_path.glob("pwned*")) and not (tmp_path / "x").exists()
    assert seen["keep"] == "yes" and seen["notify"] is None
    assert seen["env"] == {
        "WATCHD_EVENT": "job.finished",
        "WATCHD_JOB_ID": "42",
        "WATCHD_JOB_NAME": "shoot",
        "WATCHD_JOB_KIND": "folder",
        "WATCHD_JOB_STATE": "failed",
        "WATCHD_WATCH": "photos",
        "WATCHD_OUTBOX": "/srv/out",
        "WATCHD_MANIFEST": "/srv/out/shoot.manifest.json",
        "WATCHD_FILES_TOTAL": "3",
        "WATCHD_FILES_DONE": "2",
        "WATCHD_FILES_FAILED": "1",
    }


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for a reaper counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    program = script(
        tmp_path,
        "hang.py",
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"  # grandchild, same group
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n",
    )
    started = time.monotonic()
    result = run_command([str(program)], {}, timeout=2.0, grace=1.0)

    assert result.timed_out
    assert time.monotonic() - started < 15
    assert result.output == b"started\n"
    pid_list = [int(p) for p in pids.read_text().split()]
    wait_for(lambda: not any(alive(p) for p in pid_list), 10, f"processes {pid_list} gone")


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        "stubborn.py",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\ntime.sleep(300)\n",
    )
    result = run_command([str(program)], {}, timeout=1.0, grace=0.5)
    assert result.timed_out and result.returncode == -9


def test_output_is_bounded_to_its_tail(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        "chatty.py",
        "import sys\nsys.stdout.write('x' * 1_000_000)\nsys.stderr.write('the end')\n",
    )
    result = run_command([str(program)], {}, timeout=30, output_limit=1000)
    assert result.returncode == 0
    assert len(result.output) == 1000 and result.output.endswith(b"the end")
    assert result.dropped == 1_000_007 - 1000


def run_hooked(tmp_path: Path, argv: list[str], timeout: float = 30) -> tuple[list[Any], Done]:
    """One command through the real runner (its thread), with the log captured."""
    counters = HookCounters()
    runner = CommandRunner(counters)
    runner.start()
    done = Done()
    with capture_logs() as logs:
        assert runner.submit(CommandJob(42, tuple(argv), {}, timeout, done))
        wait_for(lambda: done.calls == 1, 30, "the command finished")
    runner.close(time.monotonic())
    return logs, done


def test_nonzero_exit_is_a_warning_with_the_output(tmp_path: Path) -> None:
    program = script(tmp_path, "fail.py", "import sys\nprint('disk full')\nsys.exit(3)\n")
    logs, _done = run_hooked(tmp_path, [str(program)])
    [event] = [e for e in logs if e["event"] == "hook.command_failed"]
    assert event["log_level"] == "warning"
    assert (event["exit_code"], event["output"], event["job"]) == (3, "disk full", 42)


def test_a_missing_program_gives_a_clear_log_line(tmp_path: Path) -> None:
    logs, done = run_hooked(tmp_path, [str(tmp_path / "no-such-program"), "x"])
    [event] = [e for e in logs if e["event"] == "hook.command_failed"]
    assert event["log_level"] == "error"
    assert event["error"] == f"cannot run {tmp_path / 'no-such-program'}: No such file or directory"
    assert done.calls == 1  # finished (failed): its job can be reported


def test_a_timeout_is_logged_and_the_job_still_reported(tmp_path: Path) -> None:
    program = script(tmp_path, "slow.py", "import time\ntime.sleep(300)\n")
    logs, done = run_hooked(tmp_path, [str(program)], timeout=1)
    [event] = [e for e in logs if e["event"] == "hook.command_timeout"]
    assert "time limit of 1 s" in event["error"]
    assert done.calls == 1


def test_commands_run_one_at_a_time_and_a_full_queue_drops(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    log = tmp_path / "order"
    program = script(
        tmp_path,
        "gated.py",
        "import os, sys, time\n"
        f"open({str(log)!r}, 'a').write(os.environ['WATCHD_JOB_ID'] + ' start\\n')\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        f"open({str(log)!r}, 'a').write(os.environ['WATCHD_JOB_ID'] + ' end\\n')\n",
    )
    counters = HookCounters()
    runner = CommandRunner(counters, limit=2)
    hooks = Hooks({}, counters=counters, runner=runner)
    hooks.start()
    config = HooksConfig(on_complete=(str(program),))
    done = Done()
    assert hooks.run(HookCall(FACTS | {"job": 1}, config, done)) == 1
    wait_for(log.exists, 30, "the first command running")
    started = [hooks.run(HookCall(FACTS | {"job": n}, config, done)) for n in (2, 3, 4)]
    assert started == [1, 1, 0]  # two wait, the third is deferred
    assert counters.snapshot()["command"]["deferred"] == 1
    gate.touch()
    wait_for(lambda: done.calls == 3, 30, "all three ran")
    lines = log.read_text().split()
    assert lines == ["1", "start", "1", "end", "2", "start", "2", "end", "3", "start", "3", "end"]
    assert counters.snapshot()["command"] == {"ok": 3, "failed": 0, "dropped": 0, "deferred": 1}
    hooks.close(time.monotonic())


def test_shutdown_kills_a_running_command_without_reporting_it(tmp_path: Path) -> None:
    program = script(tmp_path, "long.py", "import time\nprint('go', flush=True)\ntime.sleep(300)\n")
    runner = CommandRunner(HookCounters(), grace=5)
    runner.start()
    done = Done()
    runner.submit(CommandJob(1, (str(program),), {}, 600, done))
    runner.submit(CommandJob(2, (str(program),), {}, 600, done))
    wait_for(lambda: runner.pending == 1, 30, "the first command taken")
    started = time.monotonic()
    assert runner.close(time.monotonic() + 0.5) == 1  # one never started
    assert time.monotonic() - started < 10
    assert done.calls == 0  # both run again after a restart


def test_child_environment_leaves_out_systemd_and_watchd_variables() -> None:
    parent = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "NOTIFY_SOCKET": "/run/x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "WATCHD_JOB_ID": "stale",
    }
    assert child_environment(parent) == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}
    assert os.environ  # (the daemon passes its own environment, read once at start)


def test_hook_counters_appear_in_the_stats_and_the_metrics() -> None:
    from watchd.stats import Activity, DaemonInfo, build_snapshot, render_metrics

    counters = HookCounters()
    counters.add("webhook", "delivered")
    counters.add("command", "failed")
    info = DaemonInfo("0", 1, 0.0, False, 1, 0, "local", (), {}, {})
    hooks = {"manifest": {"written": 4, "failed": 1}, **counters.snapshot()}
    activity = Activity()
    snap = build_snapshot(info, {}, {}, activity, None, now_wall=10.0, now_mono=5.0, hooks=hooks)
    assert snap["hooks"] == {
        "manifest": {"written": 4, "failed": 1},
        "command": {"ok": 0, "failed": 1, "dropped": 0, "deferred": 0},
        "webhook": {"delivered": 1, "failed": 0, "dropped": 0, "deferred": 0, "retried": 0},
    }
    text = render_metrics(snap, activity).decode()
    assert "# TYPE watchd_hooks_total counter" in text
    assert 'watchd_hooks_total{hook="manifest",outcome="written"} 4.0' in text
    assert 'watchd_hooks_total{hook="command",outcome="failed"} 1.0' in text
    assert 'watchd_hooks_total{hook="webhook",outcome="delivered"} 1.0' in text


def test_a_delivery_that_raises_costs_only_itself(
    receiver: WebhookReceiver, sender_factory: Callable[..., WebhookSender]
) -> None:
    counters = HookCounters()
    sender = sender_factory(counters=counters)
    broken, fine = Done(), Done()
    with capture_logs() as logs:
        sender.submit(Delivery(1, "http://[::1/broken", None, FACTS, broken))  # not a URL
        sender.submit(Delivery(2, receiver.url, None, FACTS, fine))
        wait_for(lambda: broken.calls == 1 and fine.calls == 1, 10, "both finished")
    assert [e["job"] for e in logs if e["event"] == "hook.webhook_failed"] == [1]
    assert counters.snapshot()["webhook"]["delivered"] == 1
