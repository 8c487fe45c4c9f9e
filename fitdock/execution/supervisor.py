"""Supervise a launched job: deadline, cancel, fail-fast, hang watchdog, restarts, record.

The supervisor runs in the process that called ``fit()`` (a thread of it). It
holds the run's ``supervisor.lock`` while the job lives; if that process dies,
the reaper stops the job and the lock tells later readers the run was lost.

A job runs as one or more *attempts*. After each, ``policy.decide`` says whether
to start another (``max_restarts``); the next attempt resumes from the run's own
latest checkpoint, and the logs of the earlier one move to ``logs/attempt-<n>/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fitdock.errors import FitdockError, MpiMismatchError
from fitdock.execution.judge import AttemptResult, first_failure, judge, read_rank_exits
from fitdock.execution.policy import Decision, Outcome, decide
from fitdock.process import JobProcess
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, SupervisorLock, copy_read_only, now_iso, remove_tree
from fitdock.specs.job import JobSpec
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.registry import Target
from fitdock.targets.variables import base_environment

POLL_SECONDS = 0.1
FAIL_FAST_GRACE = 2.0  # SIGTERM -> SIGKILL for the other ranks when one rank failed


class Supervisor:
    def __init__(
        self,
        run: RunDir,
        spec: JobSpec,
        lock: SupervisorLock,
        target: Target,
        plan: LaunchPlan,
        resume_dir: Path | None,
        show_output: bool = False,
    ) -> None:
        self.run_dir = run
        self.spec = spec
        self.lock = lock
        self.target = target
        self.plan = plan
        self.resume_dir = resume_dir
        self.show_output = show_output
        self.cancel_requested = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        self.cancel_requested.set()

    def run(self) -> None:
        try:
            supervise = getattr(self.target, "supervise", None)
            if supervise is not None:  # a scheduler runs the attempts (slurm)
                supervise(self)
            else:
                self._attempts()
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

    # ------------------------------------------------------------------ attempts
    def prepare_environment(self) -> bool:
        """Build the environment (a venv, an image) before the first attempt, then plan
        again in it (the MPI launcher is chosen by what the built environment loads);
        False when either failed (the run is then Failed with the message)."""
        prepare = getattr(self.target, "prepare", None)
        if prepare is None:
            return True
        try:
            built = prepare(self.spec, self.run_dir, self.show_output)
        except FitdockError as exc:
            error = {"reason": "environment_build", "message": str(exc)}
            for name in ("step", "log"):
                if getattr(exc, name, None) is not None:
                    error[name] = str(getattr(exc, name))
            self.run_dir.update(status=RunStatus.FAILED.value, ended_at=now_iso(), error=error)
            return False
        self.run_dir.update(environment_build=built)
        try:
            self.plan = self.target.plan(self.spec, self.run_dir, self.resume_dir)
        except FitdockError as exc:
            reason = "mpi_mismatch" if isinstance(exc, MpiMismatchError) else "plan"
            error = {"reason": reason, "message": str(exc)}
            self.run_dir.update(status=RunStatus.FAILED.value, ended_at=now_iso(), error=error)
            return False
        plan = self.plan
        self.run_dir.update(argv=plan.argv, commands=plan.commands, env=plan.env)
        return True

    def _attempts(self) -> None:
        if not self.prepare_environment():
            return
        attempts: list[dict[str, Any]] = []
        number = 1
        while True:
            started = now_iso()
            result = self._attempt(number)
            attempts.append(_attempt_record(number, started, result))
            decision = decide(result.outcome, number, self.spec.max_restarts)
            if decision is Decision.STOP:
                self.run_dir.update(
                    status=result.status.value,
                    ended_at=now_iso(),
                    exit_code=result.exit_code,
                    ranks=result.ranks,
                    error=result.error,
                    attempts=attempts,
                )
                return
            self.run_dir.update(attempts=attempts)
            self._prepare_restart(number)
            number += 1

    def _prepare_restart(self, finished: int) -> None:
        logs = self.run_dir.logs
        archive = logs / f"attempt-{finished}"
        archive.mkdir()
        for path in list(logs.iterdir()):
            if path.is_file():
                shutil.move(str(path), archive / path.name)
        checkpoints = self.run_dir.checkpoints
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            if self.run_dir.resume.exists():
                remove_tree(self.run_dir.resume)
            self.resume_dir = copy_read_only(checkpoints, self.run_dir.resume)
        self.plan = self.target.plan(self.spec, self.run_dir, self.resume_dir)

    def _attempt(self, number: int) -> AttemptResult:
        plan = self.plan
        hook = getattr(self.target, "before_attempt", None)
        try:
            if hook is not None:
                hook(self.spec, self.run_dir)
        except FitdockError as exc:  # e.g. a host could not be reached to stage the run
            error = {"reason": "staging", "message": str(exc)}
            return AttemptResult(Outcome.LAUNCHER_FAILED, 255, {}, error)
        env = {**base_environment(), **plan.env, "FITDOCK_ATTEMPT": str(number)}
        job = JobProcess(
            plan.commands,
            env=env,
            cwd=plan.cwd,
            log_path=self.run_dir.logs / "launcher.log",
            relay_orders=plan.relay_orders,
        )
        self.run_dir.update(
            status=RunStatus.RUNNING.value, started_at=now_iso(), reaper_pid=job.pid, attempt=number
        )
        try:
            code, stopped, detail = self._watch(job)
        finally:
            job.close()
        hook = getattr(self.target, "after_attempt", None)
        if hook is not None:
            hook(self.spec, self.run_dir)
        return judge(self.run_dir.logs, plan.world_size, code, stopped, detail)

    # ------------------------------------------------------------------ one attempt
    def _watch(self, job: JobProcess) -> tuple[int, Outcome | None, str]:
        started = time.monotonic()
        started_wall = time.time()
        limit = self.spec.max_run_duration_seconds
        deadline = started + limit if limit else None
        stopped: Outcome | None = None
        detail = ""
        kill_at = 0.0
        killed = False
        while True:
            wake = deadline if stopped is None else (None if killed else kill_at)
            timeout = (
                POLL_SECONDS
                if wake is None
                else max(0.0, min(POLL_SECONDS, wake - time.monotonic()))
            )
            code = job.wait(timeout)
            if code is not None:
                return code, stopped, detail
            now = time.monotonic()
            if stopped is None:
                stopped, detail, grace = self._stop_reason(now, started_wall, deadline)
                if stopped is not None:
                    job.signal(signal.SIGTERM)
                    kill_at = now + grace
            elif not killed and now >= kill_at:
                job.signal(signal.SIGKILL)
                killed = True

    def _stop_reason(
        self, now: float, started_wall: float, deadline: float | None
    ) -> tuple[Outcome | None, str, float]:
        grace = self.spec.termination_grace_seconds
        if self.cancel_requested.is_set() or self.run_dir.cancel_path.exists():
            return Outcome.CANCELED, "", grace
        if deadline is not None and now >= deadline:
            limit = self.spec.max_run_duration_seconds or 0
            return Outcome.TIMED_OUT, f"exceeded max_run_duration_seconds={limit:g}", grace
        if first_failure(read_rank_exits(self.run_dir.logs)) is not None:
            return Outcome.RANK_FAILED, "", FAIL_FAST_GRACE
        hang = self.spec.hang_timeout_seconds
        if hang is not None:
            quiet = time.time() - self._last_activity(started_wall)
            if quiet > hang:
                message = (
                    f"hung: no output, heartbeat or metric for {quiet:.1f} s "
                    f"(hang_timeout_seconds={hang:g})"
                )
                return Outcome.HUNG, message, FAIL_FAST_GRACE
        return None, "", 0.0

    def _last_activity(self, started_wall: float) -> float:
        """The newest write to a rank log, the metrics or the heartbeat (wall clock)."""
        newest = started_wall
        candidates = [self.run_dir.metrics, self.run_dir.path / "heartbeat"]
        with os.scandir(self.run_dir.logs) as entries:
            candidates += [
                Path(e.path)
                for e in entries
                if e.name.startswith("rank_") and e.name.endswith(".log")
            ]
        for path in candidates:
            try:
                newest = max(newest, path.stat().st_mtime)
            except OSError:
                continue
        return newest


def _attempt_record(number: int, started: str, result: AttemptResult) -> dict[str, Any]:
    return {
        "attempt": number,
        "status": result.status.value,
        "outcome": result.outcome.value,
        "started_at": started,
        "ended_at": now_iso(),
        "exit_code": result.exit_code,
        "error": result.error,
    }
