"""Step 3 of the pipeline: the trained model's accuracy on the held-out samples.

Reads ``model.npz`` (the MLP's layers l1, l2, l3, as Chainer saved them) and ``test.npz``,
runs the network with NumPy alone, and logs ``accuracy`` through the run context.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fitdock import Run


def predict(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    layers = sorted({name.split("/")[0] for name in params})
    h = x
    for index, layer in enumerate(layers):
        h = h @ params[f"{layer}/W"].T + params[f"{layer}/b"]  # Chainer's Linear: x W^T + b
        if index < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h.argmax(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    with np.load(args.model / "model.npz") as saved:
        params = {name: saved[name] for name in saved.files}
    with np.load(args.data / "test.npz") as test:
        x, y = test["x"], test["y"]
    accuracy = float((predict(params, x) == y).mean())
    Run.get_context().log("accuracy", accuracy)
    print(f"accuracy {accuracy:.4f} on {len(y)} test samples")


if __name__ == "__main__":
    main()
