"""Step 2 of the pipeline: a Chainer MLP trained on MPI ranks (ChainerMN, ``naive``).

Rank 0 reads ``train.npz`` from ``--data`` and scatters it; gradients are averaged across
the ranks by the multi-node optimizer; rank 0 logs each epoch's loss (averaged over
ranks) and saves the model's parameters to ``--model``/model.npz. Chainer 7 needs
``SETUPTOOLS_USE_DISTUTILS=stdlib`` (``pipeline.py`` sets it for the step).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# Chainer 7.8.1 imports pkg_resources, which warns on setuptools >= 81.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402

from fitdock import Run  # noqa: E402


class MLP(chainer.Chain):
    def __init__(self, hidden: int, classes: int = 10) -> None:
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(28 * 28, hidden)
            self.l2 = L.Linear(hidden, hidden)
            self.l3 = L.Linear(hidden, classes)

    def forward(self, x: Any) -> chainer.Variable:
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    ctx = Run.get_context()
    comm = None
    if ctx.world_size > 1:
        import chainermn

        comm = chainermn.create_communicator("naive")
    dataset = None
    if comm is None or comm.rank == 0:
        with np.load(args.data / "train.npz") as arrays:
            dataset = chainer.datasets.TupleDataset(arrays["x"], arrays["y"])
    if comm is not None:
        dataset = chainermn.scatter_dataset(dataset, comm, shuffle=True, seed=0)
    print(f"rank {ctx.rank} of {ctx.world_size}: {len(dataset)} training samples", flush=True)

    np.random.seed(0)  # the same initial parameters on every rank
    model = L.Classifier(MLP(args.hidden))
    optimizer: Any = chainer.optimizers.MomentumSGD(lr=args.lr)
    if comm is not None:
        optimizer = chainermn.create_multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    batches = len(dataset) // args.batch_size  # the same count on every rank
    rng = np.random.RandomState(ctx.rank)
    for epoch in range(1, args.epochs + 1):
        order, losses = rng.permutation(len(dataset)), []
        for b in range(batches):
            x, t = chainer.dataset.concat_examples(
                [dataset[i] for i in order[b * args.batch_size : (b + 1) * args.batch_size]]
            )
            optimizer.update(model, x, t)
            losses.append(float(model.loss.array))
        loss = float(np.mean(losses))
        if comm is not None:
            loss = comm.allreduce_obj(loss) / comm.size
        if ctx.rank == 0:
            ctx.log("loss", loss, step=epoch)
            print(f"epoch {epoch}: loss {loss:.4f}", flush=True)
    if ctx.rank == 0:
        args.model.mkdir(parents=True, exist_ok=True)
        chainer.serializers.save_npz(args.model / "model.npz", model.predictor)
        print(f"saved {args.model / 'model.npz'}", flush=True)


if __name__ == "__main__":
    main()
