"""The stats JSON file and the Prometheus text metrics.

The daemon's main thread owns everything here: it feeds :class:`Activity` with
each finished file, asks the ledger for counts and totals, and turns them into
a snapshot (:func:`build_snapshot`) that is written as a JSON file
(:func:`write_stats_file`) and as Prometheus text metrics
(:func:`render_metrics`, :func:`write_metrics_file`). This module knows no SQL
and reads no clock: every time is passed in (``now`` monotonic seconds for the
rolling figures, ``now_wall`` unix seconds for the timestamps it prints).

Memory stays bounded whatever the traffic (docs/design.md, invariant 6): rates come
from a ring of per-second buckets covering 15 minutes, percentiles from a ring
of per-minute reservoir samples, the histogram from fixed buckets per watch.
The schema of the snapshot is documented key by key in ``docs/stats.md``.
"""

from __future__ import annotations

import bisect
import json
import math
import platform
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from watchd.files import write_via_temp
from watchd.states import FILE_STATES, JOB_STATES

SCHEMA_VERSION = 1

#: Drop-to-output latency buckets, in seconds (the ``le`` bounds of the histogram).
LATENCY_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
#: Time waiting in the queue (recorded to the start of an attempt), in seconds: from a file
#: taken at once to a backlog of hours.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400,
)  # fmt: skip
#: Time one attempt spends in a worker (handed over to its result), in seconds.
RUN_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
#: Why a file's attempt is retried (``watchd_file_retries_total``'s ``reason`` label).
RETRY_REASONS: tuple[str, ...] = ("timeout", "worker_lost", "error", "write_error", "pool_broke")

TOTAL_KEYS: tuple[str, ...] = ("files_done", "files_failed", "bytes_in", "bytes_out")

#: The longest window :meth:`Activity.rate` and :meth:`Activity.latency` answer for.
MAX_WINDOW = 900.0
#: One bucket per second over :data:`MAX_WINDOW`.
RATE_SLOTS = 900
#: Latency samples are kept per minute; one more slot than the window needs, so the
#: minute that straddles the start of a 15-minute window is still there.
LATENCY_SLOT_SECONDS = 60
LATENCY_SLOTS = 16
#: Reservoir size per minute: at most ``LATENCY_SLOTS * LATENCY_SAMPLE`` latencies are kept.
LATENCY_SAMPLE = 256

METRIC_PREFIX = "watchd_"


class Activity:
    """Recent per-file outcomes, bounded in memory whatever the traffic.

    * rates: a ring of :data:`RATE_SLOTS` per-second buckets (files finished per
      watch in that second), so any window up to 15 minutes can be answered;
    * percentiles: a ring of :data:`LATENCY_SLOTS` per-minute reservoirs of at most
      :data:`LATENCY_SAMPLE` latencies each (Algorithm R), weighted by how many
      files each minute really saw;
    * histogram: fixed :data:`LATENCY_BUCKETS` counts per watch since start.

    Rates count every finished file, done or failed. Latency figures (percentiles
    and the histogram) count only files that produced an output (``ok=True``):
    a failed file has no drop-to-output time. Records older than the ring are
    ignored; a negative latency (clock skew between the drop time and now) counts
    as zero and a non-finite one is left out of the latency figures.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rate_sec: list[int] = [-1] * RATE_SLOTS
        self._rate_counts: list[dict[str, int]] = [{} for _ in range(RATE_SLOTS)]
        self._lat_minute: list[int] = [-1] * LATENCY_SLOTS
        self._lat_seen: list[int] = [0] * LATENCY_SLOTS
        self._lat_sample: list[list[float]] = [[] for _ in range(LATENCY_SLOTS)]
        self._hist: dict[str, list[int]] = {}
        self._hist_sum: dict[str, float] = {}
        self._rng = random.Random(seed)
        self._queue_wait = _Histograms(QUEUE_WAIT_BUCKETS)
        self._run = _Histograms(RUN_BUCKETS)
        self._retries: dict[tuple[str, str], int] = {}

    def record_attempt(self, watch: str, *, waited: float, ran: float) -> None:
        """One attempt that came back from a worker (whatever its outcome): how long the
        file waited in the queue before it (from its recording, earlier attempts and
        back-off included) and how long it ran in the worker."""
        self._queue_wait.observe(watch, waited)
        self._run.observe(watch, ran)

    def record_retry(self, watch: str, reason: str) -> None:
        """One attempt given back to the queue; ``reason`` is one of :data:`RETRY_REASONS`."""
        key = (watch, reason)
        self._retries[key] = self._retries.get(key, 0) + 1

    def retries(self) -> dict[tuple[str, str], int]:
        """Retries since start by (watch, reason)."""
        return dict(self._retries)

    def queue_wait_histogram(self) -> dict[str, tuple[list[int], float, int]]:
        return self._queue_wait.cumulative()

    def run_histogram(self) -> dict[str, tuple[list[int], float, int]]:
        return self._run.cumulative()

    def record(self, watch: str, *, ok: bool, latency: float, now: float) -> None:
        """Count one finished file of ``watch``; ``now`` is monotonic seconds."""
        sec = math.floor(now)
        i = sec % RATE_SLOTS
        held = self._rate_sec[i]
        if held != sec:
            if held > sec:  # older than the ring: nothing to count it in
                return
            self._rate_sec[i] = sec
            self._rate_counts[i] = {}
        counts = self._rate_counts[i]
        counts[watch] = counts.get(watch, 0) + 1

        if not ok or not math.isfinite(latency):
            return
        latency = max(0.0, float(latency))
        self._record_latency(latency, now)
        buckets = self._hist.get(watch)
        if buckets is None:
            buckets = self._hist[watch] = [0] * (len(LATENCY_BUCKETS) + 1)
            self._hist_sum[watch] = 0.0
        buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        self._hist_sum[watch] += latency

    def _record_latency(self, latency: float, now: float) -> None:
        minute = math.floor(now / LATENCY_SLOT_SECONDS)
        j = minute % LATENCY_SLOTS
        held = self._lat_minute[j]
        if held != minute:
            if held > minute:
                return
            self._lat_minute[j] = minute
            self._lat_seen[j] = 0
            self._lat_sample[j] = []
        seen = self._lat_seen[j] + 1
        self._lat_seen[j] = seen
        sample = self._lat_sample[j]
        if len(sample) < LATENCY_SAMPLE:
            sample.append(latency)
        else:
            k = self._rng.randrange(seen)
            if k < LATENCY_SAMPLE:
                sample[k] = latency

    def rate(self, window: float, now: float, watch: str | None = None) -> float:
        """Files finished per second over the last ``window`` seconds (all watches if None).

        The window is counted in whole seconds, the current one included, and the
        count is divided by the full window (also in the first minutes after start).
        """
        seconds = _check_window(window)
        newest = math.floor(now)
        oldest = newest - seconds  # exclusive
        total = 0
        for sec, counts in zip(self._rate_sec, self._rate_counts, strict=True):
            if oldest < sec <= newest:
                total += sum(counts.values()) if watch is None else counts.get(watch, 0)
        return total / seconds

    def latency(self, now: float, window: float = MAX_WINDOW) -> dict[str, float | None]:
        """``{"p50": .., "p95": ..}`` drop-to-output seconds over the window, None when no data.

        The window is honoured to the minute: a minute overlapping it counts whole.
        """
        _check_window(window)
        start = now - window
        values: list[tuple[float, float]] = []
        for minute, seen, sample in zip(
            self._lat_minute, self._lat_seen, self._lat_sample, strict=True
        ):
            if not sample or (minute + 1) * LATENCY_SLOT_SECONDS <= start:
                continue
            if minute * LATENCY_SLOT_SECONDS > now:
                continue
            weight = seen / len(sample)
            values.extend((value, weight) for value in sample)
        if not values:
            return {"p50": None, "p95": None}
        values.sort()
        return {
            "p50": _weighted_percentile(values, 0.50),
            "p95": _weighted_percentile(values, 0.95),
        }

    def histogram(self) -> dict[str, tuple[list[int], float, int]]:
        """Per watch: (cumulative counts for each bucket then +Inf, sum, count) since start."""
        out: dict[str, tuple[list[int], float, int]] = {}
        for watch, buckets in self._hist.items():
            cumulative: list[int] = []
            running = 0
            for n in buckets:
                running += n
                cumulative.append(running)
            out[watch] = (cumulative, self._hist_sum[watch], running)
        return out


class _Histograms:
    """Fixed-bucket histograms per watch since start (bounded: buckets x watches)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, watch: str, value: float) -> None:
        if not math.isfinite(value):
            return
        value = max(0.0, float(value))  # clock skew between the recording and now
        counts = self._counts.get(watch)
        if counts is None:
            counts = self._counts[watch] = [0] * (len(self.bounds) + 1)
            self._sums[watch] = 0.0
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sums[watch] += value

    def cumulative(self) -> dict[str, tuple[list[int], float, int]]:
        out: dict[str, tuple[list[int], float, int]] = {}
        for watch, counts in self._counts.items():
            running, cumulative = 0, []
            for n in counts:
                running += n
                cumulative.append(running)
            out[watch] = (cumulative, self._sums[watch], running)
        return out


def _check_window(window: float) -> int:
    if not 0 < window <= MAX_WINDOW:
        raise ValueError(f"window must be in (0, {MAX_WINDOW:g}] seconds, got {window!r}")
    return math.ceil(window)


def _weighted_percentile(values: list[tuple[float, float]], q: float) -> float:
    """Linear-interpolated percentile of sorted (value, weight) pairs.

    Each value sits at the middle of its weight on a cumulative scale stretched so
    the first value is at 0 and the last at 1; with equal weights this is exactly
    ``numpy.percentile``'s default (linear) method.
    """
    if len(values) == 1:
        return values[0][0]
    first_half = values[0][1] / 2
    span = sum(w for _, w in values) - first_half - values[-1][1] / 2
    positions: list[float] = []
    cumulative = 0.0
    for _, weight in values:
        positions.append((cumulative + weight / 2 - first_half) / span)
        cumulative += weight
    k = bisect.bisect_right(positions, q)
    if k <= 0:
        return values[0][0]
    if k >= len(values):
        return values[-1][0]
    x0, x1 = positions[k - 1], positions[k]
    v0, v1 = values[k - 1][0], values[k][0]
    if x1 <= x0:
        return v1
    return v0 + (v1 - v0) * (q - x0) / (x1 - x0)


@dataclass(frozen=True)
class DaemonInfo:
    """What the daemon knows about itself, beyond the ledger's figures."""

    version: str
    pid: int
    started_at: float  # unix seconds
    paused: bool
    workers_total: int
    workers_busy: int
    backend: str  # "local" or "dask"
    models: tuple[str, ...]
    providers: Mapping[str, str]  # model -> onnxruntime provider in use
    watches: Mapping[str, Mapping[str, str]]  # name -> {"inbox", "outbox", "model"}
    pool: Mapping[str, Any] = field(default_factory=dict)  # the pool's status().as_dict()
    host: str = ""  # this machine's name (the local pool's workers run here)


def iso_utc(unix: float) -> str:
    """``unix`` seconds as ISO-8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.250Z``."""
    stamp = datetime.fromtimestamp(unix, tz=timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _zero_filled(states: tuple[str, ...], *sources: Mapping[str, int] | None) -> dict[str, int]:
    """Counts for exactly ``states`` (others are left out), summed over ``sources``."""
    out = dict.fromkeys(states, 0)
    for source in sources:
        for state, n in (source or {}).items():
            if state in out:
                out[state] += int(n)
    return out


def build_snapshot(
    info: DaemonInfo,
    counts: Mapping[str, Mapping[str, Mapping[str, int]]],
    totals: Mapping[str, Mapping[str, int]],
    activity: Activity,
    last_error: Mapping[str, Any] | None,
    *,
    now_wall: float,
    now_mono: float,
    hooks: Mapping[str, Mapping[str, int]] | None = None,
    stuck_counts: Mapping[str, int] | None = None,
    stuck_files: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The stats snapshot, schema version 1 (see docs/stats.md).

    ``counts`` is ``{"files": {watch: {state: n}}, "jobs": {watch: {state: n}}}`` and
    ``totals`` is ``{watch: {"files_done", "files_failed", "bytes_in", "bytes_out"}}``,
    both as the ledger reports them. The daemon-wide figures sum every watch the
    ledger knows (also watches no longer configured); ``watches`` lists the
    configured ones. States outside the documented sets are left out.
    ``last_error["at"]`` may be unix seconds or an ISO string already.
    ``hooks`` (``{"manifest": {"written": n, ...}, "command": {...}, "webhook": {...}}``,
    outcomes since start, see docs/completion.md) adds a ``hooks`` key when given.
    """
    file_counts = counts.get("files", {})
    job_counts = counts.get("jobs", {})
    watches: dict[str, Any] = {}
    for name, route in info.watches.items():
        watches[name] = {
            "inbox": str(route.get("inbox", "")),
            "outbox": str(route.get("outbox", "")),
            "model": str(route.get("model", "")),
            "jobs": _zero_filled(JOB_STATES, job_counts.get(name)),
            "files": _zero_filled(FILE_STATES, file_counts.get(name)),
            "totals": _zero_filled(TOTAL_KEYS, totals.get(name)),
            "files_per_second_15m": activity.rate(MAX_WINDOW, now_mono, name),
            "stuck": int((stuck_counts or {}).get(name, 0)),
        }
    snapshot = {
        "version": SCHEMA_VERSION,
        "watchd_version": info.version,
        "pid": info.pid,
        "started_at": iso_utc(info.started_at),
        "uptime_seconds": max(0.0, now_wall - info.started_at),
        "paused": info.paused,
        "backend": info.backend,
        "workers": {"total": info.workers_total, "busy": info.workers_busy},
        "pool": {
            "scheduler": info.pool.get("scheduler"),
            "connected": bool(info.pool.get("connected", True)),
            "error": info.pool.get("error"),
            "workers_by_host": _workers_by_host(info),
        },
        "models": list(info.models),
        "providers": dict(info.providers),
        "jobs": _zero_filled(JOB_STATES, *job_counts.values()),
        "files": _zero_filled(FILE_STATES, *file_counts.values()),
        "totals": _zero_filled(TOTAL_KEYS, *totals.values()),
        "throughput": {
            "files_per_second_1m": activity.rate(60.0, now_mono),
            "files_per_second_15m": activity.rate(MAX_WINDOW, now_mono),
        },
        "latency_seconds": activity.latency(now_mono),
        "watches": watches,
        "last_error": _last_error(last_error),
        "stuck_files": [dict(entry) for entry in stuck_files or ()],
        "generated_at": iso_utc(now_wall),
    }
    if hooks is not None:
        snapshot["hooks"] = {hook: dict(outcomes) for hook, outcomes in hooks.items()}
    return snapshot


def _workers_by_host(info: DaemonInfo) -> dict[str, int]:
    """Worker processes online per host: the local pool's on this machine; a Dask
    cluster's as its scheduler last reported them (only workers in state "running")."""
    if info.backend != "dask":
        return {info.host or "localhost": info.workers_total}
    hosts: dict[str, int] = {}
    for worker in info.pool.get("per_worker", ()):
        if worker.get("status") not in (None, "running"):
            continue
        host = str(worker.get("host") or worker.get("address") or "unknown")
        hosts[host] = hosts.get(host, 0) + 1
    return dict(sorted(hosts.items()))


def _last_error(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if error is None:
        return None
    at = error.get("at")
    return {
        "at": iso_utc(float(at)) if isinstance(at, int | float) else str(at),
        "watch": str(error.get("watch", "")),
        "job": int(error.get("job", 0)),
        "file": int(error.get("file", 0)),
        "message": str(error.get("message", "")),
    }


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`watchd.files.write_via_temp`).

    The temp name is fixed (``.<name>.tmp``: hidden, and not ``*.prom`` so the
    node_exporter textfile collector never reads it) because only the daemon's
    main thread writes these files; a temp left by a crash is replaced next time.
    """
    write_via_temp(path, data, f".{path.name}.tmp", mode=0o644)


def _histogram_family(
    family: str,
    help_text: str,
    bounds: Sequence[float],
    histograms: Mapping[str, tuple[list[int], float, int]],
    watches: Mapping[str, Mapping[str, Any]],
) -> Metric:
    """One histogram per watch (every configured watch, recorded or not) from
    :class:`Activity`'s cumulative counts."""
    histogram = HistogramMetricFamily(METRIC_PREFIX + family, help_text, labels=["watch"])
    empty = ([0] * (len(bounds) + 1), 0.0, 0)
    les = [repr(float(b)) for b in bounds] + ["+Inf"]
    for name in sorted(set(watches) | set(histograms)):
        cumulative, total, _count = histograms.get(name, empty)
        histogram.add_metric(
            [name], buckets=list(zip(les, cumulative, strict=True)), sum_value=total
        )
    return histogram


def write_stats_file(path: Path, snapshot: Mapping[str, Any]) -> None:
    """Write the snapshot as JSON atomically: readers see the old file or the new one."""
    text = json.dumps(snapshot, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    _atomic_write(path, text.encode("utf-8"))


class _SnapshotCollector:
    """A prometheus_client collector over one snapshot and the activity histogram."""

    def __init__(self, snapshot: Mapping[str, Any], activity: Activity) -> None:
        self._snapshot = snapshot
        self._activity = activity

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        watches: Mapping[str, Mapping[str, Any]] = snap["watches"]
        yield from self._per_watch(watches)

        workers = GaugeMetricFamily(
            METRIC_PREFIX + "workers", "Pool workers by state.", labels=["state"]
        )
        busy = int(snap["workers"]["busy"])
        workers.add_metric(["busy"], busy)
        workers.add_metric(["idle"], max(0, int(snap["workers"]["total"]) - busy))
        yield workers

        yield GaugeMetricFamily(
            METRIC_PREFIX + "paused",
            "1 while intake is paused (watchd pause), else 0.",
            value=1 if snap["paused"] else 0,
        )
        yield GaugeMetricFamily(METRIC_PREFIX + "up", "1 while the daemon runs.", value=1)
        started = datetime.fromisoformat(snap["started_at"].replace("Z", "+00:00"))
        yield GaugeMetricFamily(
            METRIC_PREFIX + "start_time_seconds",
            "Start time of the daemon since the unix epoch, in seconds.",
            value=started.timestamp(),
        )

        throughput = GaugeMetricFamily(
            METRIC_PREFIX + "throughput_files_per_second",
            "Files finished (done or failed) per second over the window.",
            labels=["window"],
        )
        throughput.add_metric(["1m"], snap["throughput"]["files_per_second_1m"])
        throughput.add_metric(["15m"], snap["throughput"]["files_per_second_15m"])
        yield throughput

        yield _histogram_family(
            "drop_to_output_seconds",
            "Seconds from a file's drop to its output, per watch, since the daemon started.",
            LATENCY_BUCKETS,
            self._activity.histogram(),
            watches,
        )

        yield from self._queue_families(watches)

        online = GaugeMetricFamily(
            METRIC_PREFIX + "workers_online",
            "Worker processes online, per host (one host for the local pool; per Dask host).",
            labels=["host"],
        )
        for host, count in snap["pool"].get("workers_by_host", {}).items():
            online.add_metric([host], count)
        yield online

        info = GaugeMetricFamily(
            METRIC_PREFIX + "build_info",
            "Always 1; the labels say which watchd runs, on which Python, with which pool.",
            labels=["version", "python_version", "backend"],
        )
        info.add_metric([snap["watchd_version"], platform.python_version(), snap["backend"]], 1)
        yield info

        if "hooks" in snap:
            hooks = CounterMetricFamily(
                METRIC_PREFIX + "hooks",
                "Completion hooks since the daemon started, by hook and outcome.",
                labels=["hook", "outcome"],
            )
            for hook, outcomes in snap["hooks"].items():
                for outcome, count in outcomes.items():
                    hooks.add_metric([hook, outcome], count)
            yield hooks

    def _queue_families(self, watches: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        """What Celery's and Dramatiq's exporters show: retries by reason, and time
        waiting in the queue apart from time running in a worker."""
        retries = CounterMetricFamily(
            METRIC_PREFIX + "file_retries",
            "Attempts given back to the queue since the daemon started, by watch and reason.",
            labels=["watch", "reason"],
        )
        recorded = self._activity.retries()
        for name in sorted(set(watches) | {w for w, _ in recorded}):
            for reason in RETRY_REASONS:
                retries.add_metric([name, reason], recorded.get((name, reason), 0))
        yield retries
        for family, help_text, bounds, histograms in (
            (
                "queue_wait_seconds",
                "Seconds from a file's recording to the start of an attempt (earlier attempts "
                "and back-off included), per watch, since the daemon started.",
                QUEUE_WAIT_BUCKETS,
                self._activity.queue_wait_histogram(),
            ),
            (
                "run_seconds",
                "Seconds one attempt spent in a worker, per watch, since the daemon started.",
                RUN_BUCKETS,
                self._activity.run_histogram(),
            ),
        ):
            yield _histogram_family(family, help_text, bounds, histograms, watches)

    @staticmethod
    def _per_watch(watches: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        files_total = CounterMetricFamily(
            METRIC_PREFIX + "files",
            "Files finished, by outcome (from the ledger).",
            labels=["watch", "outcome"],
        )
        bytes_in = CounterMetricFamily(
            METRIC_PREFIX + "bytes_in", "Bytes of input read.", labels=["watch"]
        )
        bytes_out = CounterMetricFamily(
            METRIC_PREFIX + "bytes_out", "Bytes of output written.", labels=["watch"]
        )
        stuck = GaugeMetricFamily(
            METRIC_PREFIX + "files_stuck",
            "Names in the inbox that kept changing for longer than stuck_after (not taken).",
            labels=["watch"],
        )
        files = GaugeMetricFamily(
            METRIC_PREFIX + "files_in_state",
            "Files in the ledger, by state.",
            labels=["watch", "state"],
        )
        jobs = GaugeMetricFamily(
            METRIC_PREFIX + "jobs", "Jobs in the ledger, by state.", labels=["watch", "state"]
        )
        for name, figures in watches.items():
            totals = figures["totals"]
            files_total.add_metric([name, "done"], totals["files_done"])
            files_total.add_metric([name, "failed"], totals["files_failed"])
            bytes_in.add_metric([name], totals["bytes_in"])
            bytes_out.add_metric([name], totals["bytes_out"])
            for state in FILE_STATES:
                files.add_metric([name, state], figures["files"][state])
            for state in JOB_STATES:
                jobs.add_metric([name, state], figures["jobs"][state])
            stuck.add_metric([name], figures.get("stuck", 0))
        yield from (files_total, bytes_in, bytes_out, files, jobs, stuck)


def render_metrics(snapshot: Mapping[str, Any], activity: Activity) -> bytes:
    """The snapshot as Prometheus text exposition format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, activity))
    return generate_latest(registry)


def write_metrics_file(path: Path, snapshot: Mapping[str, Any], activity: Activity) -> None:
    """Write the metrics atomically, e.g. for node_exporter's textfile collector (``*.prom``)."""
    _atomic_write(path, render_metrics(snapshot, activity))
