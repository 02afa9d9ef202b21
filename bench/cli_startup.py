"""`watchd status` start-up: the whole process, as scripts and health checks run it.

Times ``watchd status --config FILE`` with no daemon running (it exits 3 after the same
imports and the same reading of the configuration as a real call, without waiting on a
daemon's answer) against a bare interpreter, ``--runs`` times each, interleaved so that a
change in the machine's load touches every command alike. Bytecode is compiled first and
the commands run without ``PYTHONDONTWRITEBYTECODE``, as a pip install leaves watchd
(this machine's environment sets that variable, which would make every run compile every
module and measure the compiler). "As installed" runs without ``site`` and with the venv's
site-packages on ``PYTHONPATH``, which is how a non-editable install finds watchd: the dev
venv's editable finder costs a few milliseconds of its own.

The issue's target: under 80 ms. A benchmark, not a timed test; the numbers go to
``bench/results/cli-status-DATE.json``.

    .venv/bin/python bench/cli_startup.py            # 30 runs each
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from ledger_status import host_facts  # noqa: E402

CONFIG = """\
[daemon]
state_dir = "{state}"

[[watch]]
name = "photos"
inbox = "{root}/inbox"
outbox = "{root}/outbox"
"""


def commands(config: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (argv, extra environment)."""
    python = sys.executable
    site_packages = sysconfig.get_paths()["purelib"]
    status = ["-m", "watchd", "status", "--config", str(config)]
    return {
        "watchd status (dev venv, editable finder)": ([python, *status], {}),
        "watchd status as installed (python -S, site-packages on PYTHONPATH)": (
            [python, "-S", *status],
            {"PYTHONPATH": f"{REPO}{os.pathsep}{site_packages}"},
        ),
        "python -c pass": ([python, "-c", "pass"], {}),
        "python -S -c pass": ([python, "-S", "-c", "pass"], {}),
    }


def run_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    compileall.compile_dir(str(REPO / "watchd"), quiet=1)
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="watchd-cli-") as tmp:
        root = Path(tmp)
        config = root / "config.toml"
        config.write_text(CONFIG.format(state=root / "state", root=root))
        table = commands(config)
        envs = {name: {**base_env, **extra} for name, (_, extra) in table.items()}
        times: dict[str, list[float]] = {name: [] for name in table}
        for round_no in range(args.warmup + args.runs):
            for name, (argv, _) in table.items():
                took = run_once(argv, envs[name])
                if round_no >= args.warmup:
                    times[name].append(took * 1000)
        results = {
            name: {
                "median_ms": round(statistics.median(ms), 1),
                "mean_ms": round(statistics.fmean(ms), 1),
                "stdev_ms": round(statistics.stdev(ms), 1),
                "min_ms": round(min(ms), 1),
                "p95_ms": round(sorted(ms)[int(0.95 * (len(ms) - 1))], 1),
                "runs": len(ms),
            }
            for name, ms in times.items()
        }
        report = {"host": host_facts(root), "runs": args.runs, "results": results}
    for name, row in results.items():
        print(
            f"{name:70} median {row['median_ms']:6.1f} ms  min {row['min_ms']:6.1f}  "
            f"p95 {row['p95_ms']:6.1f}  mean {row['mean_ms']:6.1f} ± {row['stdev_ms']}"
        )
    out = REPO / "bench" / "results" / f"cli-status-{time.strftime('%Y-%m-%dT%H%M')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
