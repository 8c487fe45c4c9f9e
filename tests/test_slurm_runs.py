"""Jobs on a real Slurm: a private one-node cluster (tests/slurm_cluster.py) that the session
starts, with Debian's slurm-wlm, munge, PMIx and Open MPI. Time limits here come from the job
script's own timer (exact to the second) or from signals sent through Slurm itself
(``scancel --signal``, preemption); Slurm's own ``--time`` is coarser (tens of seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until, write_script

from fitdock import Chainer, Estimator, Mpi, PyTorchConfiguration, Run, RunStatus, Slurm

pytestmark = pytest.mark.slurm
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

MPI_HELLO = """
import json, os
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1)
names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "FITDOCK_RUN_ID", "SM_CURRENT_HOST", "SM_NUM_CPUS")
seen = {name: os.environ.get(name) for name in names}
print(json.dumps({"mpi_rank": comm.Get_rank(), "size": comm.Get_size(), "sum": total, **seen}))
"""

# Deterministic "training": STEPS steps of STEP_SECONDS, a checkpoint after each, resumed from
# FITDOCK_RESUME_DIR; on SIGTERM it saves and exits 0 at once (the step's state is complete).
# Every rank computes the same state; rank 0 writes the files. With HOLD_AT=n the first
# attempt stops after step n and waits for its time limit there: it is cut at a known step
# however slowly the interpreter started.
STEPS_SCRIPT = """
import json, os, signal, sys, time
from pathlib import Path
writer = os.environ["RANK"] == "0"
ckpt = Path(os.environ["FITDOCK_CHECKPOINT_DIR"]) / "state.json"
out = Path(os.environ["FITDOCK_OUTPUT_DIR"])
resume = os.environ.get("FITDOCK_RESUME_DIR")
state, step = 1, 0
if resume and (Path(resume) / "state.json").exists():
    saved = json.loads((Path(resume) / "state.json").read_text())
    state, step = saved["state"], saved["step"]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(time.time()))
print(f"attempt {os.environ['FITDOCK_ATTEMPT']} starts at step {step}", flush=True)
hold = os.environ["FITDOCK_ATTEMPT"] == "1" and int(os.environ.get("HOLD_AT", "0"))
while step < int(os.environ["STEPS"]) and not stop:
    time.sleep(float(os.environ["STEP_SECONDS"]))
    while hold and step == hold and not stop:  # attempt 1 waits here for its time limit
        time.sleep(0.05)
    if stop:
        break
    state = (state * 1103515245 + 12345) % 2**31
    step += 1
    if writer:
        ckpt.with_suffix(".tmp").write_text(json.dumps({"state": state, "step": step}))
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
if stop:
    if writer:
        (out / f"sigterm-{os.environ['FITDOCK_ATTEMPT']}").write_text(str(len(stop)))
    print(f"SIGTERM at step {step}: checkpoint saved", flush=True)
    sys.exit(0)
if writer:
    (out / "final.json").write_text(json.dumps({"state": state, "step": step}))
"""


def steps_job(
    src: Path, steps: int, step_seconds: float, hold_at: int = 0, **kwargs: Any
) -> Estimator:
    return Estimator(
        write_script(src, STEPS_SCRIPT),
        entry_script="train.py",
        compute_target=kwargs.pop("compute_target", Slurm()),
        user_managed=True,
        environment_variables={"STEPS": steps, "STEP_SECONDS": step_seconds, "HOLD_AT": hold_at},
        termination_grace_seconds=5,
        **kwargs,
    )


def expected(steps: int) -> dict[str, int]:
    state = 1
    for _ in range(steps):
        state = (state * 1103515245 + 12345) % 2**31
    return {"state": state, "step": steps}


def final_state(run: Run) -> dict[str, int]:
    return dict(json.loads((run.output_dir / "final.json").read_text()))


def job_id(run: Run) -> str:
    return str(run.record["slurm"]["job_id"])


def wait_for_step(run: Run, step: int, timeout: float = 60) -> None:
    def reached() -> bool:
        try:
            saved = json.loads((run.checkpoint_dir / "state.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(saved["step"] >= step)

    assert wait_until(reached, timeout, 0.1), f"run {run.id} never reached step {step}"


# ---------------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_two_mpi_ranks_through_srun_pmix(
    slurm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_script(tmp_path / "src", MPI_HELLO)
    est = Estimator(
        src,
        entry_script="train.py",
        compute_target=Slurm(partition=slurm.partition),
        distributed_training=Mpi(process_count_per_node=2),
        user_managed=True,
    )
    run = est.fit(show_output=True)
    assert run.status is RunStatus.COMPLETED, run.error
    record = run.record
    assert record["target"] == "slurm" and record["slurm"]["state"] == "COMPLETED"
    assert [a["outcome"] for a in record["attempts"]] == ["completed"]
    lines = [json.loads((run.log_dir / f"rank_{r}.stdout.log").read_text()) for r in (0, 1)]
    for rank, seen in enumerate(lines):
        assert (seen["mpi_rank"], seen["size"], seen["sum"]) == (rank, 2, 3)
        assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"]) == (str(rank), "2", str(rank))
        assert seen["FITDOCK_RUN_ID"] == run.id and seen["SM_CURRENT_HOST"] == slurm.host
        assert seen["SM_NUM_CPUS"] == "2"
    assert {record["ranks"][r]["exit_code"] for r in ("0", "1")} == {0}
    script = Path(record["slurm"]["script"]).read_text()
    assert "srun --kill-on-bad-exit=1 --ntasks=2 --mpi=pmix" in script
    # srun's PMIx needs Open MPI: the PyPI mpi4py, which loads MPICH first, is switched
    assert "mpi4py switched with MPI4PY_LIBMPI=libmpi.so.40" in record["env"]["FITDOCK_MPI"]
    assert f"[rank 1] {json.dumps(lines[1])}" in capsys.readouterr().out  # show_output followed


def test_overrun_checkpoints_is_requeued_and_ends_like_an_uninterrupted_run(
    slurm: Any, tmp_path: Path
) -> None:
    whole = steps_job(tmp_path / "src", steps=16, step_seconds=0.1).fit()
    cut = steps_job(
        tmp_path / "src", steps=16, step_seconds=0.1, hold_at=3, max_run_duration_seconds=2.0
    )
    run = cut.fit()
    assert whole.status is RunStatus.COMPLETED, whole.error
    assert run.status is RunStatus.COMPLETED, run.error
    assert final_state(run) == final_state(whole) == expected(16)
    attempts = run.record["attempts"]
    assert len(attempts) >= 2
    assert attempts[0]["outcome"] == "timeout" and attempts[0]["requeued"] is True
    assert attempts[0]["detail"] == "exceeded max_run_duration_seconds=2"
    assert attempts[-1]["outcome"] == "completed" and attempts[-1]["resumed"] is True
    assert (run.output_dir / "sigterm-1").read_text() == "1"  # SIGTERM reached the rank once
    assert (
        (run.log_dir / "attempt-1" / "rank_0.stdout.log")
        .read_text()
        .startswith("attempt 1 starts at step 0")
    )
    assert "attempt 2 starts at step 3" in (run.log_dir / "rank_0.stdout.log").read_text()
    assert run.record["slurm"]["state"] == "COMPLETED"


def test_usr2_from_slurm_means_checkpoint_then_requeue(slurm: Any, tmp_path: Path) -> None:
    run = steps_job(tmp_path / "src", steps=40, step_seconds=0.1).fit(wait=False)
    wait_for_step(run, 3)
    done = slurm.run("scancel", "--batch", "--signal=USR2", job_id(run))  # as --signal=B:USR2
    assert done.returncode == 0, done.stderr
    run.wait_for_completion()
    attempts = run.record["attempts"]
    assert attempts[0]["outcome"] == "timeout"
    assert attempts[0]["detail"] == "signal SIGUSR2 from Slurm"
    assert [a["outcome"] for a in attempts[1:]] == ["completed"]
    assert final_state(run) == expected(40)


@pytest.mark.slow
def test_preempted_job_is_requeued_by_slurm_and_resumes(slurm: Any, tmp_path: Path) -> None:
    est = steps_job(
        tmp_path / "src",
        steps=60,
        step_seconds=0.5,
        distributed_training=Mpi(process_count_per_node=slurm.cpus),  # the whole node
    )
    run = est.fit(wait=False)
    wait_for_step(run, 2)
    urgent = slurm.run(
        "sbatch", "--partition=urgent", f"--ntasks={slurm.cpus}", "--output=/dev/null",
        "--wrap=sleep 1",
    )  # fmt: skip
    assert urgent.returncode == 0, urgent.stderr
    run.wait_for_completion(raise_on_error=False)
    assert run.status is RunStatus.COMPLETED, run.error
    attempts = run.record["attempts"]
    assert attempts[0]["outcome"] == "preempted" and attempts[0]["requeued"] is True
    assert attempts[1]["resumed"] is True and attempts[-1]["outcome"] == "completed"
    assert (run.output_dir / "sigterm-1").read_text() == "1"
    assert final_state(run) == expected(60)


def test_cancel_is_scancel_and_the_rank_gets_sigterm(slurm: Any, tmp_path: Path) -> None:
    run = steps_job(tmp_path / "src", steps=600, step_seconds=0.1).fit(wait=False)
    wait_for_step(run, 2)
    started = time.monotonic()
    run.cancel()
    record = run.wait_for_completion(raise_on_error=False)
    assert record["status"] == RunStatus.CANCELED.value, record["error"]
    assert time.monotonic() - started < 15, record["attempts"]
    assert record["slurm"]["state"] == "CANCELLED"
    assert "canceled by request" in record["error"]["message"]
    assert (run.output_dir / "sigterm-1").read_text() == "1"  # it saved its checkpoint
    assert wait_until(lambda: not slurm.run("squeue", "-h").stdout.strip(), 30)


def test_failing_rank_fails_the_job_fast_and_is_named(slurm: Any, tmp_path: Path) -> None:
    src = write_script(
        tmp_path / "src",
        """
        import os, sys, time
        if os.environ["RANK"] == "1":
            print("rank 1: bad batch", file=sys.stderr, flush=True)
            os._exit(3)
        time.sleep(60)
        """,
    )
    est = Estimator(
        src,
        entry_script="train.py",
        compute_target=Slurm(),
        distributed_training=Mpi(process_count_per_node=2),
        user_managed=True,
    )
    started = time.monotonic()
    run = est.fit()
    assert time.monotonic() - started < 20  # srun --kill-on-bad-exit stops rank 0
    assert run.status is RunStatus.FAILED
    error = run.error or {}
    assert (error["rank"], error["exit_code"]) == (1, 3)
    assert "rank 1: bad batch" in error["stderr_tail"]
    assert [a["outcome"] for a in run.record["attempts"]] == ["failed"]


def test_job_outlives_the_process_that_submitted_it(slurm: Any, tmp_path: Path) -> None:
    write_script(tmp_path / "src", STEPS_SCRIPT)
    code = f"""
import os
from fitdock import Estimator, Slurm
run = Estimator({str(tmp_path / "src")!r}, entry_script="train.py", compute_target=Slurm(),
                user_managed=True, environment_variables={{"STEPS": 10, "STEP_SECONDS": 0.2}}
                ).fit(wait=False)
import time
while not run.record["slurm"]:  # submitted: the record holds the job
    time.sleep(0.05)
print(run.id, flush=True)
os._exit(0)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    run = Run(done.stdout.strip())
    assert not run.status.is_terminal  # the submitter is gone, the job goes on
    run.wait_for_completion()
    assert final_state(run) == expected(10)


@pytest.mark.torch
def test_torchrun_on_slurm(slurm: Any, tmp_path: Path) -> None:
    src = write_script(
        tmp_path / "src",
        """
        import os, torch, torch.distributed as dist
        dist.init_process_group("gloo")
        t = torch.tensor([dist.get_rank() + 1.0])
        dist.all_reduce(t)
        print(os.environ["RANK"], os.environ["LOCAL_RANK"], dist.get_world_size(), int(t.item()))
        dist.destroy_process_group()
        """,
    )
    run = Estimator(
        src,
        entry_script="train.py",
        compute_target=Slurm(),
        distributed_training=PyTorchConfiguration(process_count=2),
        user_managed=True,
    ).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    for rank in (0, 1):
        text = (run.log_dir / f"rank_{rank}.stdout.log").read_text().split()
        assert text == [str(rank), str(rank), "2", "3"]


@pytest.mark.mpi
def test_mpirun_inside_the_allocation(slurm: Any, tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", MPI_HELLO)
    run = Estimator(
        src,
        entry_script="train.py",
        compute_target=Slurm(mpi_launcher="mpirun"),
        distributed_training=Mpi(process_count_per_node=2, mpirun="/usr/bin/mpirun"),
        user_managed=True,
    ).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    assert "/usr/bin/mpirun -n 2" in Path(run.record["slurm"]["script"]).read_text()
    sums = [json.loads((run.log_dir / f"rank_{r}.stdout.log").read_text())["sum"] for r in (0, 1)]
    assert sums == [3, 3]


@pytest.mark.chainer
@pytest.mark.mpi
def test_chainer_example_on_slurm(slurm: Any) -> None:
    run = Chainer(
        source_directory=EXAMPLES / "chainer_mnist",
        entry_script="train.py",
        script_params={"--epochs": 2},
        compute_target=Slurm(),
        process_count_per_node=2,
        distributed_training=Mpi(),
        user_managed=True,
        max_run_duration_seconds=300,
    ).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    hashes = [(run.output_dir / f"params_rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    assert len(run.get_metrics()["loss"]) == 2


def test_cli_runs_a_job_file_on_slurm(slurm: Any, tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", "import os\nprint('hello from', os.environ['RANK'])\n")
    job = tmp_path / "job.yml"
    job.write_text(
        "source_directory: src\nentry_script: train.py\nuser_managed: true\n"
        f"compute_target: {{kind: slurm, partition: {slurm.partition}}}\n"
    )
    fitdock = [sys.executable, "-m", "fitdock.cli"]
    dry = subprocess.run([*fitdock, "run", str(job), "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("#!/bin/bash") and "#SBATCH --partition=debug" in dry.stdout
    done = subprocess.run([*fitdock, "run", str(job)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[rank 0] hello from 0" in done.stdout and ": Completed" in done.stdout
    assert src.is_dir()
