"""Supervise one launched job: deadline, cancel, fail-fast, and the final record.

The supervisor runs in the process that called ``fit()`` (a thread of it). It
holds the run's ``supervisor.lock`` while the job lives; if that process dies,
the reaper stops the job and the lock tells later readers the run was lost.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

from fitdock.estimators.spec import JobSpec
from fitdock.launchers.plan import LaunchPlan
from fitdock.launchers.process import JobProcess
from fitdock.launchers.variables import base_environment
from fitdock.runs.follow import tail
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, SupervisorLock, now_iso

POLL_SECONDS = 0.1
FAIL_FAST_GRACE = 2.0  # SIGTERM -> SIGKILL for the other ranks when one rank failed


def read_rank_exits(run: RunDir) -> dict[int, dict[str, Any]]:
    exits: dict[int, dict[str, Any]] = {}
    for path in run.logs.glob("rank_*.exit.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        exits[int(record["rank"])] = record
    return exits


def first_failure(exits: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    failed = [r for r in exits.values() if r["exit_code"] != 0]
    return min(failed, key=lambda r: r["ended"]) if failed else None


class Supervisor:
    def __init__(self, run: RunDir, plan: LaunchPlan, spec: JobSpec, lock: SupervisorLock) -> None:
        self.run_dir = run
        self.plan = plan
        self.spec = spec
        self.lock = lock
        self.cancel_requested = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        self.cancel_requested.set()

    def run(self) -> None:
        try:
            code, reason = self._supervise()
            self._finish(code, reason)
        except BaseException as exc:
            self.run_dir.update(
                status=RunStatus.FAILED.value,
                ended_at=now_iso(),
                error={
                    "reason": "supervisor_error",
                    "message": f"fitdock supervisor error: {exc!r}",
                },
            )
            raise
        finally:
            self.lock.release()
            self.done.set()

    # ------------------------------------------------------------------ loop
    def _supervise(self) -> tuple[int, RunStatus | None]:
        env = {**base_environment(), **self.plan.env}
        job = JobProcess(
            self.plan.argv, env=env, cwd=self.plan.cwd, log_path=self.run_dir.logs / "launcher.log"
        )
        self.run_dir.update(
            status=RunStatus.RUNNING.value, started_at=now_iso(), reaper_pid=job.pid
        )
        limit = self.spec.max_run_duration_seconds
        deadline = time.monotonic() + limit if limit else None
        reason: RunStatus | None = None
        kill_at = 0.0
        killed = False
        try:
            while True:
                wake = deadline if reason is None else (None if killed else kill_at)
                timeout = POLL_SECONDS
                if wake is not None:
                    timeout = max(0.0, min(timeout, wake - time.monotonic()))
                code = job.wait(timeout)
                if code is not None:
                    return code, reason
                now = time.monotonic()
                if reason is None:
                    reason, grace = self._stop_reason(now, deadline)
                    if reason is not None:
                        job.signal(signal.SIGTERM)
                        kill_at = now + grace
                elif not killed and now >= kill_at:
                    job.signal(signal.SIGKILL)
                    killed = True
        finally:
            job.close()

    def _stop_reason(self, now: float, deadline: float | None) -> tuple[RunStatus | None, float]:
        grace = self.spec.termination_grace_seconds
        if self.cancel_requested.is_set() or self.run_dir.cancel_path.exists():
            return RunStatus.CANCELED, grace
        if deadline is not None and now >= deadline:
            return RunStatus.TIMED_OUT, grace
        if first_failure(read_rank_exits(self.run_dir)) is not None:
            return RunStatus.FAILED, FAIL_FAST_GRACE
        return None, 0.0

    # ------------------------------------------------------------------ record
    def _finish(self, code: int, reason: RunStatus | None) -> None:
        exits = read_rank_exits(self.run_dir)
        ranks = {str(rank): exits.get(rank) for rank in range(self.plan.world_size)}
        status = reason
        if status is None:
            all_ok = code == 0 and all(
                r is not None and r["exit_code"] == 0 for r in ranks.values()
            )
            status = RunStatus.COMPLETED if all_ok else RunStatus.FAILED
        error = self._error(status, code, exits)
        self.run_dir.update(
            status=status.value, ended_at=now_iso(), exit_code=code, ranks=ranks, error=error
        )

    def _error(
        self, status: RunStatus, code: int, exits: dict[int, dict[str, Any]]
    ) -> dict[str, Any] | None:
        if status is RunStatus.COMPLETED:
            return None
        if status is RunStatus.CANCELED:
            return {"reason": "canceled", "message": "canceled by request"}
        if status is RunStatus.TIMED_OUT:
            limit = self.spec.max_run_duration_seconds
            return {"reason": "timeout", "message": f"exceeded max_run_duration_seconds={limit:g}"}
        failure = first_failure(exits)
        missing = [rank for rank in range(self.plan.world_size) if rank not in exits]
        if failure is None and code == 0 and missing:
            return {
                "reason": "rank_unreported",
                "ranks": missing,
                "message": f"rank(s) {missing} ended without reporting an exit status",
            }
        if failure is None:
            launcher_tail = tail(self.run_dir.logs / "launcher.log")
            return {
                "reason": "launcher_failed",
                "exit_code": code,
                "stderr_tail": launcher_tail,
                "message": f"the launcher exited with code {code}"
                + (f": {launcher_tail.splitlines()[-1]}" if launcher_tail else ""),
            }
        rank = failure["rank"]
        stderr_tail = tail(self.run_dir.logs / f"rank_{rank}.stderr.log")
        how = (
            f"signal {failure['signal']}"
            if failure["signal"]
            else f"exit code {failure['exit_code']}"
        )
        last = stderr_tail.splitlines()[-1] if stderr_tail else "(no stderr)"
        return {
            "reason": "rank_failed",
            "rank": rank,
            "host": failure["host"],
            "exit_code": failure["exit_code"],
            "signal": failure["signal"],
            "stderr_tail": stderr_tail,
            "message": f"rank {rank} on {failure['host']} failed with {how}: {last}",
        }
