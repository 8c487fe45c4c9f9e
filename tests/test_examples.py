"""The shipped examples, run through fitdock for real."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from fitdock import Chainer, Horovod, Mpi, PyTorch, RunStatus

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
    assert resumed.status is RunStatus.COMPLETED, resumed.error
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
    assert resumed.status is RunStatus.COMPLETED, resumed.error
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
    (accuracy,) = steps["evaluate"].get_metrics()["accuracy"]
    assert accuracy > 0.8

    second = submit()
    assert second.status is RunStatus.COMPLETED, second.error
    assert all(step.reused for step in second.get_steps())
    reused = {step.name: step.reused_from for step in second.get_steps()}
    assert reused == {name: step.id for name, step in steps.items()}
    assert "reused from" in second.explain("train")
