"""Part (c) of bench_launch.py: timeout precision, deadline -> the job's last process gone."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import select
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from _common import FIT_LIMIT_S, Report, fit_within

if TYPE_CHECKING:
    from fitdock import Run

TARGET_TIMEOUT_S = 0.5
MAX_RUN_S = 1.0
GRACE_S = 1.0
WATCH_LIMIT_S = 30.0  # give up on a (c) process that outlives this


class ExitWatcher:
    """In a thread: wait for the pid file a sleep script writes (its pid, its rank wrapper's,
    the reaper's) and stamp, with perf_counter(), the moment each of those processes exits."""

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.exits: dict[int, float] = {}
        self.pending = 0
        self._thread = threading.Thread(target=self._watch, name="bench-watch", daemon=True)
        self._thread.start()

    def _read_pids(self) -> list[int]:
        end = time.monotonic() + WATCH_LIMIT_S
        while time.monotonic() < end:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return [int(word) for word in self.pid_file.read_text().split()]
            time.sleep(0.002)
        return []

    def _watch(self) -> None:
        fds: dict[int, int] = {}
        for pid in self._read_pids():
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                self.exits[pid] = time.perf_counter()
        while fds:
            ready, _, _ = select.select(list(fds), [], [], WATCH_LIMIT_S)
            if not ready:
                break
            now = time.perf_counter()
            for fd in ready:
                self.exits[fds.pop(fd)] = now
                os.close(fd)
        self.pending = len(fds)
        for fd in fds:
            os.close(fd)

    def last_exit(self, timeout: float) -> float | None:
        """When the last watched process exited; None if one is unaccounted for."""
        self._thread.join(timeout)
        if self._thread.is_alive() or self.pending or not self.exits:
            return None
        return max(self.exits.values())


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
