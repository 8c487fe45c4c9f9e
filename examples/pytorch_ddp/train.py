"""PyTorch DDP: an MLP on synthetic data, gloo on CPU or NCCL on GPUs, with a throughput meter.

Runs under fitdock (``PyTorchConfiguration``), under raw ``torchrun``, or as plain
``python train.py`` (one process); the run context comes from ``fitdock.Run.get_context()``.

* Data: every epoch is ``--steps-per-epoch`` steps of ``--batch-size`` samples per rank, so the
  data set holds ``steps * batch * world_size`` points of ``--features`` dimensions, labelled by
  a random linear "teacher" of ``--classes`` outputs; all drawn from ``--seed``. A
  ``DistributedSampler`` gives each rank its shard, shuffled from (seed, epoch) only.
* Backend: ``--backend``, else ``FITDOCK_DIST_BACKEND`` (set by fitdock), else gloo. NCCL
  runs rank ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``; without CUDA it falls back to gloo on CPU.
  ``torch.distributed.init_process_group`` reads ``MASTER_ADDR``/``MASTER_PORT`` from the
  launcher (default 127.0.0.1:29500).
* Throughput: steady-state samples/s over all ranks. The clock runs over the training steps
  only, from the end of step ``--warmup-steps`` on, so start-up, imports, the first steps
  and the end-of-epoch work (metrics, checkpoint) are left out. Rank 0 prints
  ``samples_per_s <value>`` at the end and writes ``throughput.json``.
* Metrics: per epoch ``loss``, ``accuracy`` (averaged over ranks) and ``samples_per_s``
  (steady state so far), logged by rank 0.
* Checkpoints: rank 0 saves ``checkpoint_epoch_<n>.pt`` (model, optimizer, epoch) atomically
  to ``ctx.checkpoint_dir`` after every epoch, keeping the newest ``--keep-checkpoints``.
  At start every rank loads the newest one in ``ctx.resume_dir`` and continues with the next
  epoch, so a resumed run ends with the same parameters as an uninterrupted one.
* SIGTERM: the ranks stop after the current step and exit with status 143; the last epoch
  checkpoint is the resume point.
* Outputs: rank 0 writes ``model.pt``, ``final.json`` and ``throughput.json`` to
  ``ctx.output_dir``; every rank writes ``params_rank<rank>.sha256``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from fitdock import Run

SIGTERM_EXIT = 128 + signal.SIGTERM
CHECKPOINT_PREFIX = "checkpoint_epoch_"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=50, help="per rank")
    parser.add_argument("--batch-size", type=int, default=256, help="per rank")
    parser.add_argument("--warmup-steps", type=int, default=10, help="left out of throughput")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=3, help="hidden layers")
    parser.add_argument(
        "--backend", choices=("gloo", "nccl"), help="default: $FITDOCK_DIST_BACKEND, else gloo"
    )
    parser.add_argument("--keep-checkpoints", type=int, default=5, help="0: keep all")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Data, model, process group
# ---------------------------------------------------------------------------------------------
def make_dataset(args: argparse.Namespace, world_size: int) -> TensorDataset:
    """Gaussian inputs labelled by the argmax of a random linear map."""
    gen = torch.Generator().manual_seed(args.seed)
    samples = args.steps_per_epoch * args.batch_size * world_size
    x = torch.randn(samples, args.features, generator=gen)
    teacher = torch.randn(args.features, args.classes, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return TensorDataset(x, y)


def make_model(args: argparse.Namespace) -> nn.Module:
    """An MLP of ``--layers`` hidden layers of ``--hidden`` units, initialised from the seed."""
    torch.manual_seed(args.seed)
    layers: list[nn.Module] = [nn.Linear(args.features, args.hidden), nn.ReLU()]
    for _ in range(args.layers - 1):
        layers += [nn.Linear(args.hidden, args.hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(args.hidden, args.classes))


def choose_backend(args: argparse.Namespace) -> str:
    """``--backend``, else fitdock's ``FITDOCK_DIST_BACKEND``, else gloo; NCCL needs CUDA."""
    wanted = args.backend or os.environ.get("FITDOCK_DIST_BACKEND") or "gloo"
    if wanted == "nccl" and not torch.cuda.is_available():
        print("nccl asked for but CUDA is not available: using gloo on CPU", file=sys.stderr)
        return "gloo"
    return wanted


def choose_device(backend: str, local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` for NCCL, else the CPU."""
    if backend != "nccl":
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(ctx: Any, backend: str) -> bool:
    """Join the process group when there are several ranks; True if joined."""
    if ctx.world_size <= 1:
        return False
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size)
    return True


def all_reduce(values: list[float], device: torch.device, op: Any = None) -> list[float]:
    """Element-wise reduction of ``values`` over all ranks (sum by default)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor.tolist()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock measures work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Throughput, SIGTERM
# ---------------------------------------------------------------------------------------------
@dataclass
class Meter:
    """Steady-state clock: counts the steps after the first ``warmup`` of this process."""

    warmup: int
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    durations: list[float] = field(default_factory=list)
    _mark: float | None = None

    def resume(self) -> None:
        """Restart the clock at the start of an epoch (end-of-epoch work is not counted)."""
        self._mark = time.perf_counter() if self.steps >= self.warmup else None

    def step_done(self, batch: int) -> None:
        now = time.perf_counter()
        self.steps += 1
        if self._mark is not None:
            self.samples += batch
            self.seconds += now - self._mark
            self.durations.append(now - self._mark)
        self._mark = now if self.steps >= self.warmup else None

    def global_rate(self, device: torch.device) -> tuple[float | None, int, float]:
        """(samples/s over all ranks, samples, seconds): the ranks' samples summed and the
        slowest rank's time; None before any step was timed."""
        samples = all_reduce([float(self.samples)], device)[0]
        seconds = all_reduce([self.seconds], device, dist.ReduceOp.MAX)[0]
        rate = samples / seconds if seconds > 0 else None
        return rate, int(samples), seconds

    def median_step(self, device: torch.device) -> float | None:
        """The slowest rank's median step time (robust to bursts of load from other work)."""
        local = statistics.median(self.durations) if self.durations else 0.0
        slowest = all_reduce([local], device, dist.ReduceOp.MAX)[0]
        return slowest or None


class Terminator:
    """Remembers that SIGTERM arrived; training checks it between steps."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def any_rank(self, device: torch.device) -> bool:
        """True when at least one rank got SIGTERM (all ranks stop at the same step)."""
        if not dist.is_initialized():
            return self.received
        return all_reduce([float(self.received)], device, dist.ReduceOp.MAX)[0] > 0


# ---------------------------------------------------------------------------------------------
# Checkpoints and outputs
# ---------------------------------------------------------------------------------------------
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


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a hidden temporary file, fsync, then rename: never a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(state: dict[str, Any], directory: Path, keep: int) -> None:
    """Write ``checkpoint_epoch_<epoch>.pt``; keep the newest ``keep`` (0: all)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_atomically(state, directory / f"{CHECKPOINT_PREFIX}{state['epoch']}.pt")
    if keep > 0:
        for stale in checkpoints(directory)[:-keep]:
            stale.unlink()


def load_checkpoint(
    ctx: Any, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, dict[str, Any]]:
    """Load the newest checkpoint in ``ctx.resume_dir``: (its epoch, its metrics), or (0, {})."""
    found = checkpoints(ctx.resume_dir)
    if not found:
        return 0, {}
    state = torch.load(found[-1], map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ctx.rank == 0:
        print(f"resumed from {found[-1]} after epoch {state['epoch']}", flush=True)
    return int(state["epoch"]), dict(state["metrics"])


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over the names, shapes and bytes of all parameters."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_outputs(ctx: Any, model: nn.Module, final: dict[str, Any], rate: dict[str, Any]) -> str:
    """Every rank: its parameter hash. Rank 0: model.pt, final.json and throughput.json."""
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    digest = params_sha256(model)
    (ctx.output_dir / f"params_rank{ctx.rank}.sha256").write_text(digest + "\n")
    if ctx.rank == 0:
        save_atomically(model.state_dict(), ctx.output_dir / "model.pt")
        write_json(ctx.output_dir / "final.json", {**final, "params_sha256": digest})
        write_json(ctx.output_dir / "throughput.json", rate)
    return digest


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
@dataclass
class Trainer:
    args: argparse.Namespace
    ctx: Any
    device: torch.device
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    data: TensorDataset
    sampler: DistributedSampler[Any]
    meter: Meter
    stop: Terminator

    def epoch(self, epoch: int) -> tuple[float, float] | None:
        """One pass over this rank's shard: (mean loss, accuracy) over all ranks, or None if
        SIGTERM stopped it."""
        self.sampler.set_epoch(epoch)  # the shuffle depends on (seed, epoch) only
        order = torch.tensor(list(self.sampler))
        x_all, y_all = self.data.tensors
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.net.train()
        self.meter.resume()
        for start in range(0, len(order), self.args.batch_size):
            index = order[start : start + self.args.batch_size]
            x = x_all[index].to(self.device, non_blocking=True)
            y = y_all[index].to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.net(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            stopping = self.stop.any_rank(self.device)  # a collective: it also syncs the device
            self.meter.step_done(len(y))
            if stopping:
                return None
        totals = all_reduce([loss_sum.item(), float(correct.item()), len(order)], self.device)
        return totals[0] / totals[2], totals[1] / totals[2]

    def checkpoint(self, epoch: int, metrics: dict[str, Any]) -> None:
        state = {
            "epoch": epoch,
            "metrics": metrics,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_checkpoint(state, self.ctx.checkpoint_dir, self.args.keep_checkpoints)


def build_trainer(args: argparse.Namespace, ctx: Any, device: torch.device) -> Trainer:
    model = make_model(args).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    net: nn.Module = model
    if dist.is_initialized():
        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    data = make_dataset(args, ctx.world_size)
    sampler: DistributedSampler[Any] = DistributedSampler(
        data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed
    )
    meter = Meter(warmup=args.warmup_steps)
    return Trainer(args, ctx, device, model, net, optimizer, data, sampler, meter, Terminator())


def report_rate(trainer: Trainer, backend: str) -> dict[str, Any]:
    """The steady-state throughput over all ranks, as written to throughput.json."""
    rate, samples, seconds = trainer.meter.global_rate(trainer.device)
    step = trainer.meter.median_step(trainer.device)
    batch = trainer.args.batch_size * trainer.ctx.world_size
    return {
        "samples_per_s": rate,
        "samples_per_s_median_step": batch / step if step else None,
        "median_step_ms": step * 1000 if step else None,
        "samples": samples,
        "seconds": seconds,
        "steps_per_rank": trainer.meter.steps,
        "warmup_steps": trainer.args.warmup_steps,
        "world_size": trainer.ctx.world_size,
        "batch_size_per_rank": trainer.args.batch_size,
        "backend": backend if dist.is_initialized() else None,
        "device": str(trainer.device),
    }


def log_epoch(ctx: Any, metrics: dict[str, Any], rate: float | None) -> None:
    """Rank 0: log the epoch's metrics and print its line."""
    epoch = metrics["epoch"]
    ctx.log("loss", metrics["loss"], step=epoch)
    ctx.log("accuracy", metrics["accuracy"], step=epoch)
    if rate is not None:
        ctx.log("samples_per_s", rate, step=epoch)
    shown = f"{rate:.1f}" if rate is not None else "(warming up)"
    loss, accuracy = metrics["loss"], metrics["accuracy"]
    print(f"epoch {epoch}: loss {loss:.4f}  accuracy {accuracy:.4f}  samples/s {shown}", flush=True)


def run_training(args: argparse.Namespace, ctx: Any, device: torch.device, backend: str) -> int:
    """Resume if possible, train the remaining epochs, write outputs; the exit status."""
    trainer = build_trainer(args, ctx, device)
    start, last = load_checkpoint(ctx, trainer.model, trainer.optimizer, device)
    for epoch in range(start + 1, args.epochs + 1):
        result = trainer.epoch(epoch)
        if result is None:
            if ctx.rank == 0:
                print(f"SIGTERM in epoch {epoch}: exiting; resume from epoch {epoch - 1}")
            return SIGTERM_EXIT
        last = {"epoch": epoch, "loss": result[0], "accuracy": result[1]}
        rate, _, _ = trainer.meter.global_rate(device)
        if ctx.rank == 0:
            log_epoch(ctx, last, rate)
            trainer.checkpoint(epoch, last)
    throughput = report_rate(trainer, backend)
    final = {"world_size": ctx.world_size, "seed": args.seed, **last}
    digest = write_outputs(ctx, trainer.model, final, throughput)
    if ctx.rank == 0:
        print(f"done: epoch {args.epochs}, params sha256 {digest}", flush=True)
        print(f"samples_per_s {throughput['samples_per_s'] or float('nan'):.1f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train; 0 when done, 143 when stopped by SIGTERM."""
    args = parse_args(argv)
    ctx = Run.get_context()
    backend = choose_backend(args)
    device = choose_device(backend, ctx.local_rank)
    distributed = init_distributed(ctx, backend)
    try:
        return run_training(args, ctx, device, backend)
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
