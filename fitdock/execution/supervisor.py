"""Supervise a launched job: deadline, cancel, fail-fast, hang watchdog, restarts, record.

The supervisor runs in the process that called ``fit()`` (a thread of it), or in a process
of its own for a detached run (``detached.py``: ``fit(wait=False)``, ``--detach``). It holds the
run's ``supervisor.lock`` while the job lives; if that process dies, the reaper stops the
job and the lock tells later readers the run was lost.

It prepares the target's environment and plans again in it, then either runs the job's
*attempts* itself, or, for a target whose scheduler runs them (Slurm), follows the job
(``scheduled.follow``). After each attempt of its own, ``decide`` says whether to start
another (``max_restarts``); the next resumes from the run's latest checkpoint, and the
logs of the earlier one move to ``logs/attempt-<n>/``. An attempt whose ranks all end by
themselves ends when every rank has written its exit record: a launcher still tearing
down (``mpirun`` can take a second, ``torchrun`` about one) is waited for and reaped by a
thread of its own (``_reap_later``), not by ``fit()``. With MLflow tracking on, a mirror
thread (``tracking``) sends the run to MLflow as it goes; the end waits for it, bounded.
A shared snapshot's overlay is unmounted and flattened before the record turns terminal
(``release_snapshot``); restarts keep it mounted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fitdock.distributions import mpijob
from fitdock.errors import FitdockError, MpiMismatchError
from fitdock.execution import scheduled, tracking
from fitdock.execution.judge import AttemptResult, judge
from fitdock.jobside.common import (
    Decision,
    Outcome,
    archive_logs,
    copy_checkpoint,
    decide,
    read_rank_exits,
)
from fitdock.runs import shared_snapshot
from fitdock.runs.record import AttemptRecord, ErrorReason, RunError, RunRecord
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, SupervisorLock
from fitdock.shared import now_iso, pause_at, storage_error
from fitdock.specs.job import JobSpec
from fitdock.targets.base import Job, Target
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.variables import base_environment

POLL_SECONDS = 0.1
FAIL_FAST_GRACE = 2.0  # SIGTERM -> SIGKILL for the other ranks when one rank failed
LAUNCHER_TEARDOWN = 30.0  # after every rank has exited: the launcher's time to end by itself


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
        mirror = tracking.start(self.run_dir, self.spec)  # None unless tracking is on
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
        release_snapshot(self.run_dir)
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
            if decision is Decision.STOP:
                release_snapshot(self.run_dir)
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
            if decision is Decision.STOP or not self._prepare_restart(number):
                return
            number += 1

    def _prepare_restart(self, finished: int) -> bool:
        """Archive the logs, copy the checkpoint, plan again; False (the run is then
        Failed, saying why) when the checkpoint cannot be copied, a full disk most often."""
        archive_logs(self.run_dir.logs, finished)
        try:
            copied = copy_checkpoint(self.run_dir.checkpoints, self.run_dir.resume)
        except OSError as exc:
            message = str(storage_error(exc, self.run_dir.resume))
            full = message.startswith("no space left")
            self.fail(ErrorReason.NO_SPACE if full else ErrorReason.SUPERVISOR_ERROR, message)
            return False
        if copied:
            self.resume_dir = self.run_dir.resume
        self.plan = self.target.plan(self.spec, self.run_dir, self.resume_dir)
        return True

    def _attempt(self, number: int) -> AttemptResult:
        plan = self.plan
        try:
            self.target.before_attempt(self.spec, self.run_dir)
        except FitdockError as exc:  # e.g. a host could not be reached to stage the run
            error = RunError(reason=ErrorReason.STAGING, message=str(exc))
            return AttemptResult(Outcome.LAUNCHER_FAILED, 255, {}, error)
        env = {**base_environment(), **plan.env, "FITDOCK_ATTEMPT": str(number)}
        env.update(mpijob.supervised_variables(plan.env))
        job = self.target.launch(plan, self.run_dir, env)
        pause_at("launch")  # a test hook (fitdock.shared.pause_at); inert otherwise
        with self.run_dir.edit() as record:
            if number == 1:
                self.record_start(record)
            record.status = RunStatus.RUNNING
            record.started_at = now_iso()
            record.reaper_pid = job.pid
            record.attempt = number
        tearing_down = False
        try:
            code, stopped, detail, tearing_down = self._watch(job, plan)
        finally:
            if tearing_down:
                _reap_later(job)
            else:
                job.close()
        try:
            self.target.after_attempt(self.spec, self.run_dir)
        except FitdockError as exc:  # the results could not be brought back from a host
            error = RunError(reason=ErrorReason.STAGING, message=str(exc))
            return AttemptResult(Outcome.LAUNCHER_FAILED, code or 255, {}, error)
        return judge(self.run_dir.logs, plan.world_size, code, stopped, detail)

    # ------------------------------------------------------------------ one attempt
    def _watch(self, job: Job, plan: LaunchPlan) -> tuple[int, Outcome | None, str, bool]:
        """Wait for the attempt to end, stopping it when it must; its exit code, why
        fitdock stopped it, the detail, and whether its launcher is still running (every
        rank has reported, the launcher is tearing down)."""
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
                return code, stopped, detail, False
            exits = read_rank_exits(self.run_dir.logs)
            # Every rank has ended by itself. (An attempt fitdock stops waits for its
            # launcher, which the reaper ends at once: nothing of it outlives the run.)
            if stopped is None and plan.rank_logs is None and _all_reported(exits, plan):
                return _ranks_code(exits), stopped, detail, True
            now = time.monotonic()
            if stopped is None:
                stopped, detail, grace = self._stop_reason(now, started_wall, deadline, exits)
                if stopped is not None:
                    job.signal(signal.SIGTERM)
                    kill_at = now + grace
            elif not killed and now >= kill_at:
                job.signal(signal.SIGKILL)
                killed = True

    def _stop_reason(
        self,
        now: float,
        started_wall: float,
        deadline: float | None,
        exits: dict[int, dict[str, Any]],
    ) -> tuple[Outcome | None, str, float]:
        grace = self.spec.termination_grace_seconds
        if self.canceled():
            return Outcome.CANCELED, "", grace
        if deadline is not None and now >= deadline:
            limit = self.spec.max_run_duration_seconds or 0
            return Outcome.TIMED_OUT, f"exceeded max_run_duration_seconds={limit:g}", grace
        if any(r["exit_code"] != 0 for r in exits.values()):
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


def release_snapshot(run: RunDir) -> None:
    """Unmount and flatten a shared snapshot before the record turns terminal, so that a
    reader who sees the end sees the final snapshot. What fails here (the mount stays) is
    left to ``fitdock runs gc``, which releases the overlays of runs that ended."""
    with contextlib.suppress(OSError):
        shared_snapshot.release(run)


def _all_reported(exits: dict[int, dict[str, Any]], plan: LaunchPlan) -> bool:
    return all(rank in exits for rank in range(plan.world_size))


def _ranks_code(exits: dict[int, dict[str, Any]]) -> int:
    """The attempt's exit code from its ranks' records: the first failure's, else 0."""
    failed = [r for r in exits.values() if r["exit_code"] != 0]
    return int(min(failed, key=lambda r: r["ended"])["exit_code"]) if failed else 0


def _reap_later(job: Job) -> None:
    """Every rank has exited but the launcher has not: wait for it in a thread of its own
    (bounded by ``LAUNCHER_TEARDOWN``, then killed with its tree), so that the run ends now
    and no process is left unreaped."""

    def finish() -> None:
        try:
            if job.wait(LAUNCHER_TEARDOWN) is None:
                job.signal(signal.SIGKILL)
                job.wait(None)
        finally:
            job.close()

    threading.Thread(target=finish, name="fitdock-launcher-teardown", daemon=True).start()
