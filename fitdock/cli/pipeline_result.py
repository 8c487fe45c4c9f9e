"""``fitdock pipeline result RUN_ID STEP``: a ``@step`` function's return value as JSON,
from its signed results payload (verified, as conditions read it), never unpickled here.

A step with no result, or a result with no JSON form, exits 1 with a message saying why;
a refused payload is a :class:`~fitdock.errors.PayloadError` (exit 2, as bad input)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fitdock.pipelines import PipelineRun


def print_result(run: PipelineRun, step: str) -> int:
    """Print the result of ``step`` (a step of ``run``) as JSON: 0; 1 when it has none or
    it is not JSON data, with the reason on stderr."""
    from fitdock.pipelines.results import RESULTS, has_json, json_value, missing_result

    state = run.record.steps[step]
    why = missing_result(state)
    folder = Path(state.outputs.get(RESULTS, ""))
    if why is None and (folder / RESULTS).is_file() and not has_json(folder):
        why = (  # the job side writes results.json only for a JSON-serialisable value
            f"the result of step {step!r} has no JSON form (it is not JSON data: dicts, "
            f"lists, numbers, strings); read it in Python with "
            f"PipelineRun({run.id!r}).result({step!r})"
        )
    if why is not None:
        print(f"fitdock: error: {why}", file=sys.stderr)
        return 1
    print(json.dumps(json_value(folder, step), indent=2, sort_keys=True))
    return 0
