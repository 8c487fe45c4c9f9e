"""The slurm target: the job runs as a Slurm batch job, submitted with ``sbatch``.

``plan`` renders the sbatch script (``sbatch.py``); ``supervise`` builds the environment,
writes the script and the two job-side programs (``jobtree.py``, ``slurmjob.py``) into
``<run>/slurm/``, submits, and then watches the job with ``scontrol`` until it ends,
mirroring its state in the run record (Queued, Running, then the end). Time limits,
the checkpoint signal and requeues happen inside the job (``slurmjob.py``), so the job
needs no watcher: if this process ends, the job goes on and any later reader of the run
asks Slurm (``slurmrecord.refresh``). ``Run.cancel()`` is ``scancel``.

The run folder and the interpreter must be on a filesystem every node shares.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock.distributions import mpijob
from fitdock.distributions.mpi import Flavor
from fitdock.errors import FitdockError, NotAvailableError, SpecError
from fitdock.jobside import jobtree, slurmjob
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, now_iso, runs_root
from fitdock.specs.compute import Slurm
from fitdock.specs.distribution import Horovod, Mpi
from fitdock.specs.job import JobSpec
from fitdock.targets import local
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.slurm import ctl as slurmctl
from fitdock.targets.slurm import record as slurmrecord
from fitdock.targets.slurm import sbatch
from fitdock.targets.variables import base_environment, job_variables

if TYPE_CHECKING:
    from fitdock.execution.supervisor import Supervisor

NAME = "slurm"
POLL_SECONDS = 0.25
SLURM_SILENCE_SECONDS = 300  # how long Slurm may not answer before the watcher gives up


def config_of(spec: JobSpec) -> Slurm:
    target = spec.compute_target
    return target if isinstance(target, Slurm) else Slurm()


def check(spec: JobSpec) -> None:
    """Refuse what the slurm target cannot run, before anything is created."""
    if spec.use_docker:
        raise NotAvailableError(
            "use_docker=True on the slurm target: run a container through your cluster's "
            "own integration (e.g. extra_sbatch_args=['--container-image=...'] with Pyxis)"
        )
    if isinstance(spec.distribution, Horovod) and spec.distribution.launcher == "horovodrun":
        raise SpecError(
            "Horovod(launcher='horovodrun') on the slurm target: Horovod's ranks start like MPI "
            "ranks there; use Horovod() (srun) or Slurm(mpi_launcher='mpirun')",
            field="distributed_training",
        )
    if spec.hang_timeout_seconds is not None:
        raise NotAvailableError("hang_timeout_seconds is not available on the slurm target yet")
    if spec.environment.python.conda_packages and not (
        spec.environment.python.user_managed_dependencies
    ):
        raise NotAvailableError(
            "conda_packages need a conda solver, which fitdock's virtualenv builder does not "
            "have: activate a conda environment on the cluster and pass user_managed=True"
        )
    if any(ch.isspace() for ch in str(runs_root())):
        raise SpecError(
            f"FITDOCK_HOME={runs_root()} has white space, which #SBATCH lines cannot "
            "carry; choose a folder without spaces",
            field="compute_target",
        )


def plan(spec: JobSpec, run: RunDir, resume_dir: Path | None) -> LaunchPlan:
    check(spec)
    config = config_of(spec)
    python = local.interpreter(spec)
    venv_bin = (
        None if spec.environment.python.user_managed_dependencies else str(Path(python).parent)
    )
    env = job_variables(spec, run, resume_dir, hosts=["$SLURM_JOB_NODELIST"])
    # Per rank (jobtree) or per node (the script reads Slurm's variables), not this machine's:
    del env["SM_HOSTS"], env["SM_CURRENT_HOST"], env["SM_NUM_CPUS"]
    env["SM_NUM_GPUS"] = str(config.gpus_per_node or 0)
    env["FITDOCK_TARGET"] = NAME
    mpirun = None
    launcher = None
    distribution = spec.distribution
    if isinstance(distribution, (Mpi, Horovod)):
        user_env = spec.environment.environment_variables
        probe_env = {**base_environment(), **user_env}
        if sbatch.uses_mpirun(spec, config):
            chosen = mpijob.on_this_machine(distribution, python, probe_env, user_env)
            settings = mpijob.settings(distribution)
            mpirun = [chosen.launcher.path, "-n", str(spec.world_size), *settings.extra_args]
        else:  # srun starts the ranks: mpi4py must load an MPI that speaks srun's PMI
            chosen = mpijob.under_srun(distribution, config.srun_mpi, python, probe_env, user_env)
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
        target=NAME,
        commands=[["sbatch", "--parsable", str(script)]],
        env=env,
        cwd=str(run.snapshot),
        world_size=spec.world_size,
        interpreter=python,
        files={sbatch.SCRIPT: text},
        notes=notes,
        main_file=sbatch.SCRIPT,
    )


def prepare(spec: JobSpec, run: RunDir, show_output: bool = False) -> dict[str, Any]:
    """The environment (a virtualenv under ``$FITDOCK_HOME``, which the nodes must share)."""
    return local.prepare(spec, run, show_output)


def write_files(plan: LaunchPlan, run: RunDir) -> Path:
    """The script and the job-side programs, into ``<run>/slurm/``."""
    folder = run.path / "slurm"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(jobtree.__file__, folder / sbatch.JOBTREE)
    shutil.copyfile(slurmjob.__file__, folder / sbatch.DRIVER)
    script = folder / sbatch.SCRIPT
    script.write_text(plan.files[sbatch.SCRIPT])
    script.chmod(0o755)
    return script


def supervise(supervisor: Supervisor) -> None:
    """Submit the job and mirror its state in the run record until it ends."""
    run = supervisor.run_dir
    if not supervisor.prepare_environment():
        return
    plan = supervisor.plan  # planned again in the prepared environment
    if supervisor.cancel_requested.is_set() or run.cancel_path.exists():
        run.update(
            status=RunStatus.CANCELED.value,
            ended_at=now_iso(),
            error={"reason": "canceled", "message": "canceled by request before submission"},
        )
        return
    try:
        job_id = slurmctl.submit(str(write_files(plan, run)), base_environment())
    except FitdockError as exc:
        error = {"reason": "submit", "message": str(exc)}
        run.update(status=RunStatus.FAILED.value, ended_at=now_iso(), error=error)
        return
    slurm = {"job_id": job_id, "script": str(run.path / "slurm" / sbatch.SCRIPT)}
    slurm["submit_host"] = socket.gethostname()
    record = run.update(status=RunStatus.QUEUED.value, slurm=slurm)
    canceled = False
    answered = time.monotonic()
    while True:
        if not canceled and (supervisor.cancel_requested.is_set() or run.cancel_path.exists()):
            record = run.update(cancel_requested=True)
            slurmctl.cancel(job_id)
            canceled = True
        try:
            changes = slurmrecord.observe(run, record)
        except slurmctl.SlurmError as exc:  # slurmctld busy or restarting: try again
            if time.monotonic() - answered > SLURM_SILENCE_SECONDS:
                error = {"reason": "slurm", "message": f"{exc} (for {SLURM_SILENCE_SECONDS} s)"}
                run.update(status=RunStatus.FAILED.value, ended_at=now_iso(), error=error)
                return
            time.sleep(POLL_SECONDS)
            continue
        answered = time.monotonic()
        if any(record.get(key) != value for key, value in changes.items()):
            record = run.update(**changes)
        if RunStatus(record["status"]).is_terminal:
            return
        if canceled:
            time.sleep(POLL_SECONDS)
        else:
            supervisor.cancel_requested.wait(POLL_SECONDS)


def cancel_detached(run: RunDir, record: dict[str, Any]) -> None:
    """Cancel a Slurm run whose submitting process is gone."""
    run.update(cancel_requested=True)
    slurmctl.cancel(record["slurm"]["job_id"])
