"""The operator commands of ``watchd``: status, jobs, job, cancel, retry, pause, resume,
submit, stats, prune, reload — thin shells over the control client.

Every command prints a readable table, or with ``--json`` the daemon's answer
as one JSON document for scripts. Exit codes (also in the README): 0 success,
1 the job finished with failures (``job``, ``submit --wait``), 2 usage error,
3 the daemon cannot be reached (the message names the socket and the reason).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from watchd.locate import DaemonPaths
from watchd.states import FINISHED_JOB_STATES, JOB_STATES
from watchd.validate import ALIGNS, CROPS, FORMATS, MAX_PRIORITY, MIN_PRIORITY

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: How often ``--follow`` / ``--wait`` ask the daemon for progress (seconds).
FOLLOW_INTERVAL = 0.5


def add_operator_commands(
    commands: Any, config_arg: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register the operator subcommands on the main parser's subparsers."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        config_arg(parser)
        parser.add_argument("--socket", type=Path, metavar="PATH", help="control socket to use")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        return parser

    command("status", "what the daemon is doing")
    jobs = command("jobs", "list jobs, newest first")
    jobs.add_argument("--state", choices=JOB_STATES)
    jobs.add_argument("--watch", metavar="NAME")
    jobs.add_argument("--limit", type=_positive_int, default=20)
    jobs.add_argument("--before", type=_positive_int, metavar="ID", help="page: jobs older than ID")
    job = command("job", "one job with every file")
    job.add_argument("id", type=_positive_int, metavar="ID")
    job.add_argument("--follow", action="store_true", help="show progress until the job ends")
    for name, text in (("cancel", "cancel a job's queued files"), ("retry", "retry failed files")):
        command(name, text).add_argument("id", type=_positive_int, metavar="ID")
    approve = command("approve", "send outputs held in the review folder on to the outbox")
    approve.add_argument("id", type=_positive_int, metavar="JOB")
    approve.add_argument("file", type=_positive_int, nargs="?", metavar="FILE", help="one file id")
    reject = command("reject", "fail outputs held for review (originals to the failed folder)")
    reject.add_argument("id", type=_positive_int, metavar="JOB")
    reject.add_argument("file", type=_positive_int, nargs="?", metavar="FILE", help="one file id")
    reject.add_argument("--reason", help="what the failed note says (default: rejected)")
    command("pause", "stop dispatching (intake goes on)")
    command("resume", "start dispatching again")
    command("reload", "re-read the configuration (like SIGHUP)")
    submit = command("submit", "make files on this host a job")
    submit.add_argument("files", nargs="+", type=Path, metavar="FILE")
    submit.add_argument("--watch", metavar="NAME", help="watch whose options and outbox to use")
    submit.add_argument("--move", action="store_true", help="move the files instead of copying")
    submit.add_argument("--name", help="job name (default: the first file's name)")
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends")
    submit.add_argument(
        "--priority",
        type=_priority,
        metavar="N",
        help="-100..100, higher first (default: the folder's watchd.toml, else the watch's)",
    )
    _submit_options(submit)
    command("stats", "the daemon's stats file")
    prune = command("prune", "delete finished jobs from the ledger")
    prune.add_argument("--older-than", type=_days, required=True, metavar="DAYS")


#: ``submit``'s output options: named as a sidecar's keys, sent as its ``options`` and
#: checked by the daemon with a sidecar's rules (docs/routing.md); argparse checks only
#: what is cheap here (choices, numbers).
SUBMIT_OPTION_NAMES = ("model", "format", "background", "crop", "margin", "canvas", "fill", "align")


def _submit_options(submit: argparse.ArgumentParser) -> None:
    group = submit.add_argument_group(
        "output options", "as a job's watchd.toml sets them (default: the watch's)"
    )
    group.add_argument("--model", metavar="NAME", help="the model")
    group.add_argument("--format", choices=FORMATS)
    group.add_argument("--background", metavar="#RRGGBB", help="a colour behind the cutout")
    group.add_argument("--crop", choices=CROPS, help="crop the output to the subject")
    group.add_argument("--margin", type=_margin, metavar="N|N%", help="around the subject")
    group.add_argument("--canvas", metavar="WxH", help="place the subject on a canvas")
    group.add_argument("--fill", type=float, metavar="SHARE", help="the subject's share of it")
    group.add_argument("--align", choices=ALIGNS, help="where the subject sits on the canvas")


def _margin(text: str) -> int | str:
    """Pixels ("24") as an integer; a percentage ("5%") as it is (the daemon checks both)."""
    if text.endswith("%"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected whole pixels (24) or a percentage ("5%"), got {text!r}'
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _priority(text: str) -> int:
    """A job priority, checked here so that a typo is a usage error before anything is sent."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}, got {text!r}"
        ) from None
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(
            f"must be from {MIN_PRIORITY} to {MAX_PRIORITY} (higher runs first), got {value}"
        )
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def socket_path(args: argparse.Namespace, paths: DaemonPaths) -> Path:
    return Path(args.socket) if args.socket else paths.socket


def run_operator_command(
    args: argparse.Namespace, paths: DaemonPaths, out: TextIO = sys.stdout
) -> int:
    """Run one operator command against the daemon at ``paths``; maps daemon errors to exit
    codes with a clear message."""
    from watchd.control_client import ControlClient
    from watchd.errors import DaemonUnreachable, ProtocolError

    if args.command == "stats":
        return _stats(args, paths, out)
    client = ControlClient(socket_path(args, paths))
    try:
        return _OPERATIONS[args.command](client, args, out)
    except DaemonUnreachable as exc:
        print(f"watchd: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ProtocolError as exc:
        print(f"watchd: {exc.message} ({exc.code})", file=sys.stderr)
        return EXIT_USAGE if exc.code in ("bad_request", "not_found", "conflict") else 1


# --- commands ---


def _cluster_row(pool: dict[str, Any]) -> list[tuple[str, str]]:
    """The Dask scheduler and whether dispatch can reach it (nothing for the local pool)."""
    if not pool.get("scheduler"):
        return []
    state = "connected" if pool.get("connected") else f"DISCONNECTED: {pool.get('error')}"
    return [("cluster", f"{pool['scheduler']} {state}")]


def _status(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    status = client.call("status")
    if args.json:
        _print_json(status, out)
        return EXIT_OK
    files, totals = status["files"], status["totals"]
    latency = status["latency_seconds"]
    rows = [
        (
            "daemon",
            f"pid {status['pid']}, up {_duration(status['uptime_seconds'])}, "
            f"watchd {status['watchd_version']}",
        ),
        ("dispatch", "PAUSED" if status["paused"] else "running"),
        (
            "workers",
            f"{status['workers']['busy']} busy / {status['workers']['total']} "
            f"({status['backend']})",
        ),
        *_cluster_row(status.get("pool") or {}),
        (
            "models",
            ", ".join(f"{m} on {status['providers'].get(m, '?')}" for m in status["models"]),
        ),
        (
            "queue",
            f"{files['queued']} queued, {files['running']} running, "
            f"{files['pending'] + files['written'] + files['failing']} finishing",
        ),
        ("jobs", ", ".join(f"{n} {s}" for s, n in status["jobs"].items())),
        (
            "processed",
            f"{totals['files_done']} done, {totals['files_failed']} failed, "
            f"{_size(totals['bytes_in'])} in, {_size(totals['bytes_out'])} out",
        ),
        (
            "throughput",
            f"{status['throughput']['files_per_second_1m']:.2f}/s (1 min), "
            f"{status['throughput']['files_per_second_15m']:.2f}/s (15 min)",
        ),
        ("latency", f"p50 {_seconds(latency['p50'])}, p95 {_seconds(latency['p95'])}"),
    ]
    error = status.get("last_error")
    if error:
        rows.append(("last error", f"{error['at']} job {error['job']}: {error['message']}"))
    stuck = sum(int(w.get("stuck", 0)) for w in status["watches"].values())
    for entry in status.get("stuck_files", []):  # oldest first, at most 20
        note = ", note beside it" if entry.get("note") else ""
        rows.append(
            (
                "stuck",
                f"{entry['path']}: changing for {_duration(entry['changing_seconds'])}, "
                f"not taken{note}",
            )
        )
    if stuck > len(status.get("stuck_files", [])):
        rows.append(("stuck", f"... {stuck} in all"))
    _print_rows(rows, out)
    print(file=out)
    header = ("WATCH", "MODEL", "QUEUED", "RUNNING", "DONE", "FAILED", "INBOX")
    table: list[tuple[str, ...]] = [header]
    for name, watch in status["watches"].items():
        f = watch["files"]
        table.append(
            (
                name,
                watch["model"],
                str(f["queued"]),
                str(f["running"]),
                str(watch["totals"]["files_done"]),
                str(watch["totals"]["files_failed"]),
                watch["inbox"],
            )
        )
    _print_table(table, out)
    return EXIT_OK


def _jobs(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    query = {"limit": args.limit}
    for key in ("state", "watch", "before"):
        if getattr(args, key) is not None:
            query[key] = getattr(args, key)
    answer = client.call("jobs", **query)
    if args.json:
        _print_json(answer, out)
        return EXIT_OK
    table = [("ID", "WATCH", "PRI", "STATE", "FILES", "DONE", "FAILED", "CREATED", "NAME")]
    for job in answer["jobs"]:
        table.append(
            (
                str(job["id"]),
                job["watch"],
                str(job.get("priority", "")),
                job["state"],
                str(job["total"]),
                str(job.get("done", "")),
                str(job.get("failed", "")),
                _when(job["created_at"]),
                job["name"],
            )
        )
    _print_table(table, out)
    if answer.get("next_before"):
        print(f"(more: watchd jobs --before {answer['next_before']})", file=out)
    return EXIT_OK


def _job(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    if args.follow:
        return follow(client, args.id, out, as_json=args.json)
    job = client.call("job", id=args.id)
    if args.json:
        _print_json(job, out)
    else:
        _print_job(job, out)
    return _job_exit(job)


def _print_job(job: Mapping[str, Any], out: TextIO) -> None:
    progress = job["progress"]
    eta = progress.get("eta_seconds")
    _print_rows(
        [
            ("job", f"{job['id']} {job['name']!r} ({job['kind']}, watch {job['watch']})"),
            ("state", job["state"]),
            ("priority", str(job.get("priority", "-"))),
            (
                "progress",
                f"{progress['processed']}/{progress['total']} processed, "
                f"{progress['failed']} failed",
            ),
            ("created", _when(job["created_at"])),
            ("finished", _when(job["finished_at"]) if job.get("finished_at") else "-"),
            ("elapsed", _duration(progress["elapsed_seconds"])),
            ("eta", _duration(eta) if eta is not None else "-"),
        ],
        out,
    )
    print(file=out)
    table = [("FILE", "STATE", "TRIES", "INPUT", "QUALITY", "OUTPUT / ERROR")]
    for f in job["files"]:
        detail = (
            f.get("error") if f["state"] in ("failed", "failing", "review") else f.get("output")
        )
        if f.get("reused_from") and detail:  # the content cache's outputs of an earlier file
            detail = f"{detail} (reused from file {f['reused_from']})"
        row = (str(f["id"]), f["state"], str(f["attempts"]), f["rel"], _quality(f.get("quality")))
        table.append((*row, str(detail or "")))
    _print_table(table, out)


def _quality(pages: Sequence[Mapping[str, Any]] | None) -> str:
    """The first output's figures, short: ``cov 0.48 unc 0.03 edges bottom`` (- for none)."""
    if not pages:
        return "-"
    first = pages[0]
    edges = ",".join(first.get("clipped", ())) or "none"
    more = f" (+{len(pages) - 1} pages)" if len(pages) > 1 else ""
    return f"cov {first['coverage']:.2f} unc {first['uncertain']:.2f} edges {edges}{more}"


def _job_exit(job: Mapping[str, Any]) -> int:
    return EXIT_JOB_FAILED if job["state"] in ("failed", "cancelled") else EXIT_OK


def follow(
    client: Any,
    job_id: int,
    out: TextIO,
    *,
    as_json: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show a live progress bar (done/total, rate, ETA) until the job ends; exit like ``job``."""
    from tqdm import tqdm

    job = client.call("job", id=job_id)
    seen = job["progress"]["processed"]
    bar = tqdm(
        total=job["total"],
        initial=seen,
        desc=f"job {job_id}",
        unit="file",
        file=sys.stderr,
        disable=as_json,
        dynamic_ncols=True,
    )
    try:
        while True:
            processed = job["progress"]["processed"]
            bar.update(processed - seen)
            seen = processed
            bar.set_postfix(failed=job["progress"]["failed"], refresh=False)
            if job["state"] in FINISHED_JOB_STATES:
                break
            sleep(FOLLOW_INTERVAL)
            job = client.call("job", id=job_id)
    finally:
        bar.close()
    if as_json:
        _print_json(job, out)
    else:
        print(
            f"job {job_id} {job['state']}: {job['progress']['done']} done, "
            f"{job['progress']['failed']} failed of {job['total']}",
            file=out,
        )
    return _job_exit(job)


def _simple(command: str) -> Callable[[Any, argparse.Namespace, TextIO], int]:
    """A command whose arguments are those given of ``id``, ``file`` and ``reason``."""

    def run(client: Any, args: argparse.Namespace, out: TextIO) -> int:
        given = {name: getattr(args, name, None) for name in ("id", "file", "reason")}
        params = {name: value for name, value in given.items() if value is not None}
        answer = client.call(command, **params)
        if args.json:
            _print_json(answer, out)
        else:
            print(f"{command}: " + ", ".join(f"{k} {v}" for k, v in answer.items()), file=out)
        return EXIT_OK

    return run


def _submit(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    params: dict[str, Any] = {"paths": [str(p.absolute()) for p in args.files], "move": args.move}
    if args.watch:
        params["watch"] = args.watch
    if args.name:
        params["name"] = args.name
    if args.priority is not None:
        params["priority"] = args.priority
    options = {k: getattr(args, k) for k in SUBMIT_OPTION_NAMES if getattr(args, k) is not None}
    if options:
        params["options"] = options
    answer = client.call("submit", **params)
    if args.wait:
        if not args.json:
            print(
                f"submitted job {answer['id']} ({answer['files']} files, watch {answer['watch']})",
                file=out,
            )
        return follow(client, answer["id"], out, as_json=args.json)
    if args.json:
        _print_json(answer, out)
    else:
        print(
            f"submitted job {answer['id']} ({answer['files']} files, watch {answer['watch']}, "
            f"priority {answer.get('priority', '-')}); "
            f"follow it with: watchd job {answer['id']} --follow",
            file=out,
        )
    return EXIT_OK


def _prune(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.call("prune", older_than_days=args.older_than)
    if args.json:
        _print_json(answer, out)
    else:
        print(f"pruned {answer['jobs_deleted']} finished jobs", file=out)
    return EXIT_OK


def _stats(args: argparse.Namespace, paths: DaemonPaths, out: TextIO) -> int:
    """Print the stats file; works without the socket (e.g. for monitoring scripts)."""
    path = paths.stats_file
    try:
        snapshot = json.loads(path.read_text())
    except FileNotFoundError:
        print(
            f"watchd: no stats file at {path} (is the daemon running with this config?)",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except (OSError, ValueError) as exc:
        print(f"watchd: cannot read the stats file {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        _print_json(snapshot, out)
        return EXIT_OK
    age = (
        time.time()
        - datetime.fromisoformat(snapshot["generated_at"].replace("Z", "+00:00")).timestamp()
    )
    _print_rows(
        [
            ("stats file", f"{path} (written {_duration(age)} ago)"),
            ("files", ", ".join(f"{n} {s}" for s, n in snapshot["files"].items() if n)),
            ("totals", ", ".join(f"{k} {v}" for k, v in snapshot["totals"].items())),
            ("throughput", f"{snapshot['throughput']['files_per_second_15m']:.2f}/s (15 min)"),
        ],
        out,
    )
    return EXIT_OK


_OPERATIONS: dict[str, Callable[[Any, argparse.Namespace, TextIO], int]] = {
    "status": _status,
    "jobs": _jobs,
    "job": _job,
    "cancel": _simple("cancel"),
    "retry": _simple("retry"),
    "approve": _simple("approve"),
    "reject": _simple("reject"),
    "pause": _simple("pause"),
    "resume": _simple("resume"),
    "reload": _simple("reload"),
    "submit": _submit,
    "prune": _prune,
}


#: The commands :func:`run_operator_command` runs: they need only where the daemon is.
OPERATOR_COMMANDS = frozenset(_OPERATIONS) | {"stats"}


# --- formatting ---


def _print_json(value: Any, out: TextIO) -> None:
    json.dump(value, out, indent=2, ensure_ascii=False)
    out.write("\n")


def _print_rows(rows: list[tuple[str, str]], out: TextIO) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}", file=out)


def _print_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        print("  ".join(cells).rstrip(), file=out)


def _when(unix: float | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
