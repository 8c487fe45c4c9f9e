"""A SageMaker ``@step`` pipeline, ported to fitdock: the imports changed, the code did not.

    process1, process2   two independent @step functions: they run at the same time
    preprocess           @step: synthetic regression data, split (cached: CacheConfig)
    train                @step: least squares on the training part
    evaluate             @step: {"rmse": ...} on the test part
    check_rmse           ConditionStep: rmse >= threshold ?
      if:   rmse_too_high   FailStep: "rmse <value> is over <threshold>" (a Join)
      else: register        @step: writes the model, returns where it is
    holdout              PythonScriptStep (make_holdout.py) -> PipelineData "holdout"
    score_holdout        @step: receives the PipelineData as a local path, scores the model

Run it from this folder (the pipeline copies the current folder as the steps'
workspace, so that they can ``import model``):

    python pipeline.py                     # completes: register runs, the FailStep is skipped
    python pipeline.py --threshold 0.05    # fails: "rmse 0.09... is over 0.05"
    fitdock pipeline run pipeline.py --param threshold=0.05
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import model  # a module of this folder: the steps import it from the workspace copy
import numpy as np

# SageMaker:
#   from sagemaker.workflow.function_step import step
#   from sagemaker.workflow.pipeline import Pipeline
#   from sagemaker.workflow.condition_step import ConditionStep
#   from sagemaker.workflow.fail_step import FailStep
#   from sagemaker.workflow.functions import Join
#   from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo
#   from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger
#   from sagemaker.workflow.steps import CacheConfig
from fitdock.errors import RunFailedError, StepResultError
from fitdock.pipelines import (
    CacheConfig,
    ConditionStep,
    FailStep,
    Join,
    ParameterFloat,
    ParameterInteger,
    Pipeline,
    PipelineData,
    PipelineRun,
    PythonScriptStep,
    step,
)
from fitdock.pipelines.conditions import ConditionGreaterThanOrEqualTo

HERE = Path(__file__).resolve().parent
SEED = 0
HOLDOUT_ROWS, HOLDOUT_SEED = 50, 7

samples = ParameterInteger("samples", default_value=200)
threshold = ParameterFloat("threshold", default_value=0.5)  # the highest RMSE we register


# ----------------------------------------------------------------- two parallel leaves
def _timed(statistic: float) -> dict[str, float]:
    started = time.time()
    time.sleep(0.5)  # long enough to see that the two steps overlap
    return {"value": statistic, "started": started, "ended": time.time()}


@step
def process1(n: int) -> dict[str, float]:
    """The mean label of fresh data."""
    _, y = model.make_data(n, seed=1)
    return _timed(float(y.mean()))


@step
def process2(n: int) -> dict[str, float]:
    """The spread of the labels of fresh data."""
    _, y = model.make_data(n, seed=2)
    return _timed(float(y.std()))


# ----------------------------------------------------------------- train, check, register
@step(cache_config=CacheConfig(enable_caching=True, expire_after="P30D"))
def preprocess(n: int, seed: int) -> dict[str, np.ndarray]:
    """Synthetic data, 80% to train and 20% to test."""
    x, y = model.make_data(n, seed)
    split = n * 4 // 5
    return {"x_train": x[:split], "y_train": y[:split], "x_test": x[split:], "y_test": y[split:]}


@step
def train(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return model.fit(x, y)


@step
def evaluate(params: dict[str, Any], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"rmse": model.rmse(params, x, y)}


@step
def register(params: dict[str, Any], rmse: float) -> str:
    """Write the model to the step's outputs (kept with its run); return where it is."""
    target = Path(os.environ.get("FITDOCK_OUTPUT_DIR", "outputs")) / "model.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({**params, "rmse": rmse}, indent=2))
    return str(target)


# ----------------------------------------------------------------- a script step's data
@step
def score_holdout(folder: str, params: dict[str, Any]) -> dict[str, Any]:
    """``folder`` is the local path of the PipelineData that the script step wrote."""
    path = Path(folder) / "holdout.csv"
    header = path.read_text().splitlines()[0]
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    rmse = model.rmse(params, table[:, :-1], table[:, -1])
    return {"path": str(path), "columns": header.split(","), "rows": len(table), "rmse": rmse}


data = preprocess(samples, SEED)
trained = train(data["x_train"], data["y_train"])
evaluation = evaluate(trained, data["x_test"], data["y_test"])

check = ConditionStep(
    name="check_rmse",
    conditions=[ConditionGreaterThanOrEqualTo(left=evaluation["rmse"], right=threshold)],
    if_steps=[
        FailStep(
            name="rmse_too_high",
            error_message=Join(on=" ", values=["rmse", evaluation["rmse"], "is over", threshold]),
        )
    ],
    else_steps=[register(trained, evaluation["rmse"])],
)

holdout = PipelineData("holdout")
make_holdout = PythonScriptStep(
    script_name="make_holdout.py",
    name="holdout",
    arguments=["--out", holdout, "--rows", HOLDOUT_ROWS, "--seed", HOLDOUT_SEED],
    outputs=[holdout],
    source_directory=HERE,  # the script imports model.py, beside it
)

# The leaves are enough: every step they need comes along. process1 and process2 come
# first so that they start first, together, even on a 2-CPU machine (steps start in
# this order, up to one per CPU at once).
pipeline = Pipeline(
    name="pipeline-steps",
    parameters=[samples, threshold],
    steps=[process1(1000), process2(1000), check, score_holdout(holdout, trained)],
)


def report(execution: PipelineRun) -> int:
    """Print each step's state and the results; 0 when the pipeline completed."""
    try:
        execution.wait()
        failure = None
    except RunFailedError:
        failure = execution.describe()["FailureReason"]
    print("steps:")
    for entry in reversed(execution.list_steps()):  # list_steps: newest first
        how = " (reused)" if entry["Reused"] else ""
        print(f"  {entry['StepName']:<14} {entry['StepType']:<13} {entry['StepStatus']}{how}")
    results = {name: _result(execution, name) for name in _RESULTS}
    print("results:")
    if results["evaluate"] is not None:
        print(f"  rmse: {results['evaluate']['rmse']}")
    first, second = results["process1"], results["process2"]
    if first is not None and second is not None:
        overlap = min(first["ended"], second["ended"]) - max(first["started"], second["started"])
        print(f"  process1 and process2 overlapped for {overlap:.2f} s")
    scored = results["score_holdout"]
    if scored is not None:
        print(f"  holdout: {scored['rows']} rows from the script step, rmse {scored['rmse']:.4f}")
    if results["register"] is not None:
        print(f"  registered: {results['register']}")
    if failure is not None:
        print(f"pipeline failed: {failure}")
        return 1
    return 0


_RESULTS = ("evaluate", "process1", "process2", "score_holdout", "register")


def _result(execution: PipelineRun, name: str) -> Any:
    """The step's return value, or None when it has none (skipped, failed)."""
    try:
        return execution.result(name)
    except StepResultError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the example @step pipeline.")
    parser.add_argument("--threshold", type=float, help=f"default {threshold.default_value}")
    args = parser.parse_args()
    os.chdir(HERE)  # the steps' workspace is the current folder: this one
    given = {"threshold": args.threshold} if args.threshold is not None else None
    execution = pipeline.start(parameters=given)
    print(f"pipeline run {execution.id}", flush=True)
    return report(execution)


if __name__ == "__main__":
    sys.exit(main())
