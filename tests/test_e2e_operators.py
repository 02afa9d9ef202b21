"""The operators' view end to end: the real daemon, the real socket, the real ``watchd`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import DaemonProcess, drop, is_output, wait_for

pytestmark = pytest.mark.e2e


def cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``watchd`` command against the daemon's config."""
    return subprocess.run(
        [sys.executable, "-m", "watchd", *args, "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_json(daemon: DaemonProcess, *args: str) -> Any:
    result = cli(daemon, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def outputs(root: Path) -> list[str]:
    base = root / "outbox"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if is_output(p))


def test_status_jobs_job_and_follow(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(daemon__metrics_file="state/watchd.prom").start()
    root = daemon.root
    for i in range(3):
        drop(photos["coffee.png"], root / "inbox", f"c{i}.png")
    wait_for(lambda: daemon.count("job.accepted") == 1, what="job accepted")

    follow = cli(daemon, "job", "1", "--follow")
    assert follow.returncode == 0, follow.stderr
    assert "job 1 done: 3 done, 0 failed of 3" in follow.stdout
    assert "3/3" in follow.stderr  # the progress bar

    job = cli_json(daemon, "job", "1")
    assert job["state"] == "done" and job["progress"]["processed"] == 3
    assert [f["state"] for f in job["files"]] == ["done"] * 3
    assert job["progress"]["eta_seconds"] == 0.0

    status = cli_json(daemon, "status")
    assert status["files"]["done"] == 3 and status["totals"]["files_done"] == 3
    assert status["workers"]["total"] == 1 and status["paused"] is False
    assert status["watches"]["photos"]["totals"]["files_done"] == 3
    assert status["latency_seconds"]["p50"] is not None

    table = cli(daemon, "status")
    assert table.returncode == 0 and "photos" in table.stdout and "u2netp" in table.stdout
    jobs = cli(daemon, "jobs")
    assert jobs.returncode == 0 and "c0.png +2 more" in jobs.stdout
    assert cli_json(daemon, "jobs", "--state", "active")["jobs"] == []

    # the stats file and the metrics file are written when the job ends
    stats = json.loads((root / "state" / "stats.json").read_text())
    assert stats["totals"]["files_done"] == 3
    families = {
        f.name: f
        for f in text_string_to_metric_families((root / "state" / "watchd.prom").read_text())
    }
    assert "watchd_drop_to_output_seconds" in families
    stats_cli = cli(daemon, "stats")
    assert stats_cli.returncode == 0 and "files_done 3" in stats_cli.stdout


def test_pause_keeps_intake_going_and_resume_processes(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    assert cli_json(daemon, "pause") == {"paused": True}
    drop(photos["cat.png"], root / "inbox", "cat.png")
    # recorded first (job.accepted), then renamed into the spool: wait for both
    wait_for(
        lambda: daemon.count("job.accepted") == 1 and not (root / "inbox" / "cat.png").exists(),
        what="accepted while paused and taken into the spool",
    )
    status = cli_json(daemon, "status")
    assert status["paused"] is True and status["files"]["queued"] == 1
    assert outputs(root) == []
    # pause survives a restart
    assert daemon.stop() == 0
    daemon.start()
    assert cli_json(daemon, "status")["paused"] is True
    assert cli_json(daemon, "resume") == {"paused": False}
    wait_for(lambda: outputs(root) == ["cat.png"], what="processed after resume")
    events = [e for e in daemon.events("control.command") if e.get("command") == "pause"]
    assert events and events[0]["uid"] == os.getuid()


def test_cancel_moves_queued_originals_to_failed_and_retry_brings_them_back(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    cli_json(daemon, "pause")
    for name in ("a.jpg", "b.jpg"):
        drop(photos["astronaut.jpg"], root / "inbox", name)
    wait_for(lambda: cli_json(daemon, "status")["files"]["queued"] == 2, what="queued")
    assert cli_json(daemon, "cancel", "1") == {"id": 1, "cancelled_files": 2}
    for name in ("a.jpg", "b.jpg"):
        assert (root / "failed" / name).read_bytes() == photos["astronaut.jpg"].read_bytes()
        assert "cancelled" in (root / "failed" / f"{name}.error.txt").read_text()
    job = cli(daemon, "job", "1")
    assert job.returncode == 1 and "cancelled" in job.stdout  # exit 1: finished with failures
    conflict = cli(daemon, "cancel", "1")
    assert conflict.returncode == 2 and "conflict" in conflict.stderr

    cli_json(daemon, "resume")
    retried = cli_json(daemon, "retry", "1")
    assert retried["requeued_files"] == 2
    wait_for(lambda: outputs(root) == ["a.png", "b.png"], what="outputs after retry")
    wait_for(lambda: cli_json(daemon, "job", "1")["state"] == "done", what="job done")
    assert sorted(p.name for p in (root / "failed").iterdir()) == []
    assert sorted(p.name for p in (root / "archive").iterdir()) == ["a.jpg", "b.jpg"]


def test_submit_copy_and_move_with_wait(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    copy_src = elsewhere / "copied.jpg"
    move_src = elsewhere / "moved.jpg"
    shutil.copyfile(photos["rocket.jpg"], copy_src)
    shutil.copyfile(photos["rocket.jpg"], move_src)

    copied = cli(daemon, "submit", str(copy_src), "--wait")
    assert copied.returncode == 0, copied.stderr
    assert copy_src.exists() and "done" in copied.stdout
    moved = cli_json(daemon, "submit", str(move_src), "--move")
    assert not move_src.exists()
    wait_for(lambda: outputs(root) == ["copied.png", "moved.png"], what="submitted outputs")
    wait_for(lambda: cli_json(daemon, "job", str(moved["id"]))["state"] == "done", what="done")

    missing = cli(daemon, "submit", str(elsewhere / "nope.jpg"))
    assert missing.returncode == 2 and "nope.jpg" in missing.stderr
    unknown = cli(daemon, "submit", str(copy_src), "--watch", "nope")
    assert unknown.returncode == 2 and "no watch named" in unknown.stderr


def test_unreachable_daemon_exit_code_3_names_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    result = subprocess.run(
        [sys.executable, "-m", "watchd", "status", "--socket", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 3
    assert str(sock) in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_clients_cost_nothing_against_the_real_daemon(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    path = str(root / "state" / "control.sock")

    def exchange(payload: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(30)
            client.connect(path)
            client.sendall(payload)
            return dict(json.loads(client.makefile("rb").readline()))

    assert exchange(b"{not json\n")["error"]["code"] == "bad_json"
    assert exchange(b'{"version": 1, "command": "explode"}\n')["error"]["code"] == (
        "unknown_command"
    )
    wrong = exchange(b'{"version": 1, "command": "job", "args": {"id": "7"}}\n')
    assert wrong["error"]["code"] == "bad_request"
    assert exchange(b"x" * (1024 * 1024 + 10) + b"\n")["error"]["code"] == "too_large"
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(20)]
    for client in idle:
        client.connect(path)  # connect and say nothing
    try:
        drop(photos["coffee.png"], root / "inbox", "still.png")
        wait_for(lambda: outputs(root) == ["still.png"], what="processing goes on")
        assert exchange(b'{"version": 1, "command": "ping"}\n')["ok"] is True
    finally:
        for client in idle:
            client.close()


def test_prune_removes_finished_jobs_but_not_files(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    drop(photos["cat.png"], root / "inbox", "cat.png")
    wait_for(lambda: daemon.count("job.done") == 1, what="job done")
    result = cli(daemon, "prune", "--older-than", "0")
    assert result.returncode == 0 and "pruned 1" in result.stdout
    assert cli_json(daemon, "jobs")["jobs"] == []
    assert outputs(root) == ["cat.png"]
    assert cli_json(daemon, "status")["totals"]["files_done"] == 1  # lifetime totals stay
    bad = cli(daemon, "prune", "--older-than", "-1")
    assert bad.returncode == 2


def test_submit_priority_orders_the_queue_and_is_shown(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    """Three jobs submitted while paused run highest priority first, whatever their order."""
    from watchd.control_client import ControlClient
    from watchd.errors import ProtocolError

    daemon = daemon_factory().start()
    root = daemon.root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cli_json(daemon, "pause")
    ids = {}
    for name, priority in (("first", None), ("low", "-5"), ("urgent", "10")):
        source = elsewhere / f"{name}.png"
        shutil.copyfile(photos["coffee.png"], source)
        extra = ["--priority", priority] if priority else []
        answer = cli_json(daemon, "submit", str(source), *extra)
        assert answer["priority"] == int(priority or 0)
        ids[name] = answer["id"]

    assert cli_json(daemon, "job", str(ids["urgent"]))["priority"] == 10
    assert "priority  10" in cli(daemon, "job", str(ids["urgent"])).stdout
    listed = {j["name"]: j["priority"] for j in cli_json(daemon, "jobs")["jobs"]}
    assert listed == {"first.png": 0, "low.png": -5, "urgent.png": 10}
    table = cli(daemon, "jobs").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "WATCH", "PRI", "STATE"]

    # the daemon refuses an out-of-range priority itself too, not only the CLI
    client = ControlClient(root / "state" / "control.sock")
    with pytest.raises(ProtocolError) as refused:
        client.call("submit", paths=[str(elsewhere / "first.png")], priority=101)
    assert refused.value.code == "bad_request" and "-100 to 100" in refused.value.message
    bad = cli(daemon, "submit", str(elsewhere / "first.png"), "--priority", "101")
    assert bad.returncode == 2 and "must be from -100 to 100" in bad.stderr

    cli_json(daemon, "resume")
    wait_for(lambda: daemon.count("file.done") == 3, what="three files done")
    done = [Path(e["output"]).name for e in daemon.events("file.done")]
    assert done == ["urgent.png", "first.png", "low.png"]
