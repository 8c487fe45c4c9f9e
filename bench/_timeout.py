"""Part (c) of bench_launch.py: timeout precision, deadline -> the job's last process gone."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from _common import FIT_LIMIT_S, PidWatcher, Report, fit_within

if TYPE_CHECKING:
    from fitdock import Run

TARGET_TIMEOUT_S = 0.5
MAX_RUN_S = 1.0
GRACE_S = 1.0
WATCH_LIMIT_S = 30.0  # give up on a (c) process that outlives this


class ExitWatcher(PidWatcher):
    """Wait for the pid file a sleep script writes (its pid, its rank wrapper's, the
    reaper's) and stamp, with perf_counter(), the moment each of those processes exits."""

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file
        super().__init__(WATCH_LIMIT_S, time.perf_counter)

    def pids(self) -> list[int]:
        return self.read_pid_files([self.pid_file])


def timeout_run(work: Path, pid_dir: Path, script: str, report: Report) -> dict[str, float]:
    """One timed-out run: seconds from the deadline (max_run after the call to fit()) to the
    exit of the job's last process, and to fit()'s return."""
    from fitdock import Estimator, RunStatus

    pid_file = pid_dir / f"{Path(script).stem}-{time.monotonic_ns()}.pid"
    estimator = Estimator(
        work,
        entry_script=script,
        script_params=[str(pid_file)],
        user_managed=True,
        max_run_duration_seconds=MAX_RUN_S,
        termination_grace_seconds=GRACE_S,
    )
    watcher = ExitWatcher(pid_file)
    fitted = fit_within(estimator, FIT_LIMIT_S, report)
    deadline = fitted.start + MAX_RUN_S
    gone = watcher.last_exit(timeout=5.0)
    if gone is None:
        report.warn(f"(c) {script}: a job process outlived fit(); counted as gone when fit() ended")
        gone = fitted.end
    result = {"gone_s": gone - deadline, "fit_returned_s": fitted.end - deadline}
    run = fitted.run
    if run is not None:
        if run.status is not RunStatus.TIMED_OUT:
            report.warn(f"(c) {script}: run {run.id} ended {run.status}, not TimedOut")
        result["gone_after_record_deadline_s"] = gone - record_deadline(run)
    return result


def record_deadline(run: Run) -> float:
    """The deadline by the run record: ``started_at`` + max_run, on the perf_counter() clock."""
    started = dt.datetime.fromisoformat(run.record["started_at"]).timestamp()
    return started + MAX_RUN_S - (time.time() - time.perf_counter())


def report_timeout(report: Report, label: str, runs: list[dict[str, float]]) -> None:
    keys = sorted({key for run in runs for key in run})
    median = {key: statistics.median(r[key] for r in runs if key in r) for key in keys}
    report.data.setdefault("timeout", {})[label] = {"median": median, "runs": runs}
    gone = median["gone_s"]
    minus = gone - GRACE_S
    if label == "obeyed":  # ended by the SIGTERM: no grace to subtract, judge the raw delay
        verdict = report.verdict("c_obeyed_gone_s", gone, TARGET_TIMEOUT_S)
        target = f"target: gone <= {TARGET_TIMEOUT_S} s after the deadline, no grace needed"
    else:
        verdict = report.verdict("c_trapped_minus_grace_s", minus, TARGET_TIMEOUT_S)
        target = f"target <= {TARGET_TIMEOUT_S} s"
    report.emit(
        f"bench (c) timeout, SIGTERM {label}: deadline -> last process gone {gone:.3f} s, "
        f"minus grace {minus:.3f} s, fit() returned at {median['fit_returned_s']:.3f} s "
        f"({target}) {verdict}"
    )


def bench_timeout(work: Path, pid_dir: Path, report: Report, repeat: int) -> None:
    pid_dir.mkdir()
    runs: dict[str, list[dict[str, float]]] = {"obeyed": [], "trapped": []}
    for _ in range(repeat):
        runs["obeyed"].append(timeout_run(work, pid_dir, "sleep_obey.py", report))
        runs["trapped"].append(timeout_run(work, pid_dir, "sleep_trap.py", report))
    for label, results in runs.items():
        report_timeout(report, label, results)
