"""The shipped examples, run through fitdock for real."""

from __future__ import annotations

import json
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
