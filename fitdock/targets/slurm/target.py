"""The slurm target: the job runs as a Slurm batch job, submitted with ``sbatch``.

``plan`` renders the sbatch script (``sbatch.py``); ``prepare`` builds the environment
(a virtualenv, as on the local target); ``submit`` writes the script and the job-side
programs (``jobtree.py``, ``slurmjob.py`` and the ``common.py`` they share) into
``<run>/slurm/`` and runs ``sbatch``; ``describe`` says where the job is, from
``scontrol`` and the records each attempt wrote (``record.py``). Time limits, the
checkpoint signal and requeues happen inside the job (``slurmjob.py``), so the job needs
no watcher: if the supervising process ends, the job goes on and any later reader of
the run asks Slurm the same way. ``stop`` is ``scancel``.

The run folder and the interpreter must be on a filesystem every node shares.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

from fitdock.distributions import mpi, mpijob
from fitdock.distributions.mpi import Flavor
from fitdock.environments.spec import refuse_conda
from fitdock.errors import NotAvailableError, SlurmError, SpecError
from fitdock.jobside import common, jobtree, slurmjob
from fitdock.runs.record import RunRecord, ScheduledJob
from fitdock.runs.store import RunDir, runs_root
from fitdock.specs.compute import Slurm
from fitdock.specs.distribution import Horovod, Mpi
from fitdock.specs.job import JobSpec
from fitdock.targets import local
from fitdock.targets.base import JobDescription, Target
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.slurm import ctl as slurmctl
from fitdock.targets.slurm import record as slurmrecord
from fitdock.targets.slurm import sbatch
from fitdock.targets.variables import base_environment, job_variables


def config_of(spec: JobSpec) -> Slurm:
    target = spec.compute_target
    return target if isinstance(target, Slurm) else Slurm()


def write_files(plan: LaunchPlan, run: RunDir) -> Path:
    """The script and the job-side programs, into ``<run>/slurm/``."""
    folder = run.path / "slurm"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(jobtree.__file__, folder / sbatch.JOBTREE)
    shutil.copyfile(slurmjob.__file__, folder / sbatch.DRIVER)
    shutil.copyfile(common.__file__, folder / "common.py")
    script = folder / sbatch.SCRIPT
    script.write_text(plan.files[sbatch.SCRIPT])
    script.chmod(0o755)
    return script


class SlurmTarget(Target):
    """A Slurm batch job; Slurm runs the attempts (requeues), fitdock follows them."""

    name = "slurm"
    schedules_attempts = True

    def check(self, spec: JobSpec) -> None:
        """Refuse what the slurm target cannot run, before anything is created."""
        if spec.use_docker:
            raise NotAvailableError(
                "use_docker=True on the slurm target: run a container through your cluster's "
                "own integration (e.g. extra_sbatch_args=['--container-image=...'] with Pyxis)"
            )
        if isinstance(spec.distribution, Horovod) and spec.distribution.launcher == "horovodrun":
            raise SpecError(
                "Horovod(launcher='horovodrun') on the slurm target: Horovod's ranks start "
                "like MPI ranks there; use Horovod() (srun) or Slurm(mpi_launcher='mpirun')",
                field="distributed_training",
            )
        if spec.hang_timeout_seconds is not None:
            raise NotAvailableError("hang_timeout_seconds is not available on the slurm target yet")
        refuse_conda(
            spec.environment,
            "the virtualenv builder",
            "activate a conda environment on the cluster and pass user_managed=True",
        )
        if any(ch.isspace() for ch in str(runs_root())):
            raise SpecError(
                f"FITDOCK_HOME={runs_root()} has white space, which #SBATCH lines cannot "
                "carry; choose a folder without spaces",
                field="compute_target",
            )

    def plan(self, spec: JobSpec, run: RunDir, resume_dir: Path | None) -> LaunchPlan:
        self.check(spec)
        config = config_of(spec)
        python = local.interpreter(spec)
        venv_bin = (
            None if spec.environment.python.user_managed_dependencies else str(Path(python).parent)
        )
        env = job_variables(spec, run, resume_dir, hosts=["$SLURM_JOB_NODELIST"])
        # Per rank (jobtree) or per node (the script reads Slurm's variables), not this machine's:
        del env["SM_HOSTS"], env["SM_CURRENT_HOST"], env["SM_NUM_CPUS"]
        env["SM_NUM_GPUS"] = str(config.gpus_per_node or 0)
        env["FITDOCK_TARGET"] = self.name
        mpirun = None
        launcher = None
        distribution = spec.distribution
        if isinstance(distribution, (Mpi, Horovod)):
            user_env = spec.environment.environment_variables
            probe_env = {**base_environment(), **user_env}
            if sbatch.uses_mpirun(spec, config):
                chosen = mpijob.on_this_machine(distribution, python, probe_env, user_env)
                settings = mpijob.settings(distribution)
                mpirun = mpi.mpi_argv(
                    chosen.launcher, settings, spec.world_size, [], mpi.ALLOCATION
                )
            else:  # srun starts the ranks: mpi4py must load an MPI that speaks srun's PMI
                chosen = mpijob.under_srun(
                    distribution, config.srun_mpi, python, probe_env, user_env
                )
            launcher = chosen.launcher
            env.update(mpijob.variables(chosen, run, spec.world_size, None))  # sbatch appends
        if launcher is None or mpirun is None or launcher.flavor is Flavor.OPEN_MPI:
            # Slurm (srun) and Open MPI's mpirun signal the script itself, not only its wrapper
            env["FITDOCK_RANK_FORWARD"] = "0"
        text = sbatch.render(spec, config, run, python, env, venv_bin, mpirun)
        script = run.path / "slurm" / sbatch.SCRIPT
        notes = [f"Slurm batch script {script}; submitted with sbatch when the run starts"]
        if spec.max_run_duration_seconds is not None:
            minutes, before_end = sbatch.time_limit(spec) or (0, 0)
            notes.append(
                f"--time={minutes} min: max_run_duration_seconds plus the grace, in whole minutes; "
                f"USR2 (checkpoint) {before_end} s before the end; "
                f"requeued up to {config.max_requeues} time(s) after a time-out"
            )
        return LaunchPlan(
            target=self.name,
            commands=[["sbatch", "--parsable", str(script)]],
            env=env,
            cwd=str(run.snapshot),
            world_size=spec.world_size,
            interpreter=python,
            files={sbatch.SCRIPT: text},
            notes=notes,
            main_file=sbatch.SCRIPT,
            provisional=launcher is not None and not chosen.checked,
        )

    def prepare(self, spec: JobSpec, run: RunDir, show_output: bool = False) -> dict[str, Any]:
        """The environment: a virtualenv under ``$FITDOCK_HOME``, which the nodes must share."""
        return local.build_environment(spec, run)

    def submit(self, plan: LaunchPlan, run: RunDir) -> ScheduledJob:
        script = write_files(plan, run)
        job_id = slurmctl.submit(str(script), base_environment())
        return ScheduledJob(job_id=job_id, script=str(script), submit_host=socket.gethostname())

    def describe(self, run: RunDir, record: RunRecord) -> JobDescription | None:
        try:
            return slurmrecord.describe(run, record)
        except SlurmError:
            return None  # slurmctld busy or restarting: not an answer

    def stop(self, run: RunDir, record: RunRecord) -> None:
        if record.slurm is not None:
            slurmctl.cancel(record.slurm.job_id)
