"""What bench_launch.py's parts share: the job scripts, the report, and fit() with a time limit."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fitdock import Estimator, Run

FIT_LIMIT_S = 30.0  # a fit() still running after this is counted as hung, and left behind

SLEEP_SCRIPT = """\
import os, signal, sys, time
{trap}
pid_file = sys.argv[1]
with open(pid_file + ".tmp", "w") as handle:
    print(os.getpid(), os.getppid(), os.environ.get("FITDOCK_REAPER_PID", ""), file=handle)
os.replace(pid_file + ".tmp", pid_file)
while True:
    time.sleep(3600)
"""
SCRIPTS = {
    "noop.py": "",
    "sleep_obey.py": SLEEP_SCRIPT.format(trap="# SIGTERM keeps its default action: exit"),
    "sleep_trap.py": SLEEP_SCRIPT.format(trap="signal.signal(signal.SIGTERM, lambda *_: None)"),
}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
@dataclass
class Report:
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def emit(self, text: str) -> None:
        print(text, flush=True)
        self.data.setdefault("lines", []).append(text)

    def verdict(self, key: str, value: float, target: float) -> str:
        ok = value <= target
        self.data.setdefault("checks", {})[key] = {"value": value, "target": target, "ok": ok}
        return "OK" if ok else "MISS"

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


@dataclass
class Fitted:
    """One fit(): the run (None if fit() hung) and perf_counter() before and after it."""

    run: Run | None
    start: float
    end: float


def fit_within(estimator: Estimator, limit: float, report: Report) -> Fitted:
    """fit() in a daemon thread, so that a job that never ends cannot hang the benchmark."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["run"] = estimator.fit()
        except BaseException as exc:  # re-raised below, in the benchmark's thread
            box["error"] = exc
        box["end"] = time.perf_counter()

    thread = threading.Thread(target=call, name="bench-fit", daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(limit)
    if "error" in box:
        raise box["error"]
    if thread.is_alive():
        report.warn(f"{estimator!r}: fit() still running after {limit:g} s; counted as {limit:g} s")
        return Fitted(None, start, start + limit)
    return Fitted(box["run"], start, box["end"])
