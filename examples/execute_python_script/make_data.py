"""Write ``data/iris_like.csv``: 200 synthetic, iris-like rows (numpy, nothing downloaded).

Three species differ mostly in their petals; the sepals overlap more, and ``noise`` is
pure noise, so a random forest ranks petal_length and petal_width first and noise last.
The CSV is committed; run this only to make it again (the same seed gives the same file).

    python make_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS = 200
SEED = 42
PATH = Path(__file__).resolve().parent / "data" / "iris_like.csv"
# species: mean (sepal_length, sepal_width, petal_length, petal_width)
MEANS = {
    "setosa": (5.0, 3.4, 1.5, 0.25),
    "versicolor": (5.9, 2.8, 4.3, 1.3),
    "virginica": (6.6, 3.0, 5.6, 2.0),
}
SPREAD = (0.45, 0.35, 0.35, 0.2)


def make(rows: int = ROWS, seed: int = SEED) -> str:
    rng = np.random.default_rng(seed)
    names = list(MEANS)
    species = rng.integers(0, len(names), size=rows)
    means = np.array([MEANS[names[s]] for s in species])
    features = np.round(means + rng.normal(0.0, SPREAD, size=(rows, 4)), 2)
    noise = np.round(rng.normal(0.0, 1.0, size=rows), 3)
    lines = ["sepal_length,sepal_width,petal_length,petal_width,noise,species"]
    for row, extra, s in zip(features, noise, species, strict=True):
        lines.append(",".join([*(f"{v:.2f}" for v in row), f"{extra:.3f}", names[s]]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(make())
    print(f"wrote {ROWS} rows to {PATH}")
