"""The contract of a compute target: where ranks run.

The supervisor calls a target only through these methods (TorchX's ``Scheduler`` is the
model: ``submit_dryrun``/``schedule``/``describe``/``cancel``). In order:

1. ``check(spec)``: refuse what it cannot run, before anything is created.
2. ``plan(spec, run, resume_dir)``: what it will run, as a ``LaunchPlan`` (printed by
   ``--dry-run``); made again after ``prepare`` and before each restart.
3. ``prepare(spec, run, show_output)``: build the environment before the first attempt
   (a virtualenv, an image); what it returns is recorded as ``environment_build``.
4. Then either fitdock runs the attempts (restarts, deadline, fail-fast):
   ``before_attempt`` / ``launch`` (a ``Job`` the supervisor watches and signals) /
   ``after_attempt`` for each; or, when ``schedules_attempts``, a scheduler runs them job
   side: ``submit`` hands it over once, ``describe`` says where the job is (polled until
   it ends), ``stop`` asks the scheduler to stop it.
5. ``cancel(run, record)``: stop a job whose supervisor is gone (a Slurm job outlives
   ``fit()``); ``describe`` also serves readers of such a run.

Targets hold no state: every method gets what it needs. A target of a third party
registers a class in the ``fitdock.targets`` entry-point group (``registry.py``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from fitdock.jobside.common import Outcome
from fitdock.process import JobProcess
from fitdock.runs.record import AttemptRecord, RunRecord, ScheduledJob
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir
from fitdock.specs.job import JobSpec
from fitdock.targets.plan import LaunchPlan


class Job(Protocol):
    """One started attempt (``process.JobProcess`` for targets whose jobs run here)."""

    pid: int

    def wait(self, timeout: float | None) -> int | None: ...

    def signal(self, signum: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class JobDescription:
    """What a scheduler says of a job: ``status`` is Queued, Running or the end; at the end
    ``outcome`` says how its last attempt ended (None: the scheduler ended the job itself,
    and ``scheduler_state`` says how)."""

    status: RunStatus
    attempts: list[AttemptRecord] = field(default_factory=list)
    started_at: str | None = None
    scheduler_state: str | None = None
    scheduler_reason: str | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    ended_at: str | None = None
    detail: str = ""


class Target(abc.ABC):
    name: ClassVar[str]
    schedules_attempts: ClassVar[bool] = False  # True: a scheduler runs the attempts
    # True: the ranks see the run folder through this process's mounts (same machine, same
    # mount namespace), so a snapshot may be an overlay mounted here (runs/shared_snapshot.py)
    ranks_see_local_mounts: ClassVar[bool] = False

    @abc.abstractmethod
    def check(self, spec: JobSpec) -> None:
        """Raise ``SpecError``/``NotAvailableError`` for what this target cannot run."""

    @abc.abstractmethod
    def plan(self, spec: JobSpec, run: RunDir, resume_dir: Path | None) -> LaunchPlan:
        """The plan of the next attempt; creates nothing."""

    def prepare(self, spec: JobSpec, run: RunDir, show_output: bool = False) -> dict[str, Any]:
        """Build what the job runs in, once, before the first attempt."""
        return {}

    def before_attempt(self, spec: JobSpec, run: RunDir) -> None:  # noqa: B027 - a hook
        """Before each attempt (the hosts target stages the run to hosts without a shared
        filesystem)."""

    def after_attempt(self, spec: JobSpec, run: RunDir) -> None:  # noqa: B027 - a hook
        """After each attempt (the hosts target brings the results back)."""

    def launch(self, plan: LaunchPlan, run: RunDir, env: dict[str, str]) -> Job:
        """Start one attempt: by default the plan's commands under fitdock's reaper, here."""
        return JobProcess(
            plan.commands,
            env=env,
            cwd=plan.cwd,
            log_path=run.launcher_log,
            relay_orders=plan.relay_orders,
            rank_logs=plan.rank_logs,
        )

    def submit(self, plan: LaunchPlan, run: RunDir) -> ScheduledJob:
        """Hand the job to the scheduler (targets that schedule attempts)."""
        raise NotImplementedError(f"the {self.name} target runs no scheduler")

    def describe(self, run: RunDir, record: RunRecord) -> JobDescription | None:
        """Where a scheduled job is now; None when the scheduler cannot be asked just now.
        Only targets that schedule attempts have this."""
        raise NotImplementedError(f"the {self.name} target runs no scheduler")

    def stop(self, run: RunDir, record: RunRecord) -> None:
        """Ask the scheduler to stop a scheduled job (``Run.cancel()``)."""
        raise NotImplementedError(f"the {self.name} target runs no scheduler")

    def cancel(self, run: RunDir, record: RunRecord) -> None:
        """Stop a job whose supervisor is gone. Jobs that run here die with their
        supervisor, so by default there is nothing left to stop."""
        if self.schedules_attempts:
            self.stop(run, record)
