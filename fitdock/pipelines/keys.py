"""What the scheduler knows of a running pipeline's values, and the reuse keys it makes
from them: a parameter's value, a piece of data's path and content hash, a step result's
JSON value and content hash, and each step's named key parts (``reuse.key_parts``)."""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from fitdock.pipelines import reuse
from fitdock.pipelines.conditions import Join
from fitdock.pipelines.data import InputData, PipelineData, PipelineParameter
from fitdock.pipelines.delayed import KEEP, DelayedReturn, walk
from fitdock.pipelines.function import FunctionStep
from fitdock.pipelines.record import PipelineRecord
from fitdock.pipelines.results import as_text, json_value, part
from fitdock.pipelines.steps import Step
from fitdock.runs.contenthash import TreeHash, hash_file, hash_path, hash_tree
from fitdock.specs.job import JobSpec

SHORT = 200  # arguments longer than this as JSON are keyed by their digest


class Values:
    def __init__(self, record: PipelineRecord, workspace: Path | None = None) -> None:
        self.record = record
        self.workspace = workspace  # the submitter's folder (function steps' source)
        self.trees: dict[Path, TreeHash] = {}
        self.results: dict[str, Any] = {}  # step name -> its result's verified JSON value

    # ------------------------------------------------------------------ values
    def resolve(self, value: Any, own: dict[str, str]) -> Any:
        """For a job spec: a parameter's value, a piece of data's path, a result part as
        text, anything else as it is."""
        if isinstance(value, PipelineParameter):
            return self.record.parameters[value.name]
        if isinstance(value, PipelineData):
            if value.name in own:
                return own[value.name]
            producer = value.producers[0]
            return self.record.steps[producer.name].outputs[value.name]
        if isinstance(value, InputData):
            return str(value.path)
        if isinstance(value, DelayedReturn):
            return as_text(self.value_of(value))
        if isinstance(value, Path):
            return str(value)
        return value

    def value_of(self, operand: Any) -> Any:
        """For a condition or a message: a result part's JSON value, a parameter's value,
        a Join's text, a constant as it is."""
        if isinstance(operand, DelayedReturn):
            name = operand.step.name
            if name not in self.results:  # verified once: a result never changes
                self.results[name] = json_value(self.results_of(name), name)
            return part(self.results[name], operand.path, name)
        if isinstance(operand, PipelineParameter):
            return self.record.parameters[operand.name]
        if isinstance(operand, Join):
            return operand.resolve_with(self.value_of)
        return operand

    def results_of(self, step: str) -> Path:
        return Path(self.record.steps[step].outputs["results"])

    def content(self, data: PipelineData | InputData) -> str:
        if isinstance(data, InputData):
            return hash_path(data.path)
        producer = self.record.steps[data.producers[0].name]
        return producer.output_hashes[data.name]

    def tree(self, folder: Path) -> TreeHash:
        if folder not in self.trees:  # one hash of a folder that several steps share
            self.trees[folder] = hash_tree(folder)
        return self.trees[folder]

    # ------------------------------------------------------------------ keys
    def key_parts(self, step: Step, spec: JobSpec) -> dict[str, Any]:
        if isinstance(step, FunctionStep):
            return self._function_parts(step, spec)

        def keyed(value: Any) -> Any:
            if isinstance(value, PipelineData) and any(value is o for o in step.outputs):
                return f"output:{value.name}"
            if isinstance(value, (PipelineData, InputData)):
                return f"data:{self.content(value)}"
            if isinstance(value, DelayedReturn):
                return self._result_key(value)
            return self.resolve(value, {})

        params = getattr(step, "params", {})
        return reuse.key_parts(
            step.kind,
            getattr(step, "script_name", spec.entry_script),
            spec,
            self.tree(spec.source_directory),
            [keyed(value) for value in step.arguments],
            {key: str(keyed(value)) for key, value in params.items()},
            {data.name: self.content(data) for data in step.reads()},
            step.version,
        )

    def _function_parts(self, step: FunctionStep, spec: JobSpec) -> dict[str, Any]:
        """A function step's key: its code, the workspace's content, its arguments (a
        result by the content of the step that made it, data by content), its environment
        (the dependencies file and the image are in it) and options."""

        def replace(value: Any) -> Any:
            if isinstance(value, DelayedReturn):
                return self._result_key(value)
            if isinstance(value, (PipelineData, InputData)):
                return f"data:{self.content(value)}"
            if isinstance(value, PipelineParameter):
                return self.record.parameters[value.name]
            return KEEP

        arguments = [_digest_if_long(walk(v, replace)) for v in step.args]
        arguments += [f"{k}={_digest_if_long(walk(v, replace))}" for k, v in step.kwargs.items()]
        assert self.workspace is not None
        parts = reuse.key_parts(
            step.kind, step.func.__qualname__, spec, self.tree(self.workspace), arguments, {},
            {data.name: self.content(data) for data in step.reads()}, None,
        )  # fmt: skip
        options = step.options
        parts["function"] = code_digest(step.func, self.workspace)
        parts["dependencies"] = hash_file(options.dependencies) if options.dependencies else None
        parts["pre_execution"] = options.pre_execution_commands
        return parts

    def _result_key(self, ref: DelayedReturn) -> str:
        state = self.record.steps[ref.step.name]
        path = "".join(f"[{key!r}]" for key in ref.path)
        return f"result:{state.output_hashes.get('results', '?')}{path}"


def code_digest(func: Any, workspace: Path) -> str:
    """The function's code: its source text, and its file's content when that file lies
    outside the workspace (whose content is a key part of its own); the pickled function
    where there is no source (a notebook cell, a lambda built at run time)."""
    digest = hashlib.sha256(f"{func.__qualname__}\n".encode())
    try:
        digest.update(inspect.getsource(func).encode())
        filename = inspect.getsourcefile(func)
    except (OSError, TypeError):
        digest.update(cloudpickle.dumps(func, protocol=5))
        return digest.hexdigest()
    where = Path(filename).resolve() if filename else None
    homes = (workspace.resolve(), Path(sys.prefix).resolve())
    if where is not None and not any(where.is_relative_to(home) for home in homes):
        digest.update(where.read_bytes())
    return digest.hexdigest()


def _digest_if_long(value: Any) -> Any:
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = None
    if text is not None and len(text) <= SHORT:
        return value
    body = cloudpickle.dumps(value, protocol=5) if text is None else text.encode()
    return f"digest:{hashlib.sha256(body).hexdigest()[:16]}"
