"""Chainer MLP on synthetic MNIST-shaped data, on one process or on MPI ranks (ChainerMN).

Runs under fitdock, under ``mpiexec -n N``, or as plain ``python train.py``. The run
context (rank, world size, output/checkpoint/resume directories, metric logging) comes
from ``fitdock.Run.get_context()``.

Behaviour:

* Data: ``--train-size``/``--test-size`` 28x28 "images" of 10 classes, generated from
  ``--seed`` (class prototypes plus noise); nothing is downloaded.
* World size > 1: ChainerMN ``naive`` communicator; rank 0 builds the data and
  ``scatter_dataset`` shards it; gradients are averaged by the multi-node optimizer and
  validation metrics by the multi-node evaluator.
* Metrics: per epoch, the epoch means of loss/accuracy (averaged over ranks) and the
  validation loss/accuracy, logged by rank 0 through ``ctx.log(name, value, step=epoch)``.
* Checkpoints: rank 0 snapshots the whole trainer (model, optimizer, iterator, counters)
  to ``ctx.checkpoint_dir/snapshot_epoch_<epoch>`` after every epoch, keeping the
  newest ``--keep-snapshots``. On start, every rank loads the newest snapshot in
  ``ctx.resume_dir`` (if any) and continues from it; a resumed run ends with exactly
  the parameters of an uninterrupted one.
* SIGTERM: training stops after the current iteration (all ranks agree on it), rank 0
  writes ``snapshot_iter_<iteration>`` (resumable, mid-epoch is fine) and every rank
  exits with status 143.
* Outputs: rank 0 writes ``model.npz`` and ``final.json`` (last epoch's metrics and the
  SHA-256 of the parameters) to ``ctx.output_dir``; every rank writes
  ``params_rank<rank>.sha256`` (identical on all ranks when gradients were averaged).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and os.environ.get("SETUPTOOLS_USE_DISTUTILS") != "stdlib":
    # Chainer 7 imports numpy.distutils, which needs the standard library's distutils; the
    # setuptools import hook (set up at interpreter start unless this variable says
    # otherwise) hides it. fitdock's Chainer environment sets the variable; for a plain
    # `python train.py`, restart once with it. exec keeps the pid, environment and file
    # descriptors, so MPI launchers do not notice.
    os.environ["SETUPTOOLS_USE_DISTUTILS"] = "stdlib"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

import argparse
import hashlib
import json
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# Chainer 7.8.1 imports pkg_resources, which warns on setuptools >= 81.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
from chainer import training  # noqa: E402
from chainer.training import extensions  # noqa: E402

from fitdock import Run  # noqa: E402

N_CLASSES = 10
IMAGE_SIDE = 28
SIGTERM_EXIT = 128 + signal.SIGTERM


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the example."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=640)
    parser.add_argument("--test-size", type=int, default=160)
    parser.add_argument(
        "--keep-snapshots", type=int, default=5, help="epoch snapshots to keep (0: all)"
    )
    return parser.parse_args(argv)


def make_dataset(seed: int, size: int, offset: int) -> chainer.datasets.TupleDataset:
    """MNIST-shaped data: one fixed prototype per class plus Gaussian noise.

    Prototypes depend on ``seed`` only, so train and test sets (different ``offset``)
    share them; the samples depend on ``seed + offset``.
    """
    prototypes = np.random.RandomState(seed).rand(N_CLASSES, IMAGE_SIDE * IMAGE_SIDE)
    rng = np.random.RandomState(seed + offset)
    labels = rng.randint(0, N_CLASSES, size=size).astype(np.int32)
    noise = rng.normal(0.0, 0.6, size=(size, IMAGE_SIDE * IMAGE_SIDE))
    images = np.clip(prototypes[labels] + noise, 0.0, 1.0).astype(np.float32)
    return chainer.datasets.TupleDataset(images, labels)


class MLP(chainer.Chain):
    """784 -> hidden -> hidden -> 10 perceptron (sizes fixed, so no lazy parameters)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(IMAGE_SIDE * IMAGE_SIDE, hidden)
            self.l2 = L.Linear(hidden, hidden)
            self.l3 = L.Linear(hidden, N_CLASSES)

    def forward(self, x: Any) -> chainer.Variable:
        h = F.relu(self.l1(x))
        h = F.relu(self.l2(h))
        return self.l3(h)


class DerivedShuffle(chainer.iterators.OrderSampler):
    """Shuffle whose next order is a pure function of the seed and the previous order.

    A trainer snapshot holds the iterator's current order but not the random state of
    its order sampler, so a seeded ``ShuffleOrderSampler`` would shuffle differently
    after a resume. Deriving each epoch's order from the previous one needs no state.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, current_order: np.ndarray, current_position: int) -> np.ndarray:
        digest = hashlib.sha256(np.asarray(current_order, dtype=np.int64).tobytes()).digest()
        words = np.frombuffer(digest[:8], dtype=np.uint32)
        rng = np.random.RandomState([self.seed % 2**32, *words.tolist()])
        return rng.permutation(len(current_order))


class EpochMetrics(training.Extension):
    """Epoch means of the observed metrics, averaged over ranks, logged by rank 0.

    Called every iteration to accumulate ``trainer.observation``; at each epoch end (the
    evaluator has run by then: it has a higher priority) it reduces and logs.
    """

    trigger = (1, "iteration")
    priority = training.PRIORITY_READER
    names = {
        "main/loss": "loss",
        "main/accuracy": "accuracy",
        "validation/main/loss": "val_loss",
        "validation/main/accuracy": "val_accuracy",
    }

    def __init__(self, ctx: Any, comm: Any | None) -> None:
        self.ctx = ctx
        self.comm = comm
        self.summary = chainer.reporter.DictSummary()
        self.last: dict[str, float] = {}

    def __call__(self, trainer: training.Trainer) -> None:
        self.summary.add({k: v for k, v in trainer.observation.items() if k in self.names})
        if not trainer.updater.is_new_epoch:
            return
        means = {self.names[k]: float(v) for k, v in self.summary.compute_mean().items()}
        self.summary = chainer.reporter.DictSummary()
        keys = sorted(means)
        values = np.array([means[k] for k in keys])
        if self.comm is not None:
            values = self.comm.allreduce_obj(values) / self.comm.size
        self.last = {k: float(v) for k, v in zip(keys, values, strict=True)}
        if self.ctx.rank == 0:
            for key in keys:
                self.ctx.log(key, self.last[key], step=trainer.updater.epoch)
            shown = "  ".join(f"{key} {self.last[key]:.4f}" for key in keys)
            print(f"epoch {trainer.updater.epoch}: {shown}", flush=True)

    def serialize(self, serializer: Any) -> None:
        self.summary.serialize(serializer["summary"])
        if isinstance(serializer, chainer.serializer.Serializer):
            serializer("last", json.dumps(self.last))
        else:
            self.last = json.loads(str(serializer("last", "{}")))


class StopTrigger:
    """Stop at ``epochs``, or as soon as any rank has received SIGTERM.

    Called once per iteration on every rank, so the flag can be agreed on with one
    small allreduce. Serializes like the plain epoch trigger it wraps.
    """

    def __init__(self, epochs: int, comm: Any | None) -> None:
        self.limit = training.triggers.IntervalTrigger(epochs, "epoch")
        self.comm = comm
        self.signalled = False
        self.stopped_by_signal = False

    def handle_sigterm(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def __call__(self, trainer: training.Trainer) -> bool:
        done = bool(self.limit(trainer))  # always called: its state stays as without signals
        signalled = self.signalled
        if self.comm is not None:
            signalled = self.comm.allreduce_obj(int(signalled)) > 0
        self.stopped_by_signal = signalled and not done
        return done or signalled

    def serialize(self, serializer: Any) -> None:
        self.limit.serialize(serializer)


def create_communicator(ctx: Any) -> Any | None:
    """ChainerMN communicator when running on several ranks, else None."""
    if ctx.world_size <= 1:
        return None
    import chainermn

    comm = chainermn.create_communicator("naive")
    if (comm.rank, comm.size) != (ctx.rank, ctx.world_size):
        raise RuntimeError(f"MPI says rank {comm.rank}/{comm.size}, fitdock says {ctx}")
    return comm


def load_datasets(args: argparse.Namespace, comm: Any | None) -> tuple[Any, Any]:
    """Train and test sets; with a communicator, rank 0's sets scattered to all ranks."""
    train = test = None
    if comm is None or comm.rank == 0:
        train = make_dataset(args.seed, args.train_size, offset=1)
        test = make_dataset(args.seed, args.test_size, offset=2)
    if comm is None:
        return train, test
    import chainermn

    train = chainermn.scatter_dataset(train, comm, shuffle=True, seed=args.seed)
    test = chainermn.scatter_dataset(test, comm, shuffle=False)
    return train, test


def create_optimizer(model: chainer.Link, lr: float, comm: Any | None) -> Any:
    """MomentumSGD; on several ranks, wrapped to average gradients.

    ChainerMN's wrapper spends its first ``update`` broadcasting rank 0's parameters
    instead of stepping, and would do so again after every resume. Broadcasting here
    and letting the wrapper record the parameter set makes every update a real step.
    """
    optimizer: Any = chainer.optimizers.MomentumSGD(lr=lr, momentum=0.9)
    if comm is not None:
        import chainermn

        optimizer = chainermn.create_multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    if comm is not None:
        comm.bcast_data(model)
        optimizer.is_changed(model)
    return optimizer


def build_trainer(
    args: argparse.Namespace, ctx: Any, comm: Any | None
) -> tuple[training.Trainer, L.Classifier, StopTrigger]:
    """Model, optimizer, iterators, updater, trainer and extensions."""
    np.random.seed(args.seed)  # parameter initialisers draw from NumPy's global RNG
    model = L.Classifier(MLP(args.hidden))
    optimizer = create_optimizer(model, args.lr, comm)
    train, test = load_datasets(args, comm)
    train_iter = chainer.iterators.SerialIterator(
        train, args.batch_size, order_sampler=DerivedShuffle(args.seed)
    )
    test_iter = chainer.iterators.SerialIterator(test, 64, repeat=False, shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, optimizer)
    stop = StopTrigger(args.epochs, comm)
    trainer = training.Trainer(updater, stop, out=str(ctx.checkpoint_dir))
    evaluator = extensions.Evaluator(test_iter, model)
    if comm is not None:
        import chainermn

        evaluator = chainermn.create_multi_node_evaluator(evaluator, comm)
    trainer.extend(evaluator, trigger=(1, "epoch"))
    trainer.extend(EpochMetrics(ctx, comm), name="epoch_metrics")
    if ctx.rank == 0:
        snapshot = extensions.snapshot(
            filename="snapshot_epoch_{.updater.epoch}", n_retains=args.keep_snapshots or -1
        )
        trainer.extend(snapshot, trigger=(1, "epoch"))
    return trainer, model, stop


def latest_snapshot(directory: Path | None) -> Path | None:
    """The snapshot with the highest iteration count in ``directory``, if any."""
    if directory is None or not directory.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in directory.glob("snapshot_*"):
        with np.load(path) as npz:
            iteration = int(npz["updater/iteration"])
        if best is None or iteration > best[0]:
            best = (iteration, path)
    return None if best is None else best[1]


def params_sha256(link: chainer.Link) -> str:
    """SHA-256 over the names, shapes and float32 bytes of all parameters."""
    digest = hashlib.sha256()
    for name, param in sorted(link.namedparams()):
        array = np.ascontiguousarray(param.array)
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_npz_atomically(path: Path, obj: Any) -> None:
    """``save_npz`` to a hidden temporary file, then rename: never a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        chainer.serializers.save_npz(f, obj)
    os.replace(tmp, path)


def write_outputs(
    args: argparse.Namespace, ctx: Any, trainer: training.Trainer, model: L.Classifier
) -> str:
    """Every rank: its parameter hash. Rank 0: model.npz and final.json."""
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    digest = params_sha256(model.predictor)
    (ctx.output_dir / f"params_rank{ctx.rank}.sha256").write_text(digest + "\n")
    if ctx.rank != 0:
        return digest
    save_npz_atomically(ctx.output_dir / "model.npz", model.predictor)
    metrics = trainer.get_extension("epoch_metrics").last
    final = {
        "epochs": trainer.updater.epoch,
        "iterations": trainer.updater.iteration,
        "world_size": ctx.world_size,
        "seed": args.seed,
        **metrics,
        "params_sha256": digest,
    }
    (ctx.output_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    return digest


def main(argv: list[str] | None = None) -> int:
    """Train; 0 when done, 143 when stopped by SIGTERM (after a snapshot)."""
    args = parse_args(argv)
    ctx = Run.get_context()
    comm = create_communicator(ctx)
    trainer, model, stop = build_trainer(args, ctx, comm)
    snapshot = latest_snapshot(ctx.resume_dir)
    if snapshot is not None:
        chainer.serializers.load_npz(str(snapshot), trainer)
        if ctx.rank == 0:
            print(f"resumed from {snapshot} at epoch {trainer.updater.epoch}", flush=True)
    signal.signal(signal.SIGTERM, stop.handle_sigterm)
    shard = len(trainer.updater.get_iterator("main").dataset)
    print(f"rank {ctx.rank} of {ctx.world_size}: {shard} training samples", flush=True)
    trainer.run(show_loop_exception_msg=False)
    if stop.stopped_by_signal:
        if ctx.rank == 0:
            path = ctx.checkpoint_dir / f"snapshot_iter_{trainer.updater.iteration}"
            save_npz_atomically(path, trainer)
            print(f"SIGTERM: saved {path}, exiting", flush=True)
        return SIGTERM_EXIT
    digest = write_outputs(args, ctx, trainer, model)
    if ctx.rank == 0:
        print(f"done: epoch {trainer.updater.epoch}, params sha256 {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
