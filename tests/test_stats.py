"""The stats JSON file and Prometheus metrics: figures, atomic files, and their docs."""

from __future__ import annotations

import json
import math
import random
import re
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from watchd import stats
from watchd.states import FILE_STATES, JOB_STATES
from watchd.stats import (
    LATENCY_BUCKETS,
    TOTAL_KEYS,
    Activity,
    DaemonInfo,
    build_snapshot,
    render_metrics,
    write_metrics_file,
    write_stats_file,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "stats.md"

T0 = 10_000.0  # a monotonic "now" well past zero
WALL0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z


# --- Activity: rates -------------------------------------------------------------------


def test_rate_counts_files_in_the_window_per_watch_and_overall() -> None:
    activity = Activity()
    for i in range(30):  # 30 files over the last 30 seconds in "a"
        activity.record("a", ok=True, latency=1.0, now=T0 - i)
    for i in range(10):  # 10 failed files in "b", 10 to 19 minutes ago
        activity.record("b", ok=False, latency=1.0, now=T0 - 600 - i * 60)

    assert activity.rate(60, T0) == pytest.approx(30 / 60)
    assert activity.rate(60, T0, "a") == pytest.approx(30 / 60)
    assert activity.rate(60, T0, "b") == 0.0
    # "b": the records at 10..14 minutes ago are in the 15-minute window, 15..19 are not
    assert activity.rate(900, T0, "b") == pytest.approx(5 / 900)
    assert activity.rate(900, T0) == pytest.approx(35 / 900)
    assert activity.rate(900, T0, "unknown") == 0.0


def test_old_records_fall_out_of_the_window() -> None:
    activity = Activity()
    activity.record("a", ok=True, latency=2.0, now=T0)
    assert activity.rate(60, T0 + 59.9) == pytest.approx(1 / 60)
    assert activity.rate(60, T0 + 60.0) == 0.0
    assert activity.rate(900, T0 + 899.5) == pytest.approx(1 / 900)
    assert activity.rate(900, T0 + 900.0) == 0.0
    # a whole idle hour later, the ring holds nothing stale
    assert activity.rate(900, T0 + 3600) == 0.0
    assert activity.latency(T0 + 3600) == {"p50": None, "p95": None}
    # ... but the histogram counts since start
    assert activity.histogram()["a"][2] == 1


def test_slot_reuse_after_a_gap_does_not_mix_old_counts() -> None:
    activity = Activity()
    activity.record("a", ok=True, latency=1.0, now=T0)
    # exactly one ring length later, the same slot index is reused
    activity.record("a", ok=True, latency=1.0, now=T0 + stats.RATE_SLOTS)
    assert activity.rate(60, T0 + stats.RATE_SLOTS) == pytest.approx(1 / 60)


def test_records_older_than_the_ring_are_ignored() -> None:
    activity = Activity()
    activity.record("a", ok=True, latency=1.0, now=T0)
    activity.record("a", ok=True, latency=1.0, now=T0 - stats.RATE_SLOTS)  # same slot, older
    assert activity.rate(900, T0) == pytest.approx(1 / 900)


@pytest.mark.parametrize("window", [0, -1, 901, math.inf])
def test_windows_outside_the_ring_are_refused(window: float) -> None:
    with pytest.raises(ValueError, match="window"):
        Activity().rate(window, T0)
    with pytest.raises(ValueError, match="window"):
        Activity().latency(T0, window)


@pytest.mark.slow
def test_memory_stays_bounded_under_a_million_files() -> None:
    activity = Activity()
    rng = random.Random(7)
    n = 1_000_000
    span = 3600.0
    latencies = [rng.uniform(0.0, 100.0) for _ in range(n)]
    record = activity.record
    for i, latency in enumerate(latencies):
        record("photos" if i % 2 else "scans", ok=True, latency=latency, now=T0 + span * i / n)
    now = T0 + span

    assert len(activity._rate_sec) == stats.RATE_SLOTS == 900
    assert len(activity._rate_counts) == stats.RATE_SLOTS
    assert all(len(c) <= 2 for c in activity._rate_counts)
    assert len(activity._lat_sample) == stats.LATENCY_SLOTS
    assert all(len(s) <= stats.LATENCY_SAMPLE for s in activity._lat_sample)
    kept = sum(len(s) for s in activity._lat_sample)
    assert kept <= stats.LATENCY_SLOTS * stats.LATENCY_SAMPLE <= 4096
    assert sys.getsizeof(activity._hist) < 1024

    # the figures are still right
    per_second = n / span
    assert activity.rate(60, now) == pytest.approx(per_second, rel=0.02)
    assert activity.rate(900, now) == pytest.approx(per_second, rel=0.01)
    assert activity.rate(900, now, "photos") == pytest.approx(per_second / 2, rel=0.01)
    # percentiles from the sample against numpy on every latency of the window
    start = n - int(n * 900 / span)
    window = np.array(latencies[start:])
    figures = activity.latency(now)
    assert figures["p50"] == pytest.approx(np.percentile(window, 50), abs=3.0)
    assert figures["p95"] == pytest.approx(np.percentile(window, 95), abs=2.0)
    # the histogram saw every file
    hist = activity.histogram()
    assert hist["photos"][2] + hist["scans"][2] == n
    assert hist["photos"][1] + hist["scans"][1] == pytest.approx(sum(latencies))


# --- Activity: latency ---------------------------------------------------------------


def test_percentiles_match_numpy_while_every_latency_is_kept() -> None:
    activity = Activity()
    rng = random.Random(1)
    values = [rng.lognormvariate(1.0, 0.8) for _ in range(600)]
    for i, value in enumerate(values):  # 600 files over 10 minutes: under the sample cap
        activity.record("a", ok=True, latency=value, now=T0 + i)
    figures = activity.latency(T0 + 600)
    assert figures["p50"] == pytest.approx(np.percentile(values, 50), rel=1e-9)
    assert figures["p95"] == pytest.approx(np.percentile(values, 95), rel=1e-9)


def test_percentiles_weight_each_minute_by_its_traffic() -> None:
    activity = Activity()
    rng = random.Random(2)
    # minute 1: 20,000 fast files (sampled down to 256); minute 2: 100 slow files (all kept)
    fast = [rng.uniform(1.0, 2.0) for _ in range(20_000)]
    slow = [rng.uniform(50.0, 60.0) for _ in range(100)]
    for i, value in enumerate(fast):
        activity.record("a", ok=True, latency=value, now=T0 + 60 + i * 50 / len(fast))
    for i, value in enumerate(slow):
        activity.record("a", ok=True, latency=value, now=T0 + 120 + i * 0.5)
    figures = activity.latency(T0 + 180)
    everything = fast + slow
    # unweighted, the 256 fast samples against 100 slow ones would put p95 among the slow
    assert figures["p50"] == pytest.approx(np.percentile(everything, 50), abs=0.1)
    assert figures["p95"] == pytest.approx(np.percentile(everything, 95), abs=0.1)


def test_latency_window_and_failed_files() -> None:
    activity = Activity()
    activity.record("a", ok=True, latency=100.0, now=T0)  # falls out of a 5-minute window
    activity.record("a", ok=True, latency=4.0, now=T0 + 600)
    activity.record("a", ok=False, latency=999.0, now=T0 + 600)  # no output: no latency
    assert activity.latency(T0 + 601, 300) == {"p50": 4.0, "p95": 4.0}
    assert activity.latency(T0 + 601)["p95"] == pytest.approx(np.percentile([100, 4], 95))
    assert activity.rate(60, T0 + 601) == pytest.approx(2 / 60)  # both count as finished


def test_odd_latencies() -> None:
    activity = Activity()
    activity.record("a", ok=True, latency=-3.0, now=T0)  # clock skew: counts as zero
    activity.record("a", ok=True, latency=math.nan, now=T0)  # counted as finished only
    assert activity.latency(T0) == {"p50": 0.0, "p95": 0.0}
    assert activity.rate(60, T0) == pytest.approx(2 / 60)
    buckets, total, count = activity.histogram()["a"]
    assert (buckets[0], total, count) == (1, 0.0, 1)


# --- Activity: histogram -------------------------------------------------------------


def test_histogram_buckets_are_cumulative_with_inclusive_bounds() -> None:
    activity = Activity()
    for latency in (0.1, 0.5, 0.7, 1.0, 4.0, 59.0, 600.0, 601.0, 5000.0):
        activity.record("a", ok=True, latency=latency, now=T0)
    activity.record("b", ok=True, latency=2.5, now=T0)
    activity.record("a", ok=False, latency=1.0, now=T0)

    hist = activity.histogram()
    buckets, total, count = hist["a"]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets == [2, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7, 9]
    assert count == 9 == buckets[-1]
    assert total == pytest.approx(0.1 + 0.5 + 0.7 + 1.0 + 4.0 + 59.0 + 600.0 + 601.0 + 5000.0)
    assert hist["b"] == ([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2.5, 1)
    assert buckets == sorted(buckets)


# --- build_snapshot ------------------------------------------------------------------


def _info(**changes: Any) -> DaemonInfo:
    fields: dict[str, Any] = {
        "version": "0.1.0",
        "pid": 4242,
        "started_at": WALL0,
        "paused": False,
        "workers_total": 4,
        "workers_busy": 3,
        "backend": "local",
        "models": ("u2netp",),
        "providers": {"u2netp": "CPUExecutionProvider"},
        "watches": {
            "photos": {"inbox": "/srv/in", "outbox": "/srv/out", "model": "u2netp"},
            "scans": {"inbox": "/srv/scan-in", "outbox": "/srv/scan-out", "model": "u2netp"},
        },
    }
    fields.update(changes)
    return DaemonInfo(**fields)


COUNTS = {
    "files": {
        "photos": {"queued": 41, "running": 3, "done": 5120, "failed": 7},
        "retired": {"done": 2},  # a watch no longer configured
    },
    "jobs": {"photos": {"active": 2, "done": 310, "failed": 1}},
}
TOTALS = {
    "photos": {"files_done": 5120, "files_failed": 7, "bytes_in": 1000, "bytes_out": 3000},
    "retired": {"files_done": 2, "files_failed": 0, "bytes_in": 10, "bytes_out": 30},
}
ERROR = {"at": WALL0 + 100.25, "watch": "photos", "job": 309, "file": 5126, "message": "bad"}


#: What the daemon passes: the completion hooks' outcomes since start.
HOOKS = {
    "manifest": {"written": 3, "failed": 0},
    "command": {"ok": 2, "failed": 1, "dropped": 0, "deferred": 0},
    "webhook": {"delivered": 3, "failed": 0, "dropped": 0, "deferred": 0, "retried": 1},
}


def _snapshot(activity: Activity | None = None, **info: Any) -> dict[str, Any]:
    if activity is None:
        activity = Activity()
        for i in range(12):
            activity.record("photos", ok=True, latency=2.0 + i, now=T0 - i)
    return build_snapshot(
        _info(**info),
        COUNTS,
        TOTALS,
        activity,
        ERROR,
        now_wall=WALL0 + 3600.5,
        now_mono=T0,
        hooks=HOOKS,
    )


def test_snapshot_has_every_key_with_its_type() -> None:
    snap = _snapshot()
    assert list(snap) == [
        "version",
        "watchd_version",
        "pid",
        "started_at",
        "uptime_seconds",
        "paused",
        "backend",
        "workers",
        "pool",
        "models",
        "providers",
        "jobs",
        "files",
        "totals",
        "throughput",
        "latency_seconds",
        "watches",
        "last_error",
        "stuck_files",
        "generated_at",
        "hooks",
    ]
    assert snap["version"] == 1
    assert snap["watchd_version"] == "0.1.0"
    assert snap["pid"] == 4242
    assert snap["started_at"] == "2024-05-01T08:00:00.000Z"
    assert snap["generated_at"] == "2024-05-01T09:00:00.500Z"
    assert datetime.fromisoformat(snap["generated_at"].replace("Z", "+00:00")).timestamp() == (
        WALL0 + 3600.5
    )
    assert snap["uptime_seconds"] == pytest.approx(3600.5)
    assert snap["paused"] is False
    assert snap["backend"] == "local"
    assert snap["workers"] == {"total": 4, "busy": 3}
    assert snap["models"] == ["u2netp"]
    assert snap["providers"] == {"u2netp": "CPUExecutionProvider"}
    assert set(snap["throughput"]) == {"files_per_second_1m", "files_per_second_15m"}
    assert snap["throughput"]["files_per_second_1m"] == pytest.approx(12 / 60)
    assert snap["throughput"]["files_per_second_15m"] == pytest.approx(12 / 900)
    assert snap["latency_seconds"]["p50"] == pytest.approx(7.5)
    assert isinstance(snap["latency_seconds"]["p95"], float)
    assert snap["last_error"] == {
        "at": "2024-05-01T08:01:40.250Z",
        "watch": "photos",
        "job": 309,
        "file": 5126,
        "message": "bad",
    }
    # it is plain JSON, and round-trips
    assert json.loads(json.dumps(snap, allow_nan=False)) == snap


def test_snapshot_zero_fills_states_and_sums_watches() -> None:
    snap = _snapshot()
    assert snap["files"] == {
        "pending": 0,
        "queued": 41,
        "running": 3,
        "written": 0,
        "failing": 0,
        "done": 5122,  # the retired watch is counted daemon-wide
        "failed": 7,
    }
    assert list(snap["files"]) == list(FILE_STATES)
    assert snap["jobs"] == {"active": 2, "done": 310, "failed": 1, "cancelled": 0}
    assert list(snap["jobs"]) == list(JOB_STATES)
    assert snap["totals"] == {
        "files_done": 5122,
        "files_failed": 7,
        "bytes_in": 1010,
        "bytes_out": 3030,
    }


def test_snapshot_per_watch_figures() -> None:
    activity = Activity()
    for i in range(90):
        activity.record("photos" if i % 3 else "scans", ok=True, latency=1.0, now=T0 - i)
    snap = _snapshot(activity)
    assert list(snap["watches"]) == ["photos", "scans"]  # configured ones only
    photos = snap["watches"]["photos"]
    assert list(photos) == [
        "inbox",
        "outbox",
        "model",
        "jobs",
        "files",
        "totals",
        "files_per_second_15m",
        "stuck",
    ]
    assert (photos["inbox"], photos["outbox"], photos["model"]) == ("/srv/in", "/srv/out", "u2netp")
    assert photos["files"]["queued"] == 41
    assert photos["files"]["done"] == 5120
    assert photos["jobs"]["active"] == 2
    assert photos["totals"] == TOTALS["photos"]
    assert photos["files_per_second_15m"] == pytest.approx(60 / 900)
    scans = snap["watches"]["scans"]
    assert scans["files"] == dict.fromkeys(FILE_STATES, 0)
    assert scans["jobs"] == dict.fromkeys(JOB_STATES, 0)
    assert scans["totals"] == dict.fromkeys(TOTAL_KEYS, 0)
    assert scans["files_per_second_15m"] == pytest.approx(30 / 900)


def test_snapshot_when_idle() -> None:
    snap = build_snapshot(
        _info(paused=True, watches={}),
        {"files": {}, "jobs": {}},
        {},
        Activity(),
        None,
        now_wall=WALL0,
        now_mono=T0,
    )
    assert snap["paused"] is True
    assert snap["latency_seconds"] == {"p50": None, "p95": None}
    assert snap["throughput"] == {"files_per_second_1m": 0.0, "files_per_second_15m": 0.0}
    assert snap["last_error"] is None
    assert snap["files"] == dict.fromkeys(FILE_STATES, 0)
    assert snap["watches"] == {}
    assert snap["uptime_seconds"] == 0.0


def test_last_error_time_may_already_be_iso() -> None:
    error = dict(ERROR, at="2024-05-01T08:01:40.250Z")
    snap = build_snapshot(_info(), COUNTS, TOTALS, Activity(), error, now_wall=WALL0, now_mono=T0)
    assert snap["last_error"]["at"] == "2024-05-01T08:01:40.250Z"


# --- write_stats_file ----------------------------------------------------------------


def test_write_stats_file_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    snap = _snapshot()
    write_stats_file(path, snap)
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                problems.append("missing")
                continue
            try:
                seen.append(json.loads(text)["pid"])
            except ValueError as exc:
                problems.append(f"{exc}: {text[:80]!r}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            # vary the size, so a torn read could not pass for a whole file
            snap = dict(snap, pid=i, models=["m"] * (i % 17) * 50)
            write_stats_file(path, snap)
    finally:
        stop.set()
        thread.join()

    assert problems == []
    assert seen  # the reader really read
    assert json.loads(path.read_text())["pid"] == 199
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]  # no temp left


def test_write_stats_file_replaces_a_stray_temp(tmp_path: Path) -> None:
    (tmp_path / ".stats.json.tmp").write_text("half")
    write_stats_file(tmp_path / "stats.json", _snapshot())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_write_stats_file_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    write_stats_file(path, _snapshot())
    before = path.read_bytes()
    with pytest.raises(ValueError):  # NaN is not JSON
        write_stats_file(path, dict(_snapshot(), uptime_seconds=math.nan))
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(OSError):
        write_stats_file(tmp_path / "folder.json", _snapshot())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.json", "stats.json"]


# --- render_metrics ------------------------------------------------------------------


def _families(text: str) -> dict[tuple[str, str], list[Sample]]:
    return {(f.name, f.type): f.samples for f in text_string_to_metric_families(text)}


def _values(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name}


def test_render_metrics_families_labels_and_values() -> None:
    activity = Activity()
    for latency in (0.3, 1.5, 7.0, 700.0):
        activity.record("photos", ok=True, latency=latency, now=T0)
    snap = _snapshot(activity)
    text = render_metrics(snap, activity).decode("utf-8")
    fams = _families(text)

    assert set(fams) == {
        ("watchd_files", "counter"),
        ("watchd_bytes_in", "counter"),
        ("watchd_bytes_out", "counter"),
        ("watchd_files_in_state", "gauge"),
        ("watchd_jobs", "gauge"),
        ("watchd_workers", "gauge"),
        ("watchd_paused", "gauge"),
        ("watchd_up", "gauge"),
        ("watchd_start_time_seconds", "gauge"),
        ("watchd_drop_to_output_seconds", "histogram"),
        ("watchd_throughput_files_per_second", "gauge"),
        ("watchd_hooks", "counter"),
        ("watchd_file_retries", "counter"),
        ("watchd_queue_wait_seconds", "histogram"),
        ("watchd_run_seconds", "histogram"),
        ("watchd_workers_online", "gauge"),
        ("watchd_build_info", "gauge"),
        ("watchd_files_stuck", "gauge"),
    }
    hooks = _values(fams["watchd_hooks", "counter"], "watchd_hooks_total")
    assert hooks[("hook", "command"), ("outcome", "failed")] == 1
    assert hooks[("hook", "webhook"), ("outcome", "retried")] == 1
    for family in {name for name, _ in fams}:
        assert f"# HELP {family}" in text
        assert f"# TYPE {family}" in text

    files_total = _values(fams["watchd_files", "counter"], "watchd_files_total")
    assert files_total[("outcome", "done"), ("watch", "photos")] == 5120
    assert files_total[("outcome", "failed"), ("watch", "photos")] == 7
    assert files_total[("outcome", "done"), ("watch", "scans")] == 0
    bytes_in = _values(fams["watchd_bytes_in", "counter"], "watchd_bytes_in_total")
    assert bytes_in == {(("watch", "photos"),): 1000, (("watch", "scans"),): 0}
    bytes_out = _values(fams["watchd_bytes_out", "counter"], "watchd_bytes_out_total")
    assert bytes_out[(("watch", "photos"),)] == 3000

    files = _values(fams["watchd_files_in_state", "gauge"], "watchd_files_in_state")
    assert len(files) == 2 * len(FILE_STATES)
    assert files[("state", "queued"), ("watch", "photos")] == 41
    assert files[("state", "pending"), ("watch", "scans")] == 0
    jobs = _values(fams["watchd_jobs", "gauge"], "watchd_jobs")
    assert len(jobs) == 2 * len(JOB_STATES)
    assert jobs[("state", "active"), ("watch", "photos")] == 2

    workers = _values(fams["watchd_workers", "gauge"], "watchd_workers")
    assert workers == {(("state", "busy"),): 3, (("state", "idle"),): 1}
    assert _values(fams["watchd_paused", "gauge"], "watchd_paused") == {(): 0}
    assert _values(fams["watchd_up", "gauge"], "watchd_up") == {(): 1}
    start = _values(fams["watchd_start_time_seconds", "gauge"], "watchd_start_time_seconds")
    assert start == {(): WALL0}
    rates = _values(
        fams["watchd_throughput_files_per_second", "gauge"], "watchd_throughput_files_per_second"
    )
    assert rates[(("window", "1m"),)] == pytest.approx(4 / 60)
    assert rates[(("window", "15m"),)] == pytest.approx(4 / 900)


def test_render_metrics_histogram() -> None:
    activity = Activity()
    for latency in (0.3, 1.5, 7.0, 700.0):
        activity.record("photos", ok=True, latency=latency, now=T0)
    text = render_metrics(_snapshot(activity), activity).decode("utf-8")
    samples = _families(text)["watchd_drop_to_output_seconds", "histogram"]

    buckets = {
        (s.labels["watch"], s.labels["le"]): s.value
        for s in samples
        if s.name == "watchd_drop_to_output_seconds_bucket"
    }
    bounds = [str(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert [buckets["photos", le] for le in bounds] == [1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4]
    # a configured watch with no files yet still has its (empty) series
    assert [buckets["scans", le] for le in bounds] == [0] * len(bounds)
    sums = _values(samples, "watchd_drop_to_output_seconds_sum")
    counts = _values(samples, "watchd_drop_to_output_seconds_count")
    assert sums[(("watch", "photos"),)] == pytest.approx(708.8)
    assert counts == {(("watch", "photos"),): 4, (("watch", "scans"),): 0}


def test_render_metrics_paused() -> None:
    text = render_metrics(_snapshot(paused=True), Activity()).decode()
    assert _values(_families(text)["watchd_paused", "gauge"], "watchd_paused") == {(): 1}


@pytest.mark.parametrize("name", ['quo"te', "new\nline", "back\\slash", "ünïcødé ✂ 写真", "} ="])
def test_any_watch_name_stays_valid(name: str, tmp_path: Path) -> None:
    activity = Activity()
    activity.record(name, ok=True, latency=1.0, now=T0)
    watches = {name: {"inbox": "/in", "outbox": "/out", "model": "u2netp"}}
    snap = build_snapshot(
        _info(watches=watches),
        {"files": {name: {"done": 1}}, "jobs": {name: {"done": 1}}},
        {name: {"files_done": 1, "files_failed": 0, "bytes_in": 5, "bytes_out": 6}},
        activity,
        None,
        now_wall=WALL0,
        now_mono=T0,
    )
    path = tmp_path / "watchd.prom"
    write_metrics_file(path, snap, activity)
    text = path.read_bytes().decode("utf-8")
    fams = _families(text)
    files_total = _values(fams["watchd_files", "counter"], "watchd_files_total")
    assert files_total[("outcome", "done"), ("watch", name)] == 1
    counts = _values(
        fams["watchd_drop_to_output_seconds", "histogram"], "watchd_drop_to_output_seconds_count"
    )
    assert counts == {(("watch", name),): 1}
    # and the stats file keeps the name as it is
    write_stats_file(tmp_path / "stats.json", snap)
    assert list(json.loads((tmp_path / "stats.json").read_text("utf-8"))["watches"]) == [name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json", "watchd.prom"]


# --- the docs ------------------------------------------------------------------------

# keys that are names chosen by people (a watch, a model) rather than part of the schema
_DYNAMIC = {"watches": "<watch>", "providers": "<model>", "workers_by_host": "<host>"}


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every key of a snapshot as a dotted path, names of watches/models as placeholders."""
    out: list[str] = []
    if not isinstance(value, dict):
        return out
    placeholder = _DYNAMIC.get(prefix.rsplit(".", 1)[-1]) if prefix else None
    for key, child in value.items():
        name = placeholder or str(key)
        path = f"{prefix}.{name}" if prefix else name
        out.append(path)
        out.extend(_paths(child, path))
    return sorted(set(out))


def _documented_rows() -> set[str]:
    section = DOC.read_text(encoding="utf-8").split("## The stats JSON file", 1)[1]
    section = section.split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))


def _same_as_top_level(path: str) -> str | None:
    """``watches.<watch>.files.done`` is documented by ``files.done`` (the doc says so)."""
    match = re.fullmatch(r"watches\.<watch>\.(jobs|files|totals)\.(.+)", path)
    return f"{match[1]}.{match[2]}" if match else None


def test_doc_documents_every_key_of_the_snapshot() -> None:
    rows = _documented_rows()
    snapshot_paths = _paths(_snapshot())
    assert "watches.<watch>.files.done" in snapshot_paths  # the walk reaches the leaves
    assert "providers.<model>" in snapshot_paths
    for path in snapshot_paths:
        assert path in rows or _same_as_top_level(path) in rows, f"{path} is not in {DOC.name}"
    # and documents nothing the snapshot lacks
    assert rows - set(snapshot_paths) == set()


def test_doc_example_has_the_snapshot_shape() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = json.loads(text.split("```json", 1)[1].split("```", 1)[0])
    snap = _snapshot()
    assert _paths(example) == _paths(snap)

    def types(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: types(v) for k, v in value.items()}
        if isinstance(value, list):
            return [types(v) for v in value[:1]]
        return type(value).__name__

    # float fields hold floats in the example too (no 2 where 2.0 is meant)
    assert types(example["throughput"]) == types(snap["throughput"])
    assert types(example["last_error"]) == types(snap["last_error"])
    assert types(example["workers"]) == types(snap["workers"])


def test_doc_documents_every_metric() -> None:
    section = DOC.read_text(encoding="utf-8").split("## Prometheus metrics", 1)[1]
    rows = set(re.findall(r"^\| `(watchd_[a-z_]+)` \| (\w+) \|", section, re.MULTILINE))
    activity = Activity()
    activity.record("photos", ok=True, latency=1.0, now=T0)
    text = render_metrics(_snapshot(activity), activity).decode()
    families = set()
    for family in text_string_to_metric_families(text):
        shown = family.name + "_total" if family.type == "counter" else family.name
        families.add((shown, family.type))
    assert families == rows


# --- the queue families (issue 17) ----------------------------------------------------------------


def test_queue_families_retries_wait_run_workers_online_and_build_info() -> None:
    import platform

    activity = Activity()
    activity.record_attempt("photos", waited=0.3, ran=1.5)
    activity.record_attempt("photos", waited=4000.0, ran=0.05)
    activity.record_attempt("photos", waited=-1.0, ran=float("nan"))  # skew: 0; nan: left out
    activity.record_retry("photos", "timeout")
    activity.record_retry("photos", "timeout")
    activity.record_retry("photos", "write_error")
    text = render_metrics(_snapshot(activity, host="box1"), activity).decode("utf-8")
    fams = _families(text)

    retries = _values(fams["watchd_file_retries", "counter"], "watchd_file_retries_total")
    assert retries[("reason", "timeout"), ("watch", "photos")] == 2
    assert retries[("reason", "write_error"), ("watch", "photos")] == 1
    assert retries[("reason", "worker_lost"), ("watch", "scans")] == 0  # every reason present
    assert len(retries) == 2 * 5

    wait = _values(
        fams["watchd_queue_wait_seconds", "histogram"], "watchd_queue_wait_seconds_bucket"
    )
    assert wait[("le", "0.1"), ("watch", "photos")] == 1  # the skewed one, as 0
    assert wait[("le", "0.5"), ("watch", "photos")] == 2
    assert wait[("le", "3600.0"), ("watch", "photos")] == 2
    assert wait[("le", "7200.0"), ("watch", "photos")] == 3
    assert wait[("le", "+Inf"), ("watch", "scans")] == 0
    run = _values(fams["watchd_run_seconds", "histogram"], "watchd_run_seconds_count")
    assert run[(("watch", "photos"),)] == 2
    run_sum = _values(fams["watchd_run_seconds", "histogram"], "watchd_run_seconds_sum")
    assert run_sum[(("watch", "photos"),)] == pytest.approx(1.55)

    online = _values(fams["watchd_workers_online", "gauge"], "watchd_workers_online")
    assert online == {(("host", "box1"),): 4}
    info = _values(fams["watchd_build_info", "gauge"], "watchd_build_info")
    assert info == {
        (
            ("backend", "local"),
            ("python_version", platform.python_version()),
            ("version", "0.1.0"),
        ): 1
    }


def test_workers_online_per_dask_host_counts_running_workers() -> None:
    pool = {
        "backend": "dask",
        "scheduler": "tcp://s:8786",
        "connected": True,
        "per_worker": [
            {"host": "gpu1", "status": "running"},
            {"host": "gpu1", "status": "running"},
            {"host": "gpu2", "status": "running"},
            {"host": "gpu3", "status": "closing"},
        ],
    }
    snap = _snapshot(backend="dask", pool=pool)
    assert snap["pool"]["workers_by_host"] == {"gpu1": 2, "gpu2": 1}
    text = render_metrics(snap, Activity()).decode("utf-8")
    online = _values(_families(text)["watchd_workers_online", "gauge"], "watchd_workers_online")
    assert online == {(("host", "gpu1"),): 2, (("host", "gpu2"),): 1}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("processing took longer than file_timeout; the worker was stopped", "timeout"),
        ("processing took longer than file_timeout (300 s) on dask worker w1", "timeout"),
        ("the worker process died (Abnormal termination)", "worker_lost"),
        ("the dask worker running it died: KilledWorker", "worker_lost"),
        ("the dask result was lost: CancelledError()", "worker_lost"),
        ("processing failed: RuntimeError: onnxruntime died", "error"),
        ("a dask worker returned <class 'int'>", "error"),
    ],
)
def test_retry_reason_of_a_lost_attempt(message: str, reason: str) -> None:
    from watchd.dispatcher import retry_reason

    assert retry_reason(message) == reason
