"""Azure ML SDK v1's small run settings that ``ScriptRunConfig`` takes: ``MpiConfiguration``
and ``DockerConfiguration``. Pure data, validated when set (a bad value is a ``SpecError``
naming it); ``ScriptRunConfig`` turns them into fitdock's ``Mpi``, counts and Docker
settings. ``PyTorchConfiguration`` is fitdock's own (``specs/distribution.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from fitdock.environments.spec import DockerSection
from fitdock.errors import SpecError
from fitdock.specs.distribution import Mpi


class _Settings:
    """Attributes that are validated on every assignment, as in Azure (``mpi.node_count = 2``
    after construction works, ``mpi.node_count = 0`` is refused at once)."""

    _FIELDS: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._FIELDS:
            raise AttributeError(
                f"{type(self).__name__} has no setting {name!r}; its settings are "
                + ", ".join(self._FIELDS)
            )
        super().__setattr__(name, self._check(name, value))

    def _check(self, name: str, value: Any) -> Any:
        return value

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"{type(self).__name__}({shown})"


class MpiConfiguration(_Settings):
    """Azure's ``MpiConfiguration``: ``node_count`` nodes of ``process_count_per_node`` MPI
    ranks each. ``ScriptRunConfig(distributed_job_config=...)`` runs it as fitdock's
    ``Mpi(process_count_per_node)`` on ``node_count`` nodes (more than one needs the
    ``Hosts`` or ``Slurm`` target)."""

    _FIELDS = ("process_count_per_node", "node_count")
    process_count_per_node: int
    node_count: int

    def __init__(self, process_count_per_node: int = 1, node_count: int = 1) -> None:
        self.process_count_per_node = process_count_per_node
        self.node_count = node_count

    def _check(self, name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(
                f"MpiConfiguration: {name} must be a whole number of at least 1, got {value!r}",
                field=name,
            )
        return value

    def to_mpi(self) -> Mpi:
        """fitdock's distribution for these ranks (the node count goes to the job)."""
        return Mpi(self.process_count_per_node)


class DockerConfiguration(_Settings):
    """Azure's ``DockerConfiguration``: run in Docker (``use_docker``), with ``shm_size``
    and extra ``docker run`` ``arguments``. ``shared_volumes`` is accepted and has no
    effect: fitdock always mounts the run folder into the container."""

    _FIELDS = ("use_docker", "shared_volumes", "arguments", "shm_size")
    use_docker: bool
    shared_volumes: bool
    arguments: Sequence[str]
    shm_size: str | None

    def __init__(
        self,
        use_docker: bool = False,
        shared_volumes: bool = True,
        arguments: Sequence[str] | None = None,
        shm_size: str | None = None,
    ) -> None:
        self.use_docker = use_docker
        self.shared_volumes = shared_volumes
        self.arguments = [] if arguments is None else arguments
        self.shm_size = shm_size

    def _check(self, name: str, value: Any) -> Any:
        if name in ("use_docker", "shared_volumes"):
            if not isinstance(value, bool):
                raise SpecError(
                    f"DockerConfiguration: {name} must be True or False, got {value!r}",
                    field=name,
                )
            return value
        if name == "arguments":
            if value is None:
                return []
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise SpecError(
                    "DockerConfiguration: arguments must be a list of strings such as "
                    f"['--ulimit', 'memlock=-1'], got {value!r}",
                    field="arguments",
                )
            value = list(value)
        try:  # the same rules as the environment's Docker section
            DockerSection(**{name: value})
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise SpecError(f"DockerConfiguration: {message}", field=name) from None
        return value

    def section(self, docker: DockerSection) -> DockerSection:
        """``docker`` with these settings on top (arguments are appended)."""
        update: dict[str, Any] = {"arguments": [*docker.arguments, *self.arguments]}
        if self.shm_size is not None:
            update["shm_size"] = self.shm_size
        return docker.model_copy(update=update)
