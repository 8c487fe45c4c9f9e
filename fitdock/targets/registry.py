"""Compute targets by name: fitdock's own, and any that a package registers in the
``fitdock.targets`` entry-point group (``name = "package.module:TargetClass"``), so a
third party adds a target without touching fitdock. An unknown name is an error that
lists the known ones.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from fitdock.errors import SpecError
from fitdock.specs.compute import Hosts, Slurm
from fitdock.specs.job import JobSpec
from fitdock.targets.base import Target

GROUP = "fitdock.targets"
BUILTIN = {
    "local": "fitdock.targets.local:LocalTarget",
    "docker": "fitdock.targets.docker:DockerTarget",
    "hosts": "fitdock.targets.hosts.target:HostsTarget",
    "slurm": "fitdock.targets.slurm.target:SlurmTarget",
}


@functools.cache
def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=GROUP) if ep.name not in BUILTIN}


def known() -> list[str]:
    return sorted({*BUILTIN, *_plugins()})


@functools.cache
def get_target(name: str) -> Target:
    """The target called ``name``."""
    where = BUILTIN.get(name) or _plugins().get(name)
    if where is None:
        raise SpecError(
            f"compute_target={name!r} is not a known target; known: {', '.join(known())}",
            field="compute_target",
        )
    module, _, attribute = where.partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise SpecError(
            f"the {GROUP} entry point {name!r} ({where}) is not a fitdock Target class",
            field="compute_target",
        )
    return cls()


def target_for(spec: JobSpec) -> Target:
    """The target that runs ``spec``: ``use_docker=True`` (or an environment whose
    ``docker.enabled`` is True, as in Azure) on the local target means docker; the name
    ``'hosts'`` alone lacks the host list."""
    target = spec.compute_target
    if isinstance(target, (Hosts, Slurm)):
        return get_target(target.kind)
    if target == "hosts":
        raise SpecError(
            "compute_target='hosts' needs the host list: compute_target=Hosts(['node1:2', ...])",
            field="compute_target",
        )
    if target == "local" and (spec.use_docker or spec.environment.docker.enabled):
        return get_target("docker")
    return get_target(target)
