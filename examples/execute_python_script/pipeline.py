"""Execute Python Script as a pipeline step, between Azure's and SageMaker's kinds of step.

make_table   PythonScriptStep        steps/make_table.py writes table.csv (x, y = 2x)
   |                                 into the PipelineData "table"
add_column   ExecutePythonScriptStep steps/add_column.py: azureml_main(dataframe1)
   |                                 adds z = x * y -> PipelineData "with_z" (data.parquet)
summarize    @step                   reads <folder>/data.parquet with pandas and
                                     returns a summary as JSON data

python pipeline.py          # add_column in the curated script environment
python pipeline.py --here   # add_column in this interpreter (nothing to build)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fitdock.errors import RunFailedError
from fitdock.pipelines import (
    ExecutePythonScriptStep,
    Pipeline,
    PipelineData,
    PipelineRun,
    PythonScriptStep,
    RunConfiguration,
    step,
)
from fitdock.script.api import this_interpreter

HERE = Path(__file__).resolve().parent
ROWS = 10


@step
def summarize(folder: str) -> dict[str, Any]:
    """``folder`` is the local path of the PipelineData that add_column wrote."""
    import pandas as pd

    frame = pd.read_parquet(Path(folder) / "data.parquet", use_threads=False)
    return {
        "rows": len(frame),
        "columns": list(frame.columns),
        "z_sum": float(frame["z"].sum()),
        "z_mean": float(frame["z"].mean()),
    }


def build(here: bool) -> Pipeline:
    """The pipeline; ``here``: the script step runs in this interpreter, not the curated
    environment (``RunConfiguration()`` without an environment means the curated one)."""
    table, with_z = PipelineData("table"), PipelineData("with_z")
    make_table = PythonScriptStep(
        script_name="make_table.py",
        name="make_table",
        arguments=["--out", table, "--rows", ROWS],
        outputs=[table],
        source_directory=HERE / "steps",
    )
    add_column = ExecutePythonScriptStep(
        HERE / "steps" / "add_column.py",
        name="add_column",
        inputs=[table],
        outputs=[with_z],
        runconfig=RunConfiguration(environment=this_interpreter() if here else None),
    )
    return Pipeline(name="execute-python-script", steps=[make_table, add_column, summarize(with_z)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--here", action="store_true", help="add_column in this interpreter")
    args = parser.parse_args(argv)
    os.chdir(HERE)  # the @step's workspace is the current folder: this one
    execution: PipelineRun = build(args.here).start()
    print(f"pipeline run {execution.id}", flush=True)
    try:
        execution.wait()
    except RunFailedError:
        print(f"pipeline failed: {execution.describe()['FailureReason']}")
        return 1
    for entry in reversed(execution.list_steps()):  # list_steps: newest first
        how = " (reused)" if entry["Reused"] else ""
        print(f"  {entry['StepName']:<11} {entry['StepType']:<21} {entry['StepStatus']}{how}")
    print("summary:", json.dumps(execution.result("summarize")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
