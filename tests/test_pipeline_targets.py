"""Pipeline steps on other targets, through the same submit path as any fit(): a step on
the private Slurm cluster feeding a step in Docker, an EstimatorStep of 2 MPI ranks, and
reuse across targets (the compute target is not part of a step's key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import write_script

from fitdock import Estimator, Mpi, RunStatus, Slurm
from fitdock.environments.spec import Environment, PythonSection
from fitdock.pipelines import (
    EstimatorStep,
    Pipeline,
    PipelineData,
    PythonScriptStep,
    RunConfiguration,
)

WRITE = """\
import os, socket, sys
os.makedirs(sys.argv[1], exist_ok=True)
open(os.path.join(sys.argv[1], "where.txt"), "w").write(os.environ.get("FITDOCK_TARGET", "here"))
"""
READ = """\
import json, os, sys
from fitdock import Run
text = open(os.path.join(sys.argv[1], "where.txt")).read()
Run.get_context().log("produced_on", text)
print(json.dumps({"read": text, "in_docker": os.path.exists("/.dockerenv")}))
"""
RANKS = """\
import json, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
print(json.dumps({"rank": comm.Get_rank(), "size": comm.Get_size(), "args": sys.argv[1:]}))
"""


@pytest.mark.slurm
@pytest.mark.docker
@pytest.mark.timeout(900)  # the docker step may build its image when cold
def test_a_slurm_step_feeds_a_docker_step(
    slurm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FITDOCK_BASE_IMAGE", "local/debian:bookworm")
    src = write_script(tmp_path / "src", WRITE, name="write.py")
    write_script(src, READ, name="read.py")
    data = PipelineData("made")
    write = PythonScriptStep(
        "write.py", arguments=[data], outputs=[data], source_directory=src,
        compute_target=Slurm(partition=slurm.partition),
    )  # fmt: skip
    # the image of tests/test_docker_runs.py: one image serves both
    image_env = Environment(python=PythonSection(pip_packages=["numpy<2", "mpi4py", "mpich"]))
    read = PythonScriptStep(
        "read.py", arguments=[data], inputs=[data], source_directory=src,
        runconfig=RunConfiguration(environment=image_env, use_docker=True),
    )  # fmt: skip
    run = Pipeline(None, [read]).submit(wait=True)
    assert run.status is RunStatus.COMPLETED, (run.error, run.explain())
    (write_run,) = run.find_step_run("write.py")
    (read_run,) = run.find_step_run("read.py")
    assert write_run.record["target"] == "slurm" and read_run.record["target"] == "docker"
    seen = json.loads((read_run.log_dir / "rank_0.stdout.log").read_text())
    assert seen == {"read": "slurm", "in_docker": True}
    assert read_run.get_metrics(as_lists=True) == {"produced_on": ["slurm"]}
    assert write is not None


@pytest.mark.mpi
def test_an_estimator_step_runs_its_mpi_ranks_and_is_reused_on_another_target_setting(
    tmp_path: Path,
) -> None:
    src = write_script(tmp_path / "src", RANKS, name="ranks.py")
    est = Estimator(
        src, entry_script="ranks.py", process_count_per_node=2, distributed_training=Mpi(),
        user_managed=True, script_params=["--epochs", "1"],
    )  # fmt: skip
    step = EstimatorStep(name="train", estimator=est, estimator_entry_script_arguments=["--x"])
    run = Pipeline(None, [step]).submit(wait=True)
    assert run.status is RunStatus.COMPLETED, run.error
    (train,) = run.find_step_run("train")
    lines = [json.loads((train.log_dir / f"rank_{r}.stdout.log").read_text()) for r in (0, 1)]
    assert [(x["rank"], x["size"]) for x in lines] == [(0, 2), (1, 2)]
    assert lines[0]["args"] == ["--epochs", "1", "--x"]
    # a target named in the step is not part of its key: the local result is reused
    moved = EstimatorStep(
        name="train", estimator=est, estimator_entry_script_arguments=["--x"],
        compute_target="local",
    )  # fmt: skip
    again = Pipeline(None, [moved]).submit(wait=True)
    assert again.record.steps["train"].reused, again.explain()
