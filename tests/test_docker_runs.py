"""Jobs in Docker for real: MPI ranks in a container, timeouts and resume, fail-fast,
the supervisor's death, the image cache, and the Chainer example.

Full builds start FROM local/debian:bookworm (scripts/install-docker.sh makes it with
debootstrap: no registry is reachable here), through FITDOCK_BASE_IMAGE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import containers, run_dirs, wait_until

from fitdock import Chainer, Estimator, Mpi, Run, RunStatus
from fitdock.environments.image import ensure_image
from fitdock.errors import MpiMismatchError

pytestmark = pytest.mark.docker

BASE = "local/debian:bookworm"
PACKAGES = ["numpy<2", "mpi4py", "mpich"]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

JOB = """\
import json, os, sys, time
from fitdock import Run
ctx = Run.get_context()
import numpy
from mpi4py import MPI
total = MPI.COMM_WORLD.allreduce(ctx.rank + 1)
record = {"rank": ctx.rank, "size": ctx.world_size, "uid": os.getuid(), "sum": total,
          "numpy": numpy.__version__}
(ctx.output_dir / f"rank{ctx.rank}.json").write_text(json.dumps(record))
ctx.log("sum", total)
if len(sys.argv) > 1 and sys.argv[1] == "fail" and ctx.rank == 1:
    print("rank 1: out of memory", file=sys.stderr, flush=True)
    os._exit(3)  # no interpreter teardown: torch/MPI finalizers could turn 3 into an abort
if len(sys.argv) > 1:
    (ctx.output_dir / f"pid{ctx.rank}").write_text(str(os.getpid()))
    time.sleep(60)
"""

STEPS = 20
STALL_AT = 4
TRAIN = f"""\
import json, os, sys, time
from fitdock import Run
ctx = Run.get_context()
state, step = 1, 0
if ctx.resume_dir is not None and (ctx.resume_dir / "state.json").exists():
    saved = json.loads((ctx.resume_dir / "state.json").read_text())
    state, step = saved["state"], saved["step"]
ctx.log("start_step", step)
while step < {STEPS}:
    state = (state * 1103515245 + 12345) % 2**31
    step += 1
    tmp = ctx.checkpoint_dir / "state.json.tmp"
    tmp.write_text(json.dumps({{"state": state, "step": step}}))
    os.replace(tmp, ctx.checkpoint_dir / "state.json")
    if step == (int(sys.argv[1]) if len(sys.argv) > 1 else 0):  # STALL_AT, in the cut run
        time.sleep(60)  # the cut run waits here for its deadline: cut at a known step
    time.sleep(0.25)
(ctx.output_dir / "final.json").write_text(json.dumps({{"state": state, "step": step}}))
"""


@pytest.fixture(autouse=True)
def local_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITDOCK_BASE_IMAGE", BASE)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "job.py").write_text(JOB)
    (src / "train.py").write_text(TRAIN)
    return src


def in_docker(source: Path, *args: str, script: str = "job.py", **kwargs: object) -> Estimator:
    options: dict[str, object] = {
        "process_count_per_node": 2,
        "distributed_training": Mpi(),
        "max_run_duration_seconds": 300,
        **kwargs,
    }
    return Estimator(
        source, entry_script=script, script_params=list(args), pip_packages=PACKAGES,
        use_docker=True, termination_grace_seconds=2, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def removed(*run_ids: str) -> bool:
    """The runs' containers are gone: ``docker run --rm`` returns when the container exits,
    and the daemon removes it just after, so a loaded machine may still list it briefly."""
    return wait_until(lambda: not any(containers(run_id) for run_id in run_ids), 10, 0.1)


@pytest.mark.timeout(900)  # the first test here builds the image
def test_two_mpi_ranks_in_a_container_then_a_cache_hit(source: Path) -> None:
    first = in_docker(source).fit()
    assert first.status is RunStatus.COMPLETED, first.error
    for rank in (0, 1):
        record = json.loads((first.output_dir / f"rank{rank}.json").read_text())
        assert record == {
            "rank": rank,
            "size": 2,
            "uid": os.getuid(),
            "sum": 3,
            "numpy": record["numpy"],
        }
        assert record["numpy"].startswith("1.")
    assert first.get_metrics() == {"sum": [3, 3]}
    chosen = first.record["env"]["FITDOCK_MPI"]  # probed in the image: its own launcher
    assert chosen.startswith("MPICH") and "/opt/fitdock/venv/bin/" in chosen
    assert "mpi4py: MPICH" in chosen
    second = in_docker(source).fit()
    assert second.status is RunStatus.COMPLETED, second.error
    build = second.record["environment_build"]
    assert (build["built"], build["layers_built"]) == (False, 0)
    assert build["image"] == first.record["environment_build"]["image"]
    assert build["seconds"] < 5.0  # a hit, not a build; bench (h) measures its cost
    assert any(line.startswith("mpi4py==") for line in build["packages"])  # what is installed
    assert removed(first.id, second.id)


def test_an_image_whose_mpi4py_cannot_use_its_launcher_is_refused(
    source: Path, fitdock_home: Path
) -> None:
    """The user pins mpi4py to Open MPI's library, which the image does not hold: its ranks
    could not form one world with the image's MPICH. The image is built first, so the
    probe runs when fit() plans, and fit() refuses (a cold image is probed after its build
    instead, and the run is then Failed: see test_mpi_match.py for that path)."""
    est = in_docker(source, environment_variables={"MPI4PY_LIBMPI": "libmpi.so.40"})
    ensure_image(est.environment, base_image=BASE, progress=False)
    with pytest.raises(MpiMismatchError) as caught:
        est.fit()
    message = str(caught.value)
    assert "in image fitdock-env:" in message and "MPICH" in message
    assert "mpi4py loads no MPI library by itself" in message
    assert run_dirs(fitdock_home) == []


def test_a_failing_rank_in_a_container_stops_the_other(source: Path) -> None:
    run = in_docker(source, "fail").fit()
    returned = time.time()
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert (run.error["rank"], run.error["exit_code"]) == (1, 3)
    assert "out of memory" in run.error["stderr_tail"]
    other, failed = run.record["ranks"]["0"], run.record["ranks"]["1"]
    if other["recorded"]:  # its wrapper lived to write an exit record
        assert other["ended"] - failed["ended"] < 5.0  # stopped within 5 s
    else:  # killed with the job: the record says so instead of being null
        assert other["note"].startswith("no exit status: stopped with the job")
    # either way fit() returned soon after rank 1's exit (the container shares this clock),
    # not after rank 0's 60 s sleep: SIGTERM, the 2 s grace, SIGKILL, the container removed
    assert failed["ended"] is not None
    assert 0 <= returned - failed["ended"] < 20, (returned, failed)
    assert removed(run.id)


def test_timeout_then_resume_in_a_container_ends_like_an_uninterrupted_run(source: Path) -> None:
    single = {"process_count_per_node": 1, "distributed_training": None}
    whole = in_docker(source, script="train.py", **single).fit()
    # the deadline counts from `docker run`: 6 s leave a slow container start 5 s to get
    # through the 4 steps before STALL_AT, where the job waits to be cut
    # (an argument, not a variable: variables are part of the image's hash)
    cut = in_docker(
        source, str(STALL_AT), script="train.py", max_run_duration_seconds=6, **single
    ).fit()
    assert whole.status is RunStatus.COMPLETED, whole.error
    assert cut.status is RunStatus.TIMED_OUT
    saved = json.loads((cut.checkpoint_dir / "state.json").read_text())
    assert saved["step"] == STALL_AT  # mid-way: 0 < STALL_AT < STEPS
    resumed = in_docker(source, script="train.py", resume_from=cut, **single).fit()
    assert resumed.status is RunStatus.COMPLETED, resumed.error
    assert resumed.get_metrics("start_step", as_lists=True) == {"start_step": [saved["step"]]}
    final = [json.loads((r.output_dir / "final.json").read_text()) for r in (whole, resumed)]
    assert final[0] == final[1]
    assert removed(cut.id)


PARENT = """\
import sys
from fitdock import Estimator, Mpi
est = Estimator(sys.argv[1], entry_script="job.py", script_params=["sleep"],
                pip_packages={packages!r}, use_docker=True, process_count_per_node=2,
                distributed_training=Mpi())
from fitdock.execution.submit import submit
run = submit(est.job_spec, wait=False)  # supervised in this process (fit(wait=False) detaches)
print(run.id, flush=True)
run.wait_for_completion(raise_on_error=False)
"""


def test_the_container_stops_when_its_supervisor_is_killed(source: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(packages=PACKAGES), str(source)],
        stdout=subprocess.PIPE, text=True, env=os.environ,
    )  # fmt: skip
    assert parent.stdout is not None
    run_id = parent.stdout.readline().strip()
    run = Run(run_id)
    deadline = time.monotonic() + 120
    while not (run.output_dir / "pid1").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert containers(run_id), "the job should be running in its container"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    killed = time.monotonic()
    while containers(run_id) and time.monotonic() - killed < 15:
        time.sleep(0.1)
    assert not containers(run_id), "the container outlived its supervisor"
    assert time.monotonic() - killed < 10
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "lost_supervisor"


def test_a_failing_image_build_fails_the_run_with_the_step(source: Path) -> None:
    est = Estimator(
        source,
        entry_script="job.py",
        pip_packages=["fitdock-no-such-package-xyz==1.0"],
        use_docker=True,
    )
    run = est.fit()
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "environment_build"
    assert "RUN" in run.error.get("step", "") or "RUN" in run.error["message"]
    assert (run.log_dir / "image-build.log").exists()


@pytest.mark.chainer
@pytest.mark.slow
@pytest.mark.timeout(1200)  # a cold machine builds Chainer's sdist in the image first
def test_chainer_example_with_two_ranks_in_its_curated_image() -> None:
    est = Chainer(
        source_directory=EXAMPLES / "chainer_mnist", entry_script="train.py",
        script_params={"--epochs": 2}, process_count_per_node=2, distributed_training=Mpi(),
        use_docker=True, max_run_duration_seconds=900, hang_timeout_seconds=120,
    )  # fmt: skip
    run = est.fit()
    assert run.status is RunStatus.COMPLETED, run.error
    hashes = {(run.output_dir / f"params_rank{r}.sha256").read_text() for r in (0, 1)}
    assert len(hashes) == 1
    assert len(run.get_metrics()["loss"]) == 2


COLD_FIT = """\
import sys
from fitdock import Estimator
est = Estimator(sys.argv[1], entry_script="train.py", pip_packages={packages!r}, use_docker=True,
                environment_variables={{"COLD": sys.argv[2]}}, script_params=["--quick"])
run = est.fit()
print(run.id, run.status.value, run.record["environment_build"]["built"], flush=True)
"""


def test_four_concurrent_fits_of_a_cold_environment_build_it_once(source: Path) -> None:
    (source / "train.py").write_text("print('quick')\n")
    cold = f"{os.getpid()}-{time.time_ns()}"  # a variable no image has yet: a new hash
    script = COLD_FIT.format(packages=PACKAGES)
    fits = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(source), cold], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [fit.communicate(timeout=600)[0].split() for fit in fits]
    assert [r[1] for r in results] == ["Completed"] * 4, results
    assert sorted(r[2] for r in results) == ["False", "False", "False", "True"]
