"""Supervise a launched job: deadline, cancel, fail-fast, hang watchdog, restarts, record.

The supervisor runs in the process that called ``fit()`` (a thread of it). It holds the
run's ``supervisor.lock`` while the job lives; if that process dies, the reaper stops the
job and the lock tells later readers the run was lost.

It prepares the target's environment and plans again in it, then either runs the job's
*attempts* itself, or, for a target whose scheduler runs them (Slurm), follows the job
(``scheduled.follow``). After each attempt of its own, ``decide`` says whether to start
another (``max_restarts``); the next resumes from the run's latest checkpoint, and the
logs of the earlier one move to ``logs/attempt-<n>/``. With MLflow tracking on, a mirror
thread (``tracking``) sends the run to MLflow as it goes; the end waits for it, bounded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fitdock.errors import FitdockError, MpiMismatchError
from fitdock.execution import scheduled, tracking
from fitdock.execution.judge import AttemptResult, first_failure, judge
from fitdock.jobside.common import Decision, Outcome, archive_logs, copy_checkpoint, decide
from fitdock.runs.record import AttemptRecord, ErrorReason, RunError, RunRecord
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, SupervisorLock
from fitdock.shared import now_iso
from fitdock.specs.job import JobSpec
from fitdock.targets.base import Job, Target
from fitdock.targets.plan import LaunchPlan
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
        self.environment_build: dict[str, Any] | None = None

    def cancel(self) -> None:
        self.cancel_requested.set()

    def canceled(self) -> bool:
        return self.cancel_requested.is_set() or self.run_dir.cancel_path.exists()

    def run(self) -> None:
        mirror = tracking.start(self.run_dir)  # None unless MLflow tracking is on
        try:
            if not self.prepare_environment():
                return
            if self.target.schedules_attempts:
                scheduled.follow(self)
            else:
                self._attempts()
        except BaseException as exc:
            self.fail(ErrorReason.SUPERVISOR_ERROR, f"fitdock supervisor error: {exc!r}")
            raise
        finally:
            if mirror is not None:  # the end state is written: send the rest, bounded
                info = mirror.finish()
                with self.run_dir.edit() as record:
                    record.tracking = info
            self.lock.release()
            self.done.set()

    def fail(self, reason: ErrorReason, message: str, **details: Any) -> None:
        """End the run Failed, before or outside any attempt."""
        with self.run_dir.edit() as record:
            record.environment_build = record.environment_build or self.environment_build
            record.status = RunStatus.FAILED
            record.ended_at = now_iso()
            record.error = RunError(reason=reason, message=message, **details)

    # ------------------------------------------------------------------ environment
    def prepare_environment(self) -> bool:
        """Build the environment (a venv, an image) before the first attempt, then plan
        again in it when the plan was made before it existed (the MPI launcher is chosen
        by what the built environment loads); False when either failed (the run is then
        Failed with the message)."""
        try:
            built = self.target.prepare(self.spec, self.run_dir, self.show_output)
        except FitdockError as exc:
            details = {
                name: str(getattr(exc, name))
                for name in ("step", "log")
                if getattr(exc, name, None) is not None
            }
            self.fail(ErrorReason.ENVIRONMENT_BUILD, str(exc), **details)
            return False
        self.environment_build = built or None  # recorded with the first attempt's start
        if not self.plan.provisional:
            return True
        try:  # planned before the environment existed: plan in it now
            self.plan = self.target.plan(self.spec, self.run_dir, self.resume_dir)
        except FitdockError as exc:
            mismatch = isinstance(exc, MpiMismatchError)
            self.fail(ErrorReason.MPI_MISMATCH if mismatch else ErrorReason.PLAN, str(exc))
            return False
        return True

    def record_start(self, record: RunRecord) -> None:
        """What preparing found, written with the first change of status (one write less
        on the way to the first rank)."""
        record.environment_build = self.environment_build
        record.argv, record.commands, record.env = self.plan.argv, self.plan.commands, self.plan.env

    # ------------------------------------------------------------------ attempts
    def _attempts(self) -> None:
        attempts: list[AttemptRecord] = []
        number = 1
        while True:
            started = now_iso()
            result = self._attempt(number)
            attempts.append(
                AttemptRecord(
                    attempt=number,
                    status=result.status,
                    outcome=result.outcome,
                    started_at=started,
                    ended_at=now_iso(),
                    exit_code=result.exit_code,
                    error=result.error,
                )
            )
            decision = decide(result.outcome, number, self.spec.max_restarts)
            with self.run_dir.edit() as record:
                if record.environment_build is None:  # the attempt failed before it started
                    self.record_start(record)
                record.attempts = attempts
                if decision is Decision.STOP:
                    record.status = result.status
                    record.ended_at = now_iso()
                    record.exit_code = result.exit_code
                    record.ranks = dict(result.ranks)
                    record.error = result.error
            if decision is Decision.STOP:
                return
            self._prepare_restart(number)
            number += 1

    def _prepare_restart(self, finished: int) -> None:
        archive_logs(self.run_dir.logs, finished)
        if copy_checkpoint(self.run_dir.checkpoints, self.run_dir.resume):
            self.resume_dir = self.run_dir.resume
        self.plan = self.target.plan(self.spec, self.run_dir, self.resume_dir)

    def _attempt(self, number: int) -> AttemptResult:
        plan = self.plan
        try:
            self.target.before_attempt(self.spec, self.run_dir)
        except FitdockError as exc:  # e.g. a host could not be reached to stage the run
            error = RunError(reason=ErrorReason.STAGING, message=str(exc))
            return AttemptResult(Outcome.LAUNCHER_FAILED, 255, {}, error)
        env = {**base_environment(), **plan.env, "FITDOCK_ATTEMPT": str(number)}
        job = self.target.launch(plan, self.run_dir, env)
        with self.run_dir.edit() as record:
            if number == 1:
                self.record_start(record)
            record.status = RunStatus.RUNNING
            record.started_at = now_iso()
            record.reaper_pid = job.pid
            record.attempt = number
        try:
            code, stopped, detail = self._watch(job)
        finally:
            job.close()
        try:
            self.target.after_attempt(self.spec, self.run_dir)
        except FitdockError as exc:  # the results could not be brought back from a host
            error = RunError(reason=ErrorReason.STAGING, message=str(exc))
            return AttemptResult(Outcome.LAUNCHER_FAILED, code or 255, {}, error)
        return judge(self.run_dir.logs, plan.world_size, code, stopped, detail)

    # ------------------------------------------------------------------ one attempt
    def _watch(self, job: Job) -> tuple[int, Outcome | None, str]:
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
        if self.canceled():
            return Outcome.CANCELED, "", grace
        if deadline is not None and now >= deadline:
            limit = self.spec.max_run_duration_seconds or 0
            return Outcome.TIMED_OUT, f"exceeded max_run_duration_seconds={limit:g}", grace
        if first_failure(self.run_dir.logs) is not None:
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
        candidates = [self.run_dir.metrics, self.run_dir.heartbeat]
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
