"""The local target: ranks on this machine.

``user_managed=True`` runs the job with the interpreter running fitdock (or
``Environment.python.interpreter_path`` when it names one); otherwise the environment
is built as a virtualenv with uv, once per environment hash (``environments.venv``),
before the first attempt, and the job runs with its interpreter.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from fitdock.distributions import horovod, mpi, mpijob
from fitdock.distributions.torchrun import torchrun_argv, torchrun_env
from fitdock.environments.spec import LOCAL_CONDA_ADVICE, refuse_conda
from fitdock.errors import SpecError
from fitdock.process import rank_wrapper_argv
from fitdock.runs.layout import ENV_BUILD_LOG
from fitdock.runs.store import RunDir
from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration
from fitdock.specs.job import JobSpec
from fitdock.targets.base import Target
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.variables import base_environment, free_port, job_variables


def interpreter(spec: JobSpec) -> str:
    """The job's Python: this interpreter (user-managed), or the environment's virtualenv."""
    python = spec.environment.python
    if not python.user_managed_dependencies:
        from fitdock.environments.venv import venv_path

        return str(venv_path(spec.environment) / "bin" / "python")
    wanted = python.interpreter_path
    if wanted in ("python", "python3"):
        return sys.executable
    found = shutil.which(wanted)
    if found is None:
        raise SpecError(
            f"interpreter_path {wanted!r} is not an executable", field="interpreter_path"
        )
    return found


def build_environment(spec: JobSpec, run: RunDir) -> dict[str, Any]:
    """Build the environment's virtualenv with uv (once per environment hash); what was
    built, for the record. A user-managed environment builds nothing."""
    if spec.environment.python.user_managed_dependencies:
        return {"interpreter": interpreter(spec), "user_managed": True}
    from fitdock.environments.venv import ensure_venv

    built = ensure_venv(spec.environment, log=run.logs / ENV_BUILD_LOG)
    return {
        "venv": str(built.path),
        "built": built.built,
        "seconds": round(built.seconds, 3),
        "lock": str(built.lock) if built.lock else None,
        "packages": built.packages,
    }


OVERSUBSCRIBE_FACTOR = 4  # ranks per CPU of this machine beyond which a job is refused


def check_rank_count(spec: JobSpec) -> None:
    """Refuse, before anything starts, more ranks than ``OVERSUBSCRIBE_FACTOR`` per CPU of
    this machine (10**9 ranks would only exhaust it), unless the distribution says
    ``oversubscribe=True``. Up to that many, ranks share the CPUs (MPI is told so)."""
    cpus = os.cpu_count() or 1
    config = spec.distribution
    if spec.world_size <= OVERSUBSCRIBE_FACTOR * cpus or (config and config.oversubscribe):
        return
    raise SpecError(
        f"process_count_per_node={spec.process_count_per_node} x node_count={spec.node_count} "
        f"= {spec.world_size} ranks on this machine's {cpus} CPUs: more than "
        f"{OVERSUBSCRIBE_FACTOR} per CPU is refused; use fewer ranks, or pass "
        "oversubscribe=True to the distribution (e.g. Mpi(oversubscribe=True)) to run them",
        field="process_count_per_node",
    )


class LocalTarget(Target):
    """Ranks on this machine, with the job's interpreter (user-managed or a virtualenv)."""

    name = "local"
    ranks_see_local_mounts = True

    def check(self, spec: JobSpec) -> None:
        """Refuse what the local target cannot run, before anything is created."""
        if spec.node_count > 1:
            raise SpecError(
                f"node_count={spec.node_count}: the local target is one machine; use "
                "process_count_per_node for more ranks here",
                field="node_count",
            )
        check_rank_count(spec)
        refuse_conda(spec.environment, "the local virtualenv builder", LOCAL_CONDA_ADVICE)

    def prepare(self, spec: JobSpec, run: RunDir, show_output: bool = False) -> dict[str, Any]:
        return build_environment(spec, run)

    def plan(self, spec: JobSpec, run: RunDir, resume_dir: Path | None) -> LaunchPlan:
        self.check(spec)
        python = interpreter(spec)
        command = [python, spec.entry_script, *spec.arguments]
        wrapped = [*rank_wrapper_argv(python, run.logs), *command]
        env = job_variables(spec, run, resume_dir, hosts=[socket.gethostname()])
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        config = spec.distribution
        if isinstance(config, (Mpi, Horovod)):
            gloo = isinstance(config, Horovod) and config.controller == "gloo"
            user_env = spec.environment.environment_variables
            probe_env = {**base_environment(), **user_env}
            chosen = None if gloo else mpijob.on_this_machine(config, python, probe_env, user_env)
            pythonpath = os.environ.get("PYTHONPATH")
            env.update(mpijob.variables(chosen, run, spec.world_size, pythonpath))
            if isinstance(config, Horovod) and config.launcher == "horovodrun":
                path = horovod.find_horovodrun(config)
                argv = horovod.horovodrun_argv(path, config, spec.world_size, None, wrapped)
                if chosen is not None:  # horovodrun runs the first mpirun on PATH: the chosen one
                    env["PATH"] = os.pathsep.join(
                        [os.path.dirname(chosen.launcher.path), os.environ.get("PATH", "")]
                    )
            else:
                assert chosen is not None  # Horovod's Gloo controller is started by horovodrun
                argv = mpi.mpi_argv(
                    chosen.launcher, mpijob.settings(config), spec.world_size, wrapped
                )
        elif isinstance(config, PyTorchConfiguration):
            argv = torchrun_argv(
                python, config, 1, spec.process_count_per_node, wrapped, run_id=run.id
            )
            env.update(torchrun_env(config))
        else:  # one process: the reaper is its rank wrapper (LaunchPlan.rank_logs)
            argv = command
            env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        solo = config is None
        return LaunchPlan(
            target=self.name,
            commands=[argv],
            env=env,
            cwd=str(run.snapshot),
            world_size=spec.world_size,
            rank_logs=str(run.logs) if solo else None,
            provisional=not os.access(python, os.X_OK),
            interpreter=python,
            notes=[
                f"user-managed environment: {python} as it is"
                if spec.environment.python.user_managed_dependencies
                else f"virtualenv of environment {spec.environment.name!r}: {python}"
            ],
        )
