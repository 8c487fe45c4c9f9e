"""``@step`` functions: per-step overhead of a chain, and the signed payloads they pass.

    python bench/bench_steps.py [--repeat N] [--repeat-p N] [--dir FOLDER] [--only o|p]
                                [--json PATH]

(o) 50 no-op ``@step`` functions in a chain (each takes the previous one's
    ``DelayedReturn`` and returns a small int), ``Pipeline(name, steps=[last]).start()``
    then ``run.wait()``, against 50 ``python -c pass`` run one after another: time added a
    step, target <= 60 ms. A warm-up round (a 3-step chain and 3 plain runs) first, then
    the median of ``--repeat`` rounds (default 3); the two sides alternate within a round.
(p) bench_payload.py's line: a 100 MB NumPy argument serialised, signed and verified
    against ``pickle.dump``, best of ``--repeat-p`` rounds (default 5), target <= 1.3x.

A ``@step`` pipeline copies the current working directory as its steps' workspace, so
(o) runs from an empty folder; each line has its own ``FITDOCK_HOME`` in a temporary
folder (under ``--dir``), removed at the end. The exit status is 0 even on a MISS. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Report, machine
from bench_payload import REPEAT as REPEAT_P
from bench_payload import bench_p

CHAIN = 50
WARM_UP_CHAIN = 3
TARGET_STEP_MS = 60.0
PIPELINE = "bench-steps"


def bump(previous: int) -> int:
    """The step body: as little as a step can do with its input."""
    return previous + 1


def fitdock_chain(report: Report, steps: int) -> float:
    """Start and wait for a chain of ``steps`` ``@step`` functions; the wall time."""
    from fitdock.errors import RunFailedError
    from fitdock.pipelines import Pipeline, step

    value: Any = 0
    for i in range(steps):
        value = step(name=f"s{i:02d}")(bump)(value)
    started = time.perf_counter()
    run = Pipeline(PIPELINE, steps=[value]).start()
    try:
        run.wait()
    except RunFailedError as exc:
        report.warn(f"(o) pipeline {run.id} did not complete: {exc}")
        return time.perf_counter() - started
    took = time.perf_counter() - started
    got = run.result(f"s{steps - 1:02d}")
    if got != steps:
        report.warn(f"(o) the last step of {run.id} returned {got!r}, not {steps}")
    return took


def plain_chain(steps: int) -> float:
    """``python -c pass`` ``steps`` times, one after another; the wall time."""
    started = time.perf_counter()
    for _ in range(steps):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def bench_o(report: Report, scratch: Path, repeat: int) -> None:
    work = scratch / "cwd"  # the steps' workspace: an empty folder
    work.mkdir()
    before = Path.cwd()
    os.chdir(work)
    try:
        warm = {"fitdock_s": fitdock_chain(report, WARM_UP_CHAIN), "plain_s": plain_chain(3)}
        fitdock_s: list[float] = []
        plain_s: list[float] = []
        for round_ in range(repeat):
            if round_ % 2:  # drift falls on both sides alike
                plain_s.append(plain_chain(CHAIN))
                fitdock_s.append(fitdock_chain(report, CHAIN))
            else:
                fitdock_s.append(fitdock_chain(report, CHAIN))
                plain_s.append(plain_chain(CHAIN))
    finally:
        os.chdir(before)
    fitdock, plain = statistics.median(fitdock_s), statistics.median(plain_s)
    added = (fitdock - plain) / CHAIN * 1000
    per_round = [(f - p) / CHAIN * 1000 for f, p in zip(fitdock_s, plain_s, strict=True)]
    verdict = report.verdict("o_step_added_ms", added, TARGET_STEP_MS)
    report.data["o"] = {
        "steps": CHAIN,
        "fitdock_s": fitdock_s,
        "plain_s": plain_s,
        "added_ms_per_round": per_round,
        "warm_up": warm,
    }
    report.emit(
        f"bench (o) {CHAIN} no-op @step functions in a chain: fitdock {fitdock:.2f} s, "
        f"python -c pass {plain:.2f} s, added {added:.1f} ms a step "
        f"(target <= {TARGET_STEP_MS:.0f} ms) {verdict}; per round {min(per_round):.1f}.."
        f"{max(per_round):.1f} ms, warm-up {WARM_UP_CHAIN}-step chain {warm['fitdock_s']:.2f} s"
    )


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
LINES: dict[str, Callable[[Report, Path, int], None]] = {"o": bench_o, "p": bench_p}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="(o) measured rounds (default 3)")
    parser.add_argument(
        "--repeat-p", type=int, default=REPEAT_P, help=f"(p) rounds (default {REPEAT_P})"
    )
    parser.add_argument("--dir", type=Path, help="where to make FITDOCK_HOME and the files")
    parser.add_argument("--only", action="append", choices=sorted(LINES), help="run these lines")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.repeat_p < 1:
        parser.error("--repeat and --repeat-p must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.json.resolve() if args.json else None
    report = Report(data={"repeat": args.repeat, "repeat_p": args.repeat_p})
    rounds = {"o": args.repeat, "p": args.repeat_p}
    for name in args.only or sorted(LINES):
        with tempfile.TemporaryDirectory(prefix=f"fitdock-bench-{name}-", dir=args.dir) as tmp:
            scratch = Path(tmp)
            os.environ["FITDOCK_HOME"] = str(scratch / "fitdock-home")
            LINES[name](report, scratch, rounds[name])
    report.finish(json_path, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
