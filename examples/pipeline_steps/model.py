"""The model that the steps of ``pipeline.py`` share: a linear regression on synthetic
data, numpy only.

The ``@step`` functions and the script step ``make_holdout.py`` import this module by
name. Each step runs in a process of its own, with a copy of this folder (the pipeline's
workspace) on its ``sys.path``: that is how ``import model`` works there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEIGHTS = np.array([2.0, -1.0, 0.5])  # the truth the data is drawn from
BIAS = 0.3
NOISE = 0.1  # the label noise: a good fit's RMSE is about this


def make_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` rows of 3 features and their labels, ``y = x . WEIGHTS + BIAS + noise``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, WEIGHTS.size))
    y = x @ WEIGHTS + BIAS + rng.normal(scale=NOISE, size=samples)
    return x, y


def fit(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Least squares; the parameters as JSON data (plain floats)."""
    design = np.column_stack([x, np.ones(len(x))])
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    return {"weights": [float(w) for w in solution[:-1]], "bias": float(solution[-1])}


def predict(params: dict[str, Any], x: np.ndarray) -> np.ndarray:
    return np.asarray(x) @ np.asarray(params["weights"]) + params["bias"]


def rmse(params: dict[str, Any], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predict(params, x) - np.asarray(y)) ** 2)))
