"""A pipeline as JSON (``Pipeline.definition()``, SageMaker's shape) and its storage under
the pipeline's name (``create``/``upsert``): ``$FITDOCK_HOME/pipelines/<name>/definition.json``.
References read as SageMaker's ``{"Get": "Steps.<name>.Result[...]"}``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fitdock.errors import SpecError
from fitdock.pipelines.conditions import Join
from fitdock.pipelines.data import InputData, PipelineData, PipelineParameter
from fitdock.pipelines.delayed import DelayedReturn
from fitdock.pipelines.graph import dependencies
from fitdock.pipelines.steps import Step
from fitdock.shared import now_iso, write_json_atomic

if TYPE_CHECKING:
    from fitdock.pipelines.pipeline import Pipeline

VERSION = "2020-12-01"
FILE = "definition.json"


def render(value: Any) -> Any:
    """An operand or argument as JSON."""
    if isinstance(value, DelayedReturn):
        path = "".join(f"[{key!r}]" for key in value.path)
        return {"Get": f"Steps.{value.step.name}.Result{path}"}
    if isinstance(value, PipelineParameter):
        return {"Get": f"Parameters.{value.name}"}
    if isinstance(value, PipelineData):
        return {"Get": f"Data.{value.name}"}
    if isinstance(value, InputData):
        return {"Path": str(value.path)}
    if isinstance(value, Join):
        return value.to_definition(render)
    if isinstance(value, dict):
        return {str(k): render(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(v) for v in value]
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {"Value": repr(value)[:200]}
    return value


def step_definition(step: Step) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Name": step.name,
        "Type": step.kind,
        "DependsOn": [d.name for d in dependencies(step)],
    }
    function = getattr(step, "function_name", None)
    if function is not None:
        options = step.options  # type: ignore[attr-defined]
        entry["Function"] = function
        entry["Arguments"] = {
            "args": render(list(step.args)),  # type: ignore[attr-defined]
            "kwargs": render(dict(step.kwargs)),  # type: ignore[attr-defined]
        }
        entry["Options"] = options.model_dump(mode="json", exclude_defaults=True)
        cache = options.cache_config
        if cache is not None:
            entry["CacheConfig"] = {
                "Enabled": cache.enable_caching,
                "ExpireAfter": cache.expire_after,
            }
    if hasattr(step, "conditions"):
        entry["Arguments"] = {
            "Conditions": [c.to_definition(render) for c in step.conditions],
            **{k.capitalize() + "Steps": v for k, v in step.branch_names().items()},
        }
    if hasattr(step, "error_message"):
        entry["Arguments"] = {"ErrorMessage": render(step.error_message)}
    if hasattr(step, "script_name"):
        entry["Arguments"] = {
            "Script": step.script_name,
            "Arguments": render(step.arguments),
            "Params": render(getattr(step, "params", {})),
        }
    entry["Outputs"] = [data.name for data in step.outputs]
    return entry


def definition(pipeline: Pipeline) -> str:
    parameters = []
    for parameter in pipeline.all_parameters():
        to_definition = getattr(parameter, "to_definition", None)
        parameters.append(
            to_definition()
            if to_definition
            else {"Name": parameter.name, "DefaultValue": render(parameter.default_value)}
        )
    body = {
        "Version": VERSION,
        "Name": pipeline.name,
        "Description": pipeline.description,
        "Parameters": parameters,
        "Steps": [step_definition(step) for step in pipeline.steps],
    }
    return json.dumps(body, indent=2)


def store(pipeline: Pipeline, *, replace: bool) -> dict[str, Any]:
    """Validate, then write the definition; ``create`` refuses to replace one."""
    from fitdock.errors import PipelineValidationError
    from fitdock.pipelines.build import storage

    problems = pipeline.problems(need_values=False)
    if problems:
        raise PipelineValidationError(problems)
    path = storage(pipeline.name) / FILE
    if path.exists() and not replace:
        raise SpecError(
            f"a pipeline named {pipeline.name!r} is stored already ({path}); use upsert() "
            "to replace it",
            field="name",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path, {"stored_at": now_iso(), "definition": json.loads(definition(pipeline))}
    )
    return {"PipelineName": pipeline.name, "DefinitionPath": str(path)}
