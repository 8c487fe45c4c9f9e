"""PyTorch on CPU: a small classifier on synthetic data, one process or gloo + DDP.

Runs under fitdock, under ``torchrun``/``mpiexec``, or as plain ``python train.py``; the run
context comes from ``fitdock.Run.get_context()``.

* Data: ``--samples`` points of ``--features`` dimensions, labelled by a random linear
  "teacher" of ``--classes`` outputs; all drawn from ``--seed``.
* World size > 1 (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the launcher, or MPI's rank
  variables): ``torch.distributed`` with gloo (``MASTER_ADDR``/``MASTER_PORT`` from the
  launcher, defaulting to 127.0.0.1:29500), ``DistributedDataParallel`` and a
  ``DistributedSampler``.
* Metrics: per epoch, ``loss`` and ``accuracy`` averaged over ranks, logged by rank 0.
* Checkpoints: rank 0 saves ``checkpoint_epoch_<n>.pt`` (model, optimizer, epoch) to
  ``ctx.checkpoint_dir`` after every epoch, keeping the newest ``--keep-checkpoints``.
  At start every rank loads the newest one in ``ctx.resume_dir`` and continues with the
  next epoch. Per-epoch shuffling depends on the seed and the epoch only, so a resumed
  run ends like an uninterrupted one.
* SIGTERM: the ranks stop after the current batch and exit with status 143; the last
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

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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
    parser.add_argument("--keep-checkpoints", type=int, default=5, help="0: keep all")
    return parser.parse_args(argv)


def make_dataset(args: argparse.Namespace) -> TensorDataset:
    """Gaussian inputs labelled by the argmax of a random linear map."""
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.samples, args.features, generator=gen)
    teacher = torch.randn(args.features, args.classes, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return TensorDataset(x, y)


def make_model(args: argparse.Namespace) -> nn.Module:
    """Two-layer perceptron, initialised from the seed."""
    torch.manual_seed(args.seed)
    return nn.Sequential(
        nn.Linear(args.features, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.classes)
    )


def init_distributed(ctx: Any) -> bool:
    """Join the gloo process group when there are several ranks; True if joined."""
    if ctx.world_size <= 1:
        return False
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group("gloo", rank=ctx.rank, world_size=ctx.world_size)
    return True


def mean_over_ranks(values: list[float], distributed: bool) -> list[float]:
    """Element-wise mean of ``values`` over all ranks."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if distributed:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor.tolist()


def any_rank(flag: bool, distributed: bool) -> bool:
    """True when ``flag`` is set on at least one rank."""
    tensor = torch.tensor([int(flag)])
    if distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


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
    save_atomically(state, directory / f"{CHECKPOINT_PREFIX}{state['epoch']}.pt")
    if keep > 0:
        for stale in checkpoints(directory)[:-keep]:
            stale.unlink()


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a hidden temporary file, then rename: never a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over the names, shapes and bytes of all parameters."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class Terminator:
    """Remembers that SIGTERM arrived; training checks it between batches."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    stop: Terminator,
    distributed: bool,
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
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
        if any_rank(stop.received, distributed):
            return None
    return total_loss / seen, correct / seen


def write_outputs(
    args: argparse.Namespace, ctx: Any, model: nn.Module, last: dict[str, Any]
) -> str:
    """Every rank: its parameter hash. Rank 0: model.pt and final.json."""
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    digest = params_sha256(model)
    (ctx.output_dir / f"params_rank{ctx.rank}.sha256").write_text(digest + "\n")
    if ctx.rank == 0:
        save_atomically(model.state_dict(), ctx.output_dir / "model.pt")
        final = {"world_size": ctx.world_size, "seed": args.seed, **last, "params_sha256": digest}
        (ctx.output_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    return digest


def run_training(args: argparse.Namespace, ctx: Any, distributed: bool) -> int:
    """Resume if possible, train the remaining epochs, write outputs; the exit status."""
    model = make_model(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    start = 0
    last: dict[str, Any] = {}
    found = checkpoints(ctx.resume_dir)
    if found:
        checkpoint = found[-1]
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, last = state["epoch"], state["metrics"]
        if ctx.rank == 0:
            print(f"resumed from {checkpoint} after epoch {start}", flush=True)
    net = DistributedDataParallel(model) if distributed else model
    dataset = make_dataset(args)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    stop = Terminator()
    for epoch in range(start + 1, args.epochs + 1):
        sampler.set_epoch(epoch)  # the shuffle depends on (seed, epoch) only
        result = train_epoch(net, loader, optimizer, stop, distributed)
        if result is None:
            if ctx.rank == 0:
                print(f"SIGTERM in epoch {epoch}: exiting; resume from epoch {epoch - 1}")
            return SIGTERM_EXIT
        loss, accuracy = mean_over_ranks(list(result), distributed)
        last = {"epoch": epoch, "loss": loss, "accuracy": accuracy}
        if ctx.rank == 0:
            ctx.log("loss", loss, step=epoch)
            ctx.log("accuracy", accuracy, step=epoch)
            print(f"epoch {epoch}: loss {loss:.4f}  accuracy {accuracy:.4f}", flush=True)
            state = {
                "epoch": epoch,
                "metrics": last,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
            }
            save_checkpoint(state, ctx.checkpoint_dir, args.keep_checkpoints)
    digest = write_outputs(args, ctx, model, last)
    if ctx.rank == 0:
        print(f"done: epoch {args.epochs}, params sha256 {digest}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train; 0 when done, 143 when stopped by SIGTERM."""
    args = parse_args(argv)
    ctx = Run.get_context()
    distributed = init_distributed(ctx)
    try:
        return run_training(args, ctx, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
