"""Compute targets by name. An unknown name is an error that lists the known ones."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from fitdock.errors import NotAvailableError, SpecError
from fitdock.runs.store import RunDir
from fitdock.specs.compute import Hosts, Slurm
from fitdock.specs.job import JobSpec
from fitdock.targets.plan import LaunchPlan

TARGETS = {
    "local": "fitdock.targets.local",
    "docker": "fitdock.targets.docker",
    "hosts": "fitdock.targets.hosts.target",
    "slurm": "fitdock.targets.slurm.target",
}
PLANNED: tuple[str, ...] = ()


class Target(Protocol):
    NAME: str

    def check(self, spec: JobSpec) -> None: ...

    def plan(self, spec: JobSpec, run: RunDir, resume_dir: Path | None) -> LaunchPlan: ...

    # Optional: ``prepare(spec, run, show_output) -> dict`` builds the environment before the
    # first attempt (recorded as ``environment_build``); ``before_attempt(spec, run)`` and
    # ``after_attempt(spec, run)``, e.g. to copy the run to hosts without a shared
    # filesystem and its results back. ``supervise(supervisor)`` replaces fitdock's own
    # attempts where a scheduler runs them (slurm).


def get_target(target: str | Hosts | Slurm) -> Target:
    name = target.kind if isinstance(target, (Hosts, Slurm)) else target
    if name == "hosts" and not isinstance(target, Hosts):
        raise SpecError(
            "compute_target='hosts' needs the host list: compute_target=Hosts(['node1:2', ...])",
            field="compute_target",
        )
    module = TARGETS.get(name)
    if module is not None:
        return importlib.import_module(module)  # type: ignore[return-value]
    if name in PLANNED:
        raise NotAvailableError(
            f"compute_target={name!r} is not available in this version of fitdock"
        )
    known = ", ".join(sorted(TARGETS))
    raise SpecError(
        f"compute_target={name!r} is not a known target; known: {known}", field="compute_target"
    )


def target_for(spec: JobSpec) -> Target:
    """The target that runs ``spec``: ``use_docker=True`` on the local target means docker."""
    if spec.compute_target == "local" and spec.use_docker:
        return get_target("docker")
    return get_target(spec.compute_target)
