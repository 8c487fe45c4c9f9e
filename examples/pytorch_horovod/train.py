"""PyTorch + Horovod on CPU: a small classifier on synthetic data, any number of ranks.

Runs under ``horovodrun`` (MPI or Gloo controller), under Open MPI's ``mpirun``, under
fitdock (``fit.py``) or as plain ``python train.py`` (one rank); the run context comes from
``fitdock.Run.get_context()``, the rank and world size from Horovod.

* Data: ``--samples`` points of ``--features`` dimensions, labelled by a random linear
  "teacher" of ``--classes`` outputs; all drawn from ``--seed``. Each rank trains on its
  shard (``DistributedSampler`` with ``hvd.rank()``/``hvd.size()``).
* Horovod: ``hvd.DistributedOptimizer`` averages the gradients; rank 0's parameters and
  optimizer state are broadcast at start (``broadcast_parameters``,
  ``broadcast_optimizer_state``).
* Metrics: per epoch, ``loss`` and ``accuracy`` averaged over ranks with
  ``hvd.allreduce``, logged by rank 0 with ``ctx.log``.
* Checkpoints: rank 0 saves ``checkpoint_epoch_<n>.pt`` (model, optimizer, epoch) to
  ``ctx.checkpoint_dir`` after every epoch, keeping the newest ``--keep-checkpoints``.
  At start rank 0 loads the newest one in ``ctx.resume_dir`` and broadcasts it. The
  shuffle of an epoch depends on the seed and the epoch only, so a resumed run ends
  with the same parameters as an uninterrupted one.
* SIGTERM: the ranks stop after the current step and exit with status 143; the last
  epoch checkpoint is the resume point.
* Outputs: rank 0 writes ``model.pt`` (state dict) and ``final.json`` to
  ``ctx.output_dir``; every rank writes ``params_rank<rank>.sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fitdock import Run

SIGTERM_EXIT = 128 + signal.SIGTERM
CHECKPOINT_PREFIX = "checkpoint_epoch_"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--keep-checkpoints", type=int, default=5, help="0: keep all")
    return parser.parse_args(argv)


def init_horovod(ctx: Any) -> None:
    """``hvd.init()``; fail clearly when the launcher's MPI is not Horovod's."""
    hvd.init()
    if ctx.world_size > 1 and ctx.world_size != hvd.size():
        raise SystemExit(
            f"rank {ctx.rank}: the launcher started {ctx.world_size} ranks but Horovod sees "
            f"{hvd.size()}. The launcher's MPI is not the one Horovod was built with (for "
            "example the venv's MPICH mpirun and a Horovod built against Open MPI): use that "
            "MPI's mpirun (/usr/bin/mpirun) or `horovodrun --gloo`."
        )


def make_dataset(args: argparse.Namespace) -> TensorDataset:
    """Gaussian inputs labelled by the argmax of a random linear map."""
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.samples, args.features, generator=gen)
    teacher = torch.randn(args.features, args.classes, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return TensorDataset(x, y)


def make_model(args: argparse.Namespace) -> nn.Module:
    """Two-layer perceptron, initialised from the seed (rank 0's copy wins anyway)."""
    torch.manual_seed(args.seed)
    return nn.Sequential(
        nn.Linear(args.features, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.classes)
    )


def mean_over_ranks(values: list[float], name: str) -> list[float]:
    """Element-wise mean of ``values`` over all ranks."""
    tensor = torch.tensor(values, dtype=torch.float64)
    averaged: list[float] = hvd.allreduce(tensor, op=hvd.Average, name=name).tolist()
    return averaged


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is set on at least one rank."""
    tensor = torch.tensor([int(flag)])
    return bool(hvd.allreduce(tensor, op=hvd.Max, name="stop").item())


def checkpoints(directory: Path | None) -> list[Path]:
    """The epoch checkpoints in ``directory``, oldest epoch first."""
    if directory is None or not directory.is_dir():
        return []
    found = sorted(
        (int(path.stem[len(CHECKPOINT_PREFIX) :]), path)
        for path in directory.glob(f"{CHECKPOINT_PREFIX}*.pt")
        if path.stem[len(CHECKPOINT_PREFIX) :].isdigit()
    )
    return [path for _, path in found]


def save_checkpoint(state: dict[str, Any], directory: Path, keep: int) -> None:
    """Write ``checkpoint_epoch_<epoch>.pt``; keep the newest ``keep`` (0: all)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_atomically(state, directory / f"{CHECKPOINT_PREFIX}{state['epoch']}.pt")
    if keep > 0:
        for stale in checkpoints(directory)[:-keep]:
            stale.unlink()


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a hidden temporary file, then rename: never a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def restore(
    ctx: Any, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any]]:
    """Rank 0 loads the newest checkpoint of ``ctx.resume_dir``, if any, and broadcasts
    the parameters and optimizer state; (epochs done, their last metrics) on every rank."""
    start, last = 0, {}
    found = checkpoints(ctx.resume_dir) if hvd.rank() == 0 else []
    if found:
        state = torch.load(found[-1], map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, last = state["epoch"], state["metrics"]
        print(f"resumed from {found[-1]} after epoch {start}", flush=True)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    start, last = hvd.broadcast_object((start, last), root_rank=0, name="resume")
    return start, last


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over the names, shapes and bytes of all parameters."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class Terminator:
    """Remembers that SIGTERM arrived; training checks it after every step."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True


def train_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    stop: Terminator,
) -> tuple[float, float] | None:
    """One pass over this rank's shard: (mean loss, accuracy), or None if stopped."""
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()  # waits for the averaged gradients
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
        if any_rank(stop.received):
            return None
    return total_loss / seen, correct / seen


def end_epoch(args: argparse.Namespace, ctx: Any, state: dict[str, Any]) -> None:
    """Rank 0: log the epoch's metrics, print them and save the checkpoint."""
    metrics, epoch = state["metrics"], state["epoch"]
    ctx.log("loss", metrics["loss"], step=epoch)
    ctx.log("accuracy", metrics["accuracy"], step=epoch)
    print(
        f"epoch {epoch}: loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.4f}",
        flush=True,
    )
    save_checkpoint(state, ctx.checkpoint_dir, args.keep_checkpoints)


def write_outputs(
    args: argparse.Namespace, ctx: Any, model: nn.Module, last: dict[str, Any]
) -> str:
    """Every rank: its parameter hash. Rank 0: model.pt and final.json."""
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    digest = params_sha256(model)
    (ctx.output_dir / f"params_rank{hvd.rank()}.sha256").write_text(digest + "\n")
    if hvd.rank() == 0:
        save_atomically(model.state_dict(), ctx.output_dir / "model.pt")
        final = {
            "world_size": hvd.size(),
            "controller": "mpi" if hvd.mpi_enabled() else "gloo",
            "seed": args.seed,
            **last,
            "params_sha256": digest,
        }
        (ctx.output_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    return digest


def run_training(args: argparse.Namespace, ctx: Any) -> int:
    """Resume if possible, train the remaining epochs, write outputs; the exit status."""
    model = make_model(args)
    optimizer = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
        named_parameters=model.named_parameters(),
    )
    start, last = restore(ctx, model, optimizer)
    dataset = make_dataset(args)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=hvd.size(), rank=hvd.rank(), shuffle=True, seed=args.seed
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    stop = Terminator()
    for epoch in range(start + 1, args.epochs + 1):
        sampler.set_epoch(epoch)  # the shuffle depends on (seed, epoch) only
        result = train_epoch(model, loader, optimizer, stop)
        if result is None:
            if hvd.rank() == 0:
                print(f"SIGTERM in epoch {epoch}: exiting; resume from epoch {epoch - 1}")
            return SIGTERM_EXIT
        loss, accuracy = mean_over_ranks(list(result), name=f"metrics.{epoch}")
        last = {"epoch": epoch, "loss": loss, "accuracy": accuracy}
        if hvd.rank() == 0:
            state = {
                "epoch": epoch,
                "metrics": last,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
            }
            end_epoch(args, ctx, state)
    digest = write_outputs(args, ctx, model, last)
    if hvd.rank() == 0:
        print(f"done: epoch {args.epochs}, {hvd.size()} ranks, params sha256 {digest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train; 0 when done, 143 when stopped by SIGTERM."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ctx = Run.get_context()
    init_horovod(ctx)
    try:
        return run_training(args, ctx)
    finally:
        sys.stdout.flush()
        hvd.shutdown()


if __name__ == "__main__":
    sys.exit(main())
