"""The sbatch script of a Slurm run, as text (pure: no I/O; golden-file tested).

The script asks for the allocation in ``#SBATCH`` lines, exports fitdock's variables
(inherited by every rank through ``srun``), puts the job's environment first on ``PATH``,
and ``exec``s ``slurmjob.py`` (see that module), which runs the launch command once per
attempt::

    srun --mpi=pmix --kill-on-bad-exit=1 ... PYTHON jobtree.py fitdock-rank LOGS -- PYTHON x.py
    srun --ntasks-per-node=1 ... PYTHON -m torch.distributed.run ... --no-python PYTHON jobtree.py

Every word is quoted for bash with ``shlex.quote``, except the few that fitdock writes as
shell on purpose (``Shell``), such as the head node of a torchrun rendezvous.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from fitdock._version import __version__
from fitdock.distributions.torchrun import torchrun_argv
from fitdock.process import rank_wrapper_argv
from fitdock.runs.store import RunDir
from fitdock.specs.compute import Slurm
from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration
from fitdock.specs.job import JobSpec

SCRIPT = "job.sbatch"
DRIVER = "slurmjob.py"
JOBTREE = "jobtree.py"
MAX_SIGNAL_SECONDS = 65535  # Slurm's limit for --signal=...@TIME
HEAD_NODE = 'FITDOCK_HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'
RDZV_PORT = "FITDOCK_RDZV_PORT=$((20000 + SLURM_JOB_ID % 20000))"


class Shell(str):
    """A word written into the script as it is (fitdock's own shell, never user input)."""


def time_limit(spec: JobSpec) -> tuple[int, int] | None:
    """``(--time in minutes, seconds before the end for the USR2 signal)``, or None without
    ``max_run_duration_seconds``. Slurm counts whole minutes: the limit is the run time plus
    the grace, rounded up, and the signal comes when the run time is over."""
    limit = spec.max_run_duration_seconds
    if limit is None:
        return None
    minutes = max(1, math.ceil((limit + spec.termination_grace_seconds) / 60))
    before_end = min(MAX_SIGNAL_SECONDS, max(1, math.ceil(minutes * 60 - limit)))
    return minutes, before_end


def directives(spec: JobSpec, config: Slurm, run: RunDir) -> list[str]:
    lines = [f"--job-name=fitdock-{run.id}"]
    for name, value in (
        ("partition", config.partition),
        ("account", config.account),
        ("qos", config.qos),
    ):
        if value is not None:
            lines.append(f"--{name}={value}")
    lines += [f"--nodes={spec.node_count}", f"--ntasks-per-node={tasks_per_node(spec)}"]
    if config.cpus_per_task is not None:
        lines.append(f"--cpus-per-task={config.cpus_per_task}")
    if config.gpus_per_node is not None:
        lines.append(f"--gpus-per-node={config.gpus_per_node}")
    if config.mem is not None:
        lines.append(f"--mem={config.mem}")
    if config.constraint is not None:
        lines.append(f"--constraint={config.constraint}")
    limits = time_limit(spec)
    if limits is not None:
        minutes, before_end = limits
        lines += [f"--time={minutes}", f"--signal=B:USR2@{before_end}"]
    slurm_dir = run.path / "slurm"
    lines += [
        "--requeue",
        "--open-mode=append",
        f"--output={slurm_dir / 'batch.log'}",
        f"--chdir={run.snapshot}",
        *config.extra_sbatch_args,
    ]
    return lines


def tasks_per_node(spec: JobSpec) -> int:
    """Slurm tasks per node: one torchrun per node, else one task per rank."""
    if isinstance(spec.distribution, PyTorchConfiguration):
        return 1
    return spec.process_count_per_node


def launch_command(
    spec: JobSpec, config: Slurm, run: RunDir, python: str, mpirun: list[str] | None = None
) -> list[str]:
    """The command one attempt runs inside the allocation; ``mpirun``: the ``mpirun -n N``
    prefix when MPI ranks start with mpirun (``Slurm(mpi_launcher="mpirun")``)."""
    jobtree = run.path / "slurm" / JOBTREE
    wrapped = [
        *rank_wrapper_argv(python, run.logs, jobtree),
        python,
        spec.entry_script,
        *spec.arguments,
    ]
    distribution = spec.distribution
    if isinstance(distribution, PyTorchConfiguration):
        srun = ["srun", "--kill-on-bad-exit=1", f"--ntasks={spec.node_count}"]
        srun.append("--ntasks-per-node=1")
        endpoint = None  # one node: torchrun --standalone
        if spec.node_count > 1:
            endpoint = Shell('"$FITDOCK_HEAD_NODE:$FITDOCK_RDZV_PORT"')
        per_node = spec.process_count_per_node
        torchrun = torchrun_argv(
            python, distribution, spec.node_count, per_node, wrapped, run_id=run.id,
            endpoint=endpoint,
        )  # fmt: skip
        return [*srun, *torchrun]
    if mpirun is not None:
        return [*mpirun, *wrapped]
    srun = ["srun", "--kill-on-bad-exit=1", f"--ntasks={spec.world_size}"]
    if isinstance(distribution, (Mpi, Horovod)):
        srun.append(f"--mpi={config.srun_mpi}")
    return [*srun, *wrapped]


def uses_mpirun(spec: JobSpec, config: Slurm) -> bool:
    return isinstance(spec.distribution, (Mpi, Horovod)) and config.mpi_launcher == "mpirun"


def driver_command(spec: JobSpec, config: Slurm, run: RunDir, python: str) -> list[str]:
    options = {
        "--run-dir": str(run.path),
        "--time-limit": f"{spec.max_run_duration_seconds or 0:g}",
        "--grace": f"{spec.termination_grace_seconds:g}",
        "--max-requeues": str(config.max_requeues),
        "--max-restarts": str(spec.max_restarts),
        "--stop": "mpirun" if uses_mpirun(spec, config) else "scancel",
    }
    words = [word for pair in options.items() for word in pair]
    return [python, "-I", "-S", str(run.path / "slurm" / DRIVER), *words, "--"]


def render(
    spec: JobSpec,
    config: Slurm,
    run: RunDir,
    python: str,
    env: dict[str, str],
    path_first: str | None = None,
    mpirun: list[str] | None = None,
) -> str:
    """The whole script. ``env``: fitdock's variables; ``path_first``: a folder to put first
    on ``PATH`` (the virtualenv's ``bin``); ``mpirun``: see ``launch_command``."""
    lines = ["#!/bin/bash", f"# fitdock {__version__}: run {run.id}. Generated; edits are lost."]
    lines += [f"#SBATCH {line}" for line in directives(spec, config, run)]
    lines += ["", "set -eu"]
    if path_first is not None:
        venv = str(Path(path_first).parent)
        lines += [
            f"export VIRTUAL_ENV={shlex.quote(venv)}",
            f'export PATH={shlex.quote(path_first)}:"$PATH"',
        ]
    for name, value in sorted(env.items()):
        if name == "PYTHONPATH":  # fitdock's part first, then the submitter's, if any
            lines.append(f'export PYTHONPATH={shlex.quote(value)}"${{PYTHONPATH:+:$PYTHONPATH}}"')
        else:
            lines.append(f"export {name}={shlex.quote(value)}")
    lines.append('export SM_NUM_CPUS="${SLURM_CPUS_ON_NODE:-1}"')
    if isinstance(spec.distribution, PyTorchConfiguration) and spec.node_count > 1:
        lines += [f"export {HEAD_NODE}", f"export {RDZV_PORT}"]
    driver = _join(driver_command(spec, config, run, python))
    lines += [
        "",
        f"exec {driver} \\",
        "    " + _join(launch_command(spec, config, run, python, mpirun)),
    ]
    return "\n".join(lines) + "\n"


def _join(command: list[str]) -> str:
    return " ".join(w if isinstance(w, Shell) else shlex.quote(w) for w in command)
