"""How ranks are formed. Pure data; the launchers decide how to start them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from fitdock.specs.base import SpecModel

# Caps that no real job reaches (nothing grows to gigabytes from a typo such as 10**9);
# a local job far beyond this machine's CPUs is refused by the local target unless the
# distribution says ``oversubscribe=True``.
MAX_PROCESSES_PER_NODE = 1024
MAX_NODES = 1024


class Mpi(SpecModel):
    """Start the job's ranks through MPI (``mpirun``/``mpiexec``).

    ``process_count_per_node`` left as ``None`` takes the estimator's own
    ``process_count_per_node``. ``mpirun`` names the launcher to use (a path or a
    program on PATH); by default fitdock uses the one beside the current
    interpreter (the ``fitdock[mpi]`` extra installs one), else the first on PATH.
    ``extra_args`` are appended to the launcher's options, as a list, never
    through a shell. ``oversubscribe=True`` lets the local target start more than
    4 ranks per CPU of this machine (refused otherwise, before anything starts).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["mpi"] = "mpi"
    process_count_per_node: int | None = Field(default=None, ge=1, le=MAX_PROCESSES_PER_NODE)
    oversubscribe: bool = False
    mpirun: str | None = None
    extra_args: tuple[str, ...] = ()

    def __init__(self, process_count_per_node: int | None = None, **data: object) -> None:
        super().__init__(process_count_per_node=process_count_per_node, **data)


class PyTorchConfiguration(SpecModel):
    """Start the job's ranks with ``torchrun`` (Azure ML's ``PyTorchConfiguration``).

    ``process_count`` is the total number of processes and ``node_count`` the
    number of nodes (``None``: take the estimator's ``node_count`` and
    ``process_count_per_node``). torchrun sets ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (c10d rendezvous on the
    first node); ``communication_backend`` reaches the script as
    ``FITDOCK_DIST_BACKEND`` for ``torch.distributed.init_process_group``. The arguments
    come in Azure's order and spelling (``PyTorchConfiguration("Gloo", 4, 2)`` works).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pytorch"] = "pytorch"
    communication_backend: Literal["gloo", "nccl"] = "nccl"
    process_count: int | None = Field(default=None, ge=1, le=MAX_NODES * MAX_PROCESSES_PER_NODE)
    node_count: int | None = Field(default=None, ge=1, le=MAX_NODES)
    oversubscribe: bool = False

    def __init__(
        self,
        communication_backend: str = "nccl",
        process_count: int | None = None,
        node_count: int | None = None,
        **data: object,
    ) -> None:
        super().__init__(
            communication_backend=communication_backend,
            process_count=process_count,
            node_count=node_count,
            **data,
        )

    @field_validator("communication_backend", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value  # Azure spells it "Nccl"


class Horovod(SpecModel):
    """Start a Horovod job: through ``mpirun`` (the MPI controller, exactly as ``Mpi``)
    or through ``horovodrun`` (``controller="mpi"`` or ``"gloo"``).

    ``Mpi()`` runs Horovod scripts too (Horovod's MPI controller reads the MPI rank
    variables); ``Horovod`` adds the Gloo controller and horovodrun. ``horovodrun`` names
    the program (default: the one beside this interpreter, else on PATH).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["horovod"] = "horovod"
    process_count_per_node: int | None = Field(default=None, ge=1, le=MAX_PROCESSES_PER_NODE)
    oversubscribe: bool = False
    controller: Literal["mpi", "gloo"] = "mpi"
    launcher: Literal["mpirun", "horovodrun"] = "mpirun"
    mpirun: str | None = None
    horovodrun: str | None = None
    extra_args: tuple[str, ...] = ()

    def __init__(self, process_count_per_node: int | None = None, **data: object) -> None:
        super().__init__(process_count_per_node=process_count_per_node, **data)

    @model_validator(mode="after")
    def _gloo_needs_horovodrun(self) -> Horovod:
        if self.controller == "gloo" and self.launcher == "mpirun":
            raise ValueError(
                "the Gloo controller is started by horovodrun: pass launcher='horovodrun'"
            )
        return self

    def as_mpi(self) -> Mpi:
        return Mpi(
            self.process_count_per_node,
            mpirun=self.mpirun,
            extra_args=self.extra_args,
            oversubscribe=self.oversubscribe,
        )


Distribution = Annotated[Mpi | PyTorchConfiguration | Horovod, Field(discriminator="kind")]
