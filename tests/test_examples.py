"""The shipped examples, run through fitdock for real."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from fitdock import Chainer, Horovod, Mpi, PyTorch, Run, RunStatus
from fitdock.pipelines import PipelineRun

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def chainer_fit(epochs: int, ranks: int, **kwargs: object):  # type: ignore[no-untyped-def]
    extra = {"distributed_training": Mpi()} if ranks > 1 else {}
    return Chainer(
        source_directory=EXAMPLES / "chainer_mnist",
        entry_script="train.py",
        script_params={"--epochs": epochs},
        process_count_per_node=ranks,
        user_managed=True,
        max_run_duration_seconds=300,
        **extra,
        **kwargs,
    ).fit()


@pytest.mark.chainer
@pytest.mark.mpi
def test_chainer_example_on_two_ranks_averages_gradients() -> None:
    run = chainer_fit(epochs=2, ranks=2)
    assert run.status is RunStatus.COMPLETED, run.error
    hashes = [(run.output_dir / f"params_rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert hashes[0] == hashes[1]  # every rank ends with the same parameters
    assert len(run.get_metrics()["loss"]) == 2
    final = json.loads((run.output_dir / "final.json").read_text())
    assert final["params_sha256"] == hashes[0]
    assert any(name.startswith("checkpoints/snapshot_epoch_") for name in run.get_file_names())


@pytest.mark.chainer
@pytest.mark.mpi
def test_chainer_example_resumed_ends_where_an_uninterrupted_run_ends() -> None:
    whole = chainer_fit(epochs=3, ranks=2)
    first = chainer_fit(epochs=1, ranks=2)
    resumed = chainer_fit(epochs=3, ranks=2, resume_from=first)
    for run in (whole, first, resumed):
        assert run.status is RunStatus.COMPLETED, run.error
    final = [json.loads((r.output_dir / "final.json").read_text()) for r in (whole, resumed)]
    assert final[0]["params_sha256"] == final[1]["params_sha256"]
    assert len(resumed.get_metrics()["loss"]) == 2  # epochs 2 and 3 only


def check_resumed(first: Run, resumed: Run, done: int, epochs: int) -> None:
    """``first`` completed ``done`` epochs and left their checkpoint; ``resumed`` started from
    it (rank 0 says so, from the copy in its resume_dir) and trained only the epochs after."""
    assert first.status is RunStatus.COMPLETED, first.error
    assert (first.checkpoint_dir / f"checkpoint_epoch_{done}.pt").is_file()
    assert resumed.status is RunStatus.COMPLETED, resumed.error
    log = (resumed.log_dir / "rank_0.stdout.log").read_text()
    copy = resumed.run_dir / "resume" / f"checkpoint_epoch_{done}.pt"
    assert f"resumed from {copy} after epoch {done}" in log, log
    assert f"epoch {done}:" not in log  # no epoch of the first run trained again
    losses = resumed.get_metrics("loss", as_lists=True)["loss"]
    assert len(losses) == epochs - done  # epochs done+1 .. epochs only


@pytest.mark.torch
@pytest.mark.mpi
def test_pytorch_example_ddp_over_mpi_ranks_then_resume() -> None:
    def fit(epochs: int, **kwargs: object):  # type: ignore[no-untyped-def]
        return PyTorch(
            source_directory=EXAMPLES / "pytorch_cpu",
            entry_script="train.py",
            script_params={"--epochs": epochs},
            process_count_per_node=2,
            distributed_training=Mpi(),
            user_managed=True,
            max_run_duration_seconds=300,
            **kwargs,
        ).fit()

    whole = fit(2)
    assert whole.status is RunStatus.COMPLETED, whole.error
    hashes = {(whole.output_dir / f"params_rank{r}.sha256").read_text() for r in (0, 1)}
    assert len(hashes) == 1  # DDP kept the two ranks' parameters identical
    first = fit(1)
    resumed = fit(2, resume_from=first.id)
    check_resumed(first, resumed, done=1, epochs=2)
    final = [json.loads((r.output_dir / "final.json").read_text()) for r in (whole, resumed)]
    assert final[0]["params_sha256"] == final[1]["params_sha256"]


@pytest.mark.horovod
def test_pytorch_horovod_example_then_resume() -> None:
    def fit(epochs: int, **kwargs: object):  # type: ignore[no-untyped-def]
        return PyTorch(
            source_directory=EXAMPLES / "pytorch_horovod",
            entry_script="train.py",
            script_params={"--epochs": epochs},
            process_count_per_node=2,
            distributed_training=Horovod(),
            user_managed=True,
            max_run_duration_seconds=300,
            **kwargs,
        ).fit()

    whole = fit(3)
    assert whole.status is RunStatus.COMPLETED, whole.error
    hashes = {(whole.output_dir / f"params_rank{r}.sha256").read_text() for r in (0, 1)}
    assert len(hashes) == 1  # Horovod's DistributedOptimizer kept the ranks identical
    first = fit(2)
    resumed = fit(3, resume_from=first)
    check_resumed(first, resumed, done=2, epochs=3)
    final = [json.loads((r.output_dir / "final.json").read_text()) for r in (whole, resumed)]
    assert final[0]["params_sha256"] == final[1]["params_sha256"]


@pytest.mark.chainer
@pytest.mark.mpi
def test_pipeline_example_trains_on_two_ranks_then_reuses_every_step() -> None:
    def submit():  # type: ignore[no-untyped-def]
        example = runpy.run_path(str(EXAMPLES / "pipeline_azure" / "pipeline.py"), run_name="ex")
        run = example["Experiment"](None, "pipeline-example").submit(
            example["pipeline"], pipeline_parameters={"epochs": 2}
        )
        run.wait_for_completion(show_output=False, raise_on_error=False)
        return run

    first = submit()
    assert first.status is RunStatus.COMPLETED, first.error
    steps = {step.name: step for step in first.get_steps()}
    assert list(steps) == ["prepare", "train", "evaluate"]
    assert not any(step.reused for step in steps.values())
    train = steps["train"]
    assert train.record["world_size"] == 2
    for rank in (0, 1):
        log = (train.log_dir / f"rank_{rank}.stdout.log").read_text()
        assert f"rank {rank} of 2: 800 training samples" in log
    assert len(train.get_metrics()["loss"]) == 2
    (accuracy,) = steps["evaluate"].get_metrics(as_lists=True)["accuracy"]
    assert accuracy > 0.8

    second = submit()
    assert second.status is RunStatus.COMPLETED, second.error
    assert all(step.reused for step in second.get_steps())
    reused = {step.name: step.reused_from for step in second.get_steps()}
    assert reused == {name: step.id for name, step in steps.items()}
    assert "reused from" in second.explain("train")


STEPS = EXAMPLES / "pipeline_steps"


def in_steps_example(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` in examples/pipeline_steps, as its README says, with the test's own
    FITDOCK_HOME."""
    env = {
        **os.environ,
        "FITDOCK_HOME": str(home),
        "PYTHONPATH": str(ROOT),  # this checkout's fitdock
        "PYTHONDONTWRITEBYTECODE": "1",  # leave no __pycache__ in the example folder
    }
    return subprocess.run(
        [sys.executable, *argv], cwd=STEPS, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def printed_run(done: subprocess.CompletedProcess[str]) -> PipelineRun:
    """The pipeline run whose id the command printed ("pipeline run ID ...")."""
    match = re.search(r"^pipeline run (\S+)", done.stdout, re.MULTILINE)
    assert match, done.stdout + done.stderr
    return PipelineRun(match.group(1))


def test_pipeline_steps_example_registers_the_model(fitdock_home: Path) -> None:
    done = in_steps_example(fitdock_home, "pipeline.py")
    run = printed_run(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run.status is RunStatus.COMPLETED, run.error
    states = run.record.steps
    assert states["check_rmse"].outcome is False  # rmse < threshold: the else branch
    assert states["register"].status is RunStatus.COMPLETED
    assert states["rmse_too_high"].status is RunStatus.SKIPPED
    rmse = run.result("evaluate")["rmse"]
    assert isinstance(rmse, float) and 0.0 < rmse < 0.5
    assert f"rmse: {rmse}" in done.stdout
    registered = Path(run.result("register"))
    assert f"registered: {registered}" in done.stdout
    saved = json.loads(registered.read_text())
    assert saved["rmse"] == rmse and len(saved["weights"]) == 3
    # the two independent leaves ran at the same time
    first, second = run.result("process1"), run.result("process2")
    assert min(first["ended"], second["ended"]) > max(first["started"], second["started"])
    # the function got the local path of the PipelineData that the script step wrote
    scored = run.result("score_holdout")
    assert Path(scored["path"]) == run.get_output_data("holdout") / "holdout.csv"
    assert scored["columns"] == ["x0", "x1", "x2", "y"] and scored["rows"] == 50
    assert isinstance(scored["rmse"], float)


def test_pipeline_steps_example_fails_over_the_threshold(fitdock_home: Path) -> None:
    done = in_steps_example(fitdock_home, "pipeline.py", "--threshold", "0.05")
    run = printed_run(done)
    assert done.returncode == 1, done.stdout + done.stderr
    assert run.status is RunStatus.FAILED
    rmse = run.result("evaluate")["rmse"]
    message = f"rmse {rmse} is over 0.05"  # the FailStep's Join
    assert run.error == {"step": "rmse_too_high", "message": message}
    assert f"pipeline failed: {message}" in done.stdout
    states = run.record.steps
    assert states["rmse_too_high"].status is RunStatus.FAILED
    assert states["register"].status is RunStatus.SKIPPED


def test_pipeline_steps_example_through_the_cli(fitdock_home: Path) -> None:
    cli = ("-m", "fitdock.cli", "pipeline")
    done = in_steps_example(fitdock_home, *cli, "run", "pipeline.py", "--param", "samples=400")
    assert done.returncode == 0, done.stdout + done.stderr
    run = printed_run(done)
    assert run.record.parameters == {"samples": 400, "threshold": 0.5}
    assert run.record.steps["register"].status is RunStatus.COMPLETED
    shown = in_steps_example(fitdock_home, *cli, "result", run.id, "evaluate")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == run.result("evaluate")


SCRIPT = EXAMPLES / "execute_python_script"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def in_script_example(
    home: Path, *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` in examples/execute_python_script, with the test's FITDOCK_HOME."""
    env = {
        **os.environ,
        "FITDOCK_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    done = subprocess.run(
        [sys.executable, *argv], cwd=SCRIPT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_execute_python_script_example_imports_the_bundle(fitdock_home: Path) -> None:
    done = in_script_example(fitdock_home, "run_hello.py", "--here")
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows == [
        ["name", "greeting"],
        ["World", "Hello,", "World!"],
        ["fitdock", "Hello,", "fitdock!"],
    ]
    (run,) = Run.list()
    assert run.status is RunStatus.COMPLETED
    assert "Hello, World!" in (run.log_dir / "rank_0.stdout.log").read_text()


def test_execute_python_script_example_saves_the_scatter_matrix(fitdock_home: Path) -> None:
    done = in_script_example(fitdock_home, "run_scatter_matrix.py", "--here")
    images = [
        Path(line[len("image: ") :]) for line in done.stdout.splitlines() if "image: " in line
    ]
    assert [image.name for image in images] == ["00_scatter_matrix.png"]
    (run,) = Run.list()
    assert images[0].parent == run.output_dir / "images"
    assert images[0].read_bytes()[:8] == PNG_SIGNATURE
    assert images[0].stat().st_size > 10_000  # 5 x 5 panels of points, not an empty figure
    header = done.stdout.splitlines()[0].split()
    assert header == [
        "column",
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
        "noise",
    ]


def test_execute_python_script_example_pipeline(fitdock_home: Path) -> None:
    done = in_script_example(fitdock_home, "pipeline.py", "--here")
    run = printed_run(done)
    assert run.status is RunStatus.COMPLETED, run.error
    summary = {"rows": 10, "columns": ["x", "y", "z"], "z_sum": 770.0, "z_mean": 77.0}
    assert run.result("summarize") == summary
    assert f"summary: {json.dumps(summary)}" in done.stdout
    kinds = {entry["StepName"]: entry["StepType"] for entry in run.list_steps()}
    assert kinds == {
        "make_table": "python_script",
        "add_column": "execute_python_script",
        "summarize": "function",
    }
    table = (run.get_output_data("table") / "table.csv").read_text().splitlines()
    assert table[:2] == ["x,y", "1,2"] and len(table) == 11
    assert (run.get_output_data("with_z") / "data.parquet").read_bytes()[:4] == b"PAR1"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_execute_python_script_example_feature_importance_in_the_curated_env(
    fitdock_home: Path,
) -> None:
    """The one example run in the curated environment: it builds the venv from PyPI (uv's
    cache makes later builds quick) and fits the forest with its scikit-learn."""
    import pandas as pd

    done = in_script_example(fitdock_home, "run_feature_importance.py", timeout=850)
    match = re.search(r"^run: (\S+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout
    run = Run(match.group(1))
    assert run.status is RunStatus.COMPLETED, run.error
    assert Path(run.record["argv"][0]).is_relative_to(fitdock_home / "envs")  # not this python
    importances = pd.read_parquet(run.output_dir / "output1.parquet", use_threads=False)
    assert sorted(importances["feature"]) == sorted(
        ["sepal_length", "sepal_width", "petal_length", "petal_width", "noise"]
    )
    assert importances["importance"].sum() == pytest.approx(1.0)
    assert set(importances["feature"][:2]) == {"petal_length", "petal_width"}
    assert importances["feature"].iloc[-1] == "noise"
    assert "training accuracy:" in done.stdout
