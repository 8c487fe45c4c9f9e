"""The slurm target without a cluster: the sbatch scripts (golden files), the time limit,
the requeue decision, ``scontrol`` parsing and the checks on bad input. The real jobs are
in test_slurm_runs.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fitdock import Estimator, Horovod, Mpi, PyTorchConfiguration, Slurm
from fitdock.distributions.mpi import Flavor, MpiLauncher
from fitdock.distributions.mpimatch import MpiMatch
from fitdock.errors import NotAvailableError, SpecError
from fitdock.jobside.common import Outcome
from fitdock.jobside.common import decide_requeue as decide
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir
from fitdock.targets.slurm import sbatch
from fitdock.targets.slurm import target as slurm_target
from fitdock.targets.slurm.ctl import parse_show_job

RUN = RunDir(Path("/shared/fitdock/runs/mnist_20261121-120000_abcdef"))
PYTHON = "/shared/envs/ml/bin/python"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print('hi')\n")
    return tmp_path / "src"


def script(estimator: Estimator, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sbatch script for ``estimator``, with machine-specific paths made fixed."""
    monkeypatch.setattr(slurm_target.local, "interpreter", lambda spec: PYTHON)
    monkeypatch.setattr(slurm_target.sbatch, "__version__", "0.0.test")
    spec = estimator.job_spec
    text = slurm_target.SlurmTarget().plan(spec, RUN, None).files[sbatch.SCRIPT]
    return text.replace(str(spec.source_directory), "/src")


def estimator(source: Path, target: Slurm, **kwargs: object) -> Estimator:
    return Estimator(
        source,
        entry_script="train.py",
        compute_target=target,
        user_managed=True,
        script_params={"--epochs": 3, "--name": "it's"},
        **kwargs,  # type: ignore[arg-type]
    )


def test_mpi_job_through_srun_pmix(
    source: Path, monkeypatch: pytest.MonkeyPatch, golden: object
) -> None:
    target = Slurm(
        partition="gpu",
        account="ml",
        qos="normal",
        gpus_per_node=2,
        cpus_per_task=4,
        mem="64G",
        constraint="a100&ib",
        extra_sbatch_args=["--exclusive"],
        max_requeues=5,
    )
    est = estimator(
        source,
        target,
        node_count=2,
        distributed_training=Mpi(process_count_per_node=2),
        max_run_duration_seconds=3600,
        termination_grace_seconds=120,
        environment_variables={"NCCL_DEBUG": "INFO"},
    )
    golden("sbatch/mpi-srun.sbatch", script(est, monkeypatch))  # type: ignore[operator]


def test_torchrun_per_node_with_a_c10d_rendezvous_on_the_first(
    source: Path, monkeypatch: pytest.MonkeyPatch, golden: object
) -> None:
    est = estimator(
        source,
        Slurm(partition="gpu", gpus_per_node=4),
        node_count=2,
        distributed_training=PyTorchConfiguration(process_count=8, node_count=2),
    )
    text = script(est, monkeypatch)
    assert "#SBATCH --ntasks-per-node=1" in text
    golden("sbatch/torchrun.sbatch", text)  # type: ignore[operator]


def test_mpirun_inside_the_allocation_when_asked(
    source: Path, monkeypatch: pytest.MonkeyPatch, golden: object
) -> None:
    launcher = MpiLauncher("/usr/bin/mpirun", Flavor.OPEN_MPI, "4.1.4")
    chosen = MpiMatch(launcher, {"MPI4PY_LIBMPI": "libmpi.so.40"})
    monkeypatch.setattr(slurm_target.mpijob, "on_this_machine", lambda *args: chosen)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the golden file is not for root
    est = estimator(
        source,
        Slurm(mpi_launcher="mpirun"),
        distributed_training=Mpi(process_count_per_node=2),
        max_run_duration_seconds=30,
        termination_grace_seconds=5,
    )
    text = script(est, monkeypatch)
    assert "--stop mpirun" in text
    golden("sbatch/mpirun.sbatch", text)  # type: ignore[operator]


def test_single_process_in_a_fitdock_virtualenv(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    est = Estimator(source, entry_script="train.py", compute_target="slurm", pip_packages=["six"])
    monkeypatch.setattr(slurm_target.local, "interpreter", lambda spec: "/h/venvs/abc/bin/python")
    text = slurm_target.SlurmTarget().plan(est.job_spec, RUN, None).files[sbatch.SCRIPT]
    assert 'export VIRTUAL_ENV=/h/venvs/abc\nexport PATH=/h/venvs/abc/bin:"$PATH"' in text
    assert "srun --kill-on-bad-exit=1 --ntasks=1 /h/venvs/abc/bin/python -I -S" in text
    assert "--mpi" not in text and "#SBATCH --time" not in text


@pytest.mark.parametrize(
    ("run_seconds", "grace", "minutes", "before_end"),
    [(3600, 30, 61, 60), (90, 30, 2, 30), (1, 30, 1, 59), (30, 0, 1, 30), (59.5, 0.5, 1, 1)],
)
def test_time_limit_is_run_time_plus_grace_in_whole_minutes(
    source: Path, run_seconds: float, grace: float, minutes: int, before_end: int
) -> None:
    spec = estimator(
        source, Slurm(), max_run_duration_seconds=run_seconds, termination_grace_seconds=grace
    ).job_spec
    assert sbatch.time_limit(spec) == (minutes, before_end)
    assert minutes * 60 - before_end >= run_seconds - 1  # USR2 comes once the run time is over


def test_requeue_decision() -> None:
    assert decide(Outcome("timeout"), attempt=1, requeues=0, max_requeues=3, max_restarts=0)
    assert decide(Outcome("preempted"), attempt=2, requeues=1, max_requeues=3, max_restarts=0)
    assert not decide(Outcome("preempted"), attempt=2, requeues=1, max_requeues=1, max_restarts=0)
    assert decide(Outcome("timeout"), attempt=3, requeues=2, max_requeues=3, max_restarts=0)
    assert not decide(Outcome("timeout"), attempt=4, requeues=3, max_requeues=3, max_restarts=0)
    assert not decide(Outcome("timeout"), attempt=1, requeues=0, max_requeues=0, max_restarts=5)
    assert not decide(Outcome("failed"), attempt=1, requeues=0, max_requeues=3, max_restarts=0)
    assert decide(Outcome("failed"), attempt=1, requeues=0, max_requeues=3, max_restarts=1)
    assert not decide(Outcome("failed"), attempt=2, requeues=1, max_requeues=3, max_restarts=1)
    for outcome in ("completed", "terminated"):
        assert not decide(Outcome(outcome), attempt=1, requeues=0, max_requeues=3, max_restarts=3)


SHOW_JOB = (
    "JobId=42 JobName=fitdock-x UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=1 Nice=0 Account=(null) QOS=(null) JobState={state} Reason={reason} "
    "Dependency=(null) Requeue=1 Restarts={restarts} BatchFlag=1 Reboot=0 ExitCode=0:0 "
    "RunTime=00:00:03 TimeLimit=00:02:00 NodeList=vm BatchHost=vm NumNodes=1 "
    "Command=/runs/x/slurm/job.sbatch WorkDir=/runs/x/snapshot StdOut=/runs/x/slurm/batch.log"
)


@pytest.mark.parametrize(
    ("state", "status", "final"),
    [
        ("PENDING", RunStatus.QUEUED, False),
        ("REQUEUED", RunStatus.QUEUED, False),
        ("RUNNING", RunStatus.RUNNING, False),
        ("COMPLETING", RunStatus.RUNNING, False),
        ("COMPLETED", RunStatus.COMPLETED, True),
        ("FAILED", RunStatus.FAILED, True),
        ("CANCELLED", RunStatus.CANCELED, True),
        ("TIMEOUT", RunStatus.TIMED_OUT, True),
        ("NODE_FAIL", RunStatus.FAILED, True),
        ("OUT_OF_MEMORY", RunStatus.FAILED, True),
    ],
)
def test_scontrol_states_map_to_run_status(state: str, status: RunStatus, final: bool) -> None:
    info = parse_show_job(SHOW_JOB.format(state=state, reason="None", restarts=2))
    assert info is not None
    assert (info.job_id, info.state, info.restarts, info.nodes) == ("42", state, 2, "vm")
    assert (info.status, info.is_final) == (status, final)


def test_scontrol_without_a_job_line() -> None:
    assert parse_show_job("slurm_load_jobs error: Invalid job id specified\n") is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partition", "gpu;rm -rf /"),
        ("account", "$(whoami)"),
        ("mem", "lots"),
        ("extra_sbatch_args", ["exclusive"]),
        ("extra_sbatch_args", ["--comment=a\n#SBATCH --uid=0"]),
        ("max_requeues", -1),
        ("mpi_launcher", "hydra"),
    ],
)
def test_bad_slurm_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(SpecError, match=field):
        Slurm(**{field: value})  # type: ignore[arg-type]


def test_what_the_slurm_target_refuses(source: Path) -> None:
    with pytest.raises(SpecError, match="not a variable name"):  # the script exports them
        estimator(source, Slurm(), environment_variables={"A B": "1"})
    with pytest.raises(SpecError, match="horovodrun"):
        estimator(
            source,
            Slurm(),
            distributed_training=Horovod(launcher="horovodrun", process_count_per_node=2),
        ).plan()
    with pytest.raises(NotAvailableError, match="hang_timeout_seconds"):
        estimator(source, Slurm(), hang_timeout_seconds=60).plan()
    with pytest.raises(NotAvailableError, match="use_docker"):
        estimator(source, Slurm(), use_docker=True).plan()


def test_dry_run_creates_nothing(source: Path, fitdock_home: Path) -> None:
    plan = estimator(source, Slurm(partition="debug")).plan()
    assert plan.target == "slurm" and plan.argv[:2] == ["sbatch", "--parsable"]
    assert "#SBATCH --partition=debug" in plan.render()
    assert not (fitdock_home / "runs").exists()
