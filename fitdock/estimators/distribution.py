"""How ranks are formed. Pure data; the launchers decide how to start them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Mpi(BaseModel):
    """Start the job's ranks through MPI (``mpirun``/``mpiexec``).

    ``process_count_per_node`` left as ``None`` takes the estimator's own
    ``process_count_per_node``. ``mpirun`` names the launcher to use (a path or a
    program on PATH); by default fitdock uses the one beside the current
    interpreter (the ``fitdock[mpi]`` extra installs one), else the first on PATH.
    ``extra_args`` are appended to the launcher's options, as a list, never
    through a shell.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["mpi"] = "mpi"
    process_count_per_node: int | None = Field(default=None, ge=1)
    mpirun: str | None = None
    extra_args: tuple[str, ...] = ()

    def __init__(self, process_count_per_node: int | None = None, **data: object) -> None:
        super().__init__(process_count_per_node=process_count_per_node, **data)


Distribution = Mpi
