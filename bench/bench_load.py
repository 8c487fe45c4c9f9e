"""Load at full size (issue 15), with the figures: the parts too slow for CI.

    python bench/bench_load.py [--only NAME ...] [--json PATH]

Each part runs the workload of tests/hardening/test_load.py (where CI runs it smaller) at
full size, in a FITDOCK_HOME of its own, checks it the same way and prints its figures:

    fits      16 concurrent fits (every other one 2-rank MPI) on one cold environment
    metrics   4 ranks logging 100,000 metrics each; every line whole, in order
    store     5,000 runs: `fitdock runs list` (target < 0.5 s), Run.list() (target < 1 s)
    pipeline  200 no-op steps with a fan-out of 50, then resubmitted: all 200 reused
    serve     the scoring service, 8 clients for 30 s, bad requests mixed in: RSS flat
    shutdown  the time from the last rank's exit record to fit()'s return (mpirun, torchrun)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "hardening")]

import test_load as load  # noqa: E402 - the workloads, shared with the CI tests
from _common import Report  # noqa: E402

TARGET_LIST_CLI_S = 0.5
TARGET_LIST_API_S = 1.0


def part_fits(report: Report, home: Path, scratch: Path) -> None:
    started = time.perf_counter()
    runs = load.concurrent_fits(scratch / "src", 16)
    wall = time.perf_counter() - started
    load.check_concurrent_fits(runs, home)
    build = max(r.record["environment_build"]["seconds"] for r in runs)
    report.emit(
        f"fits: 16 concurrent fits (8 of them 2-rank MPI) on one cold environment: "
        f"{wall:.1f} s in all, 1 build ({build:.1f} s), 16 records Completed"
    )


def part_metrics(report: Report, home: Path, scratch: Path) -> None:
    started = time.perf_counter()
    run = load.many_metrics(scratch / "src", ranks=4, lines=100_000)
    wall = time.perf_counter() - started
    load.check_metrics(run, ranks=4, lines=100_000)
    size = (run.run_dir / "metrics.jsonl").stat().st_size
    report.emit(
        f"metrics: 4 ranks x 100,000 log() calls in {wall:.1f} s; 400,000 lines "
        f"({size / 2**20:.1f} MiB) all whole and in order per rank"
    )


def part_store(report: Report, home: Path, scratch: Path) -> None:
    from fitdock import Estimator, Run

    src = load.write_script(scratch / "src", "print('hi')\n")
    first = Estimator(src, entry_script="train.py", user_managed=True).fit()
    template = json.loads((first.run_dir / "run.json").read_text())
    started = time.perf_counter()
    load.make_store(home, template, 4_999)
    made = time.perf_counter() - started
    cli, cpu = [], []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli.append(load.timed(lambda: load.runs_list_cli())[0])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    api = [load.timed(Run.list)[0] for _ in range(5)]
    count = len(Run.list())
    cli_s, api_s = statistics.median(cli), statistics.median(api)
    cli_ok = report.verdict("list_cli_s", cli_s, TARGET_LIST_CLI_S)
    report.emit(
        f"store: {count} runs (written in {made:.1f} s): `fitdock runs list` median {cli_s:.3f} s "
        f"(target < {TARGET_LIST_CLI_S} s) {cli_ok}, CPU {statistics.median(cpu):.3f} s; "
        f"Run.list() median {api_s:.3f} s (target < {TARGET_LIST_API_S} s) "
        f"{report.verdict('list_api_s', api_s, TARGET_LIST_API_S)}"
    )


def part_pipeline(report: Report, home: Path, scratch: Path) -> None:
    (scratch / "work").mkdir()
    pipeline = load.big_pipeline(scratch / "work", steps=200, fan_out=50)
    started = time.perf_counter()
    run = pipeline.submit(wait=True, regenerate_outputs=True)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = pipeline.submit(wait=True)
    second = time.perf_counter() - started
    steps = len(run.record.steps)
    reused = sum(1 for state in again.record.steps.values() if state.reused)
    report.emit(
        f"pipeline: {steps} steps, fan-out 50: {run.status.value} in {first:.1f} s; "
        f"resubmitted: {again.status.value}, {reused} reused, in {second:.2f} s"
    )
    if run.status.value != "Completed" or reused != 200:
        report.warn(f"pipeline: {run.status.value}, {reused} of 200 reused")


def part_serve(report: Report, home: Path, scratch: Path) -> None:
    with load.scoring_service(scratch) as (url, pid):
        load.hammer(url, clients=8, seconds=2.0)
        samples = [load.rss_kib(pid)]
        counts: dict[str, Any] = {"good": 0, "bad": 0, "failed_good": 0, "bad_not_4xx": 0}
        for _ in range(6):  # 6 x 5 s, RSS after each
            got = load.hammer(url, clients=8, seconds=5.0)
            for key in counts:
                counts[key] += got[key]
            samples.append(load.rss_kib(pid))
    report.emit(
        f"serve: 8 clients for 30 s: {counts['good']} good requests, "
        f"{counts['failed_good']} failed; {counts['bad']} bad ones, "
        f"{counts['bad_not_4xx']} not answered 4xx; server RSS (MiB) every 5 s: "
        + ", ".join(f"{s / 1024:.1f}" for s in samples)
    )
    if counts["failed_good"] or counts["bad_not_4xx"]:
        report.warn(f"serve: {counts}")


def part_shutdown(report: Report, home: Path, scratch: Path) -> None:
    from fitdock import Estimator, Mpi, PyTorchConfiguration

    src = load.write_script(scratch / "src", "print('hi')\n")
    for name, make in (
        ("mpirun (Open MPI)", lambda: Mpi(mpirun="/usr/bin/mpirun")),
        ("mpirun (MPICH)", Mpi),
        ("torchrun", PyTorchConfiguration),
    ):
        took = []
        for _ in range(5):
            run = Estimator(
                src,
                entry_script="train.py",
                user_managed=True,
                process_count_per_node=2,
                distributed_training=make(),
            ).fit()
            returned = time.time()
            took.append(returned - max(r["ended"] for r in run.record["ranks"].values()))
        report.emit(
            f"shutdown: {name}: last rank's exit record -> fit() returned: median "
            f"{statistics.median(took):.3f} s, max {max(took):.3f} s"
        )


PARTS: dict[str, Callable[[Report, Path, Path], None]] = {
    "fits": part_fits,
    "metrics": part_metrics,
    "store": part_store,
    "pipeline": part_pipeline,
    "serve": part_serve,
    "shutdown": part_shutdown,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    ns = parser.parse_args()
    report = Report()
    for name in ns.only:
        with tempfile.TemporaryDirectory(prefix=f"fitdock-bench-{name}-") as folder:
            home, scratch = Path(folder) / "home", Path(folder) / "scratch"
            scratch.mkdir()
            os.environ["FITDOCK_HOME"] = str(home)
            PARTS[name](report, home, scratch)
    for warning in report.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    if ns.json:
        ns.json.write_text(json.dumps(report.data, indent=2))
    misses = [k for k, v in report.data.get("checks", {}).items() if not v["ok"]]
    return 1 if misses or report.warnings else 0


if __name__ == "__main__":
    sys.exit(main())
