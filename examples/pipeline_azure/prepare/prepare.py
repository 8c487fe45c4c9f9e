"""Step 1 of the pipeline: synthetic MNIST-like data, nothing downloaded.

Ten classes of 28x28 "images": one faint prototype per class under Gaussian noise (two
epochs reach about 98% accuracy, not 100%), from the seed that the step's ``params`` pass
as ``AML_PARAMETER_seed`` (as on Azure ML). Writes ``train.npz`` and ``test.npz`` (``x``:
float32, N x 784 in [0, 1]; ``y``: int32) to ``--out``, the PipelineData folder that the
next steps read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

CLASSES, SIDE = 10, 28
CONTRAST, NOISE = 0.6, 0.6  # prototypes span 0.5 +- CONTRAST / 2


def make(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    prototypes = 0.5 + CONTRAST * (np.random.RandomState(seed).rand(CLASSES, SIDE * SIDE) - 0.5)
    rng = np.random.RandomState(seed + 1)
    y = rng.randint(0, CLASSES, size=size).astype(np.int32)
    noise = rng.normal(0.0, NOISE, size=(size, SIDE * SIDE))
    x = np.clip(prototypes[y] + noise, 0.0, 1.0).astype(np.float32)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="the PipelineData folder")
    parser.add_argument("--samples", type=int, default=2000, help="train and test together")
    args = parser.parse_args()
    # params={"seed": ...} arrives as AML_PARAMETER_seed: Azure keeps the name's case.
    seed = int(os.environ.get("AML_PARAMETER_seed", "0"))  # noqa: SIM112
    x, y = make(seed, args.samples)
    split = args.samples * 4 // 5
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "train.npz", x=x[:split], y=y[:split])
    np.savez(args.out / "test.npz", x=x[split:], y=y[split:])
    print(f"prepared {split} training and {args.samples - split} test samples (seed {seed})")


if __name__ == "__main__":
    main()
