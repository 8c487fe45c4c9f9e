"""Compute targets as data. ``"local"`` is a name; ``Hosts`` lists machines; ``Slurm`` names
a cluster partition and what to ask of it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from fitdock.errors import SpecError
from fitdock.specs.base import SpecModel
from fitdock.specs.distribution import MAX_PROCESSES_PER_NODE

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_CIDR = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}")


class Host(SpecModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    slots: int = Field(default=1, ge=1, le=MAX_PROCESSES_PER_NODE)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not _HOST.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or address")
        return value

    @classmethod
    def parse(cls, text: str) -> Host:
        """``node1``, ``node1:2`` (MPICH style) or ``node1 slots=2`` (Open MPI hostfile)."""
        words = text.split() if isinstance(text, str) else []
        if not words:
            raise SpecError(
                f"a host is 'name', 'name:slots' or 'name slots=N', got {text!r}", field="hosts"
            )
        name, _, count = words[0].partition(":")
        if not _HOST.fullmatch(name):
            raise SpecError(f"{name!r} is not a host name or address", field="hosts")
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep or key not in ("slots", "max_slots", "max-slots"):
                raise SpecError(
                    f"host {text!r}: {word!r} is not 'slots=N' (a host is 'name', 'name:slots' "
                    "or 'name slots=N')",
                    field="hosts",
                )
            count = count or value
        if count and not (count.isascii() and count.isdigit()):
            raise SpecError(f"host {text!r}: slots must be a number, got {count!r}", field="hosts")
        return cls(name=name, slots=int(count) if count else 1)


class Hosts(SpecModel):
    """Run on a list of machines: ``Hosts(["node1:2", "node2:2"])`` or ``Hosts(hostfile=...)``.

    fitdock starts processes on the hosts through a launch *agent*: ``ssh`` by
    default (``ssh_user``, ``ssh_port``, ``ssh_key``, ``ssh_options``), or any
    command prefix called like ssh, as ``AGENT HOST COMMAND`` where COMMAND is one
    shell string. ``shared_filesystem=True`` (the default) declares that the run
    folder (``$FITDOCK_HOME``) is at the same path on every host, as with NFS;
    with ``False`` fitdock copies the snapshot there before each attempt and brings
    logs, outputs and checkpoints back after it. ``network`` (a CIDR such as
    ``10.0.0.0/24``) keeps MPI traffic on that network and ``interface`` (such as
    ``eth0``) names the hosts' network card for Gloo and NCCL (``GLOO_SOCKET_IFNAME``,
    ``NCCL_SOCKET_IFNAME``). ``local_address`` is this machine's address as the hosts
    reach it (MPICH's ``-localhost``; needed when this machine's hostname does not
    resolve on the hosts). ``python`` is the interpreter on the hosts (default: this
    one's path).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hosts"] = "hosts"
    hosts: tuple[Host, ...] = Field(min_length=1)
    agent: tuple[str, ...] = ()
    ssh_user: str | None = None
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    ssh_key: Path | None = None
    ssh_options: tuple[str, ...] = ()
    shared_filesystem: bool = True
    network: str | None = None
    interface: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,15}$")
    local_address: str | None = None
    python: str | None = None

    def __init__(
        self, hosts: Any = None, /, *, hostfile: str | Path | None = None, **data: Any
    ) -> None:
        if hostfile is not None:
            if hosts is not None:
                raise SpecError("Hosts: give hosts or hostfile, not both", field="hostfile")
            try:
                lines = Path(hostfile).read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(
                    f"Hosts: cannot read hostfile {hostfile}: {exc}", field="hostfile"
                ) from exc
            hosts = [line.split("#", 1)[0] for line in lines if line.split("#", 1)[0].strip()]
        if hosts is not None:
            data["hosts"] = hosts
        super().__init__(**data)

    @field_validator("hosts", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(Host.parse(item) if isinstance(item, str) else item for item in value)
        return value

    @field_validator("local_address")
    @classmethod
    def _address_ok(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or address")
        return value

    @field_validator("network")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is not None and not _CIDR.fullmatch(value):
            raise ValueError(f"network must be a CIDR such as '10.0.0.0/24', got {value!r}")
        return value

    def agent_argv(self) -> list[str]:
        """The launch agent's argv prefix; the host and the command follow it."""
        if self.agent:
            return list(self.agent)
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
        if self.ssh_user:
            argv += ["-l", self.ssh_user]
        if self.ssh_port:
            argv += ["-p", str(self.ssh_port)]
        if self.ssh_key:
            argv += ["-i", str(self.ssh_key)]
        return argv + list(self.ssh_options)


_SLURM_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:+,-]*$"  # partition, account, qos: no spaces, no shell


class Slurm(SpecModel):
    """Submit to a Slurm cluster with ``sbatch``: ``Slurm(partition="gpu", gpus_per_node=4)``.

    ``node_count`` and ``process_count_per_node`` become the allocation (``--nodes``,
    ``--ntasks-per-node``); ``max_run_duration_seconds`` plus the grace period becomes
    ``--time``. ``partition=None`` takes the cluster's default partition. ``mem`` is
    Slurm's per-node memory (``16G``, ``500M``); ``constraint`` its feature expression.
    ``extra_sbatch_args`` are added as they are (``["--exclusive", "--reservation=x"]``).

    MPI ranks start with ``srun --mpi=<srun_mpi>`` (PMIx by default); ``mpi_launcher=
    "mpirun"`` runs ``mpirun`` inside the allocation instead. A job that reaches its time
    limit checkpoints on the signal and is requeued, resuming from its latest checkpoint,
    up to ``max_requeues`` times. The run folder (``$FITDOCK_HOME``) and the interpreter
    must be at the same path on every node (a shared filesystem).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["slurm"] = "slurm"
    partition: str | None = Field(default=None, pattern=_SLURM_NAME)
    account: str | None = Field(default=None, pattern=_SLURM_NAME)
    qos: str | None = Field(default=None, pattern=_SLURM_NAME)
    gpus_per_node: int | None = Field(default=None, ge=1)
    cpus_per_task: int | None = Field(default=None, ge=1)
    mem: str | None = Field(default=None, pattern=r"^[0-9]+[KMGT]?$")
    constraint: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.&|!*()\[\]:,-]+$")
    extra_sbatch_args: tuple[str, ...] = ()
    max_requeues: int = Field(default=3, ge=0)
    mpi_launcher: Literal["srun", "mpirun"] = "srun"
    srun_mpi: str = Field(default="pmix", pattern=r"^[a-z0-9_]+$")

    @field_validator("extra_sbatch_args")
    @classmethod
    def _sbatch_args(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            if not arg.startswith("-") or "\n" in arg:
                raise ValueError(
                    f"{arg!r} is not an sbatch option; give options such as '--exclusive' or "
                    "'--reservation=name', one per item"
                )
        return value


ComputeTarget = str | Hosts | Slurm
