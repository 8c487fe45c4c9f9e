"""Reading a ``@step`` function's stored result on the submitting side: its JSON copy (for
conditions, ``DelayedReturn`` arguments of script steps, ``show`` and ``explain``) and its
value (``PipelineRun.result``). The signed ``results`` payload is verified first, every
time: the JSON copy must match the digest it carries."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fitdock.jobside.payload as payload
from fitdock.errors import PayloadError
from fitdock.pipelines.build import signing_key
from fitdock.pipelines.record import StepState
from fitdock.runs.status import RunStatus

RESULTS, JSON = "results", "results.json"
_NO_JSON = object()


def missing_result(state: StepState) -> str | None:
    """Why ``state`` has no result (not a ``@step`` function, or it did not complete);
    ``None`` when it has one."""
    name = state.name
    if state.kind != "function":
        return f"step {name!r} is a {state.kind} step: result() is for @step functions"
    if state.status is not RunStatus.COMPLETED or RESULTS not in state.outputs:
        why = f": {state.error.get('message', state.error)}" if state.error else ""
        return f"step {name!r} has no result: it is {state.status.value}{why}"
    return None


def has_json(folder: Path) -> bool:
    """Whether the result has a JSON copy (the step writes one for JSON data only)."""
    return (folder / JSON).is_file()


def _verified(folder: Path) -> tuple[dict[str, Any], bytes]:
    try:
        return payload.read(folder / RESULTS, "results", signing_key())
    except payload.PayloadError as exc:
        raise PayloadError(str(exc), path=str(exc.path)) from None


def json_value(folder: Path, step: str) -> Any:
    """The step's result as JSON data; an error when it has no JSON form."""
    header, _ = _verified(folder)
    digest = header.get("json_sha256")
    if not digest:
        raise PayloadError(
            f"the result of step {step!r} is not JSON-serialisable, so conditions and "
            "script arguments cannot use it: return JSON data (dicts, lists, numbers, str)",
            path=str(folder / RESULTS),
        )
    text = (folder / JSON).read_bytes()
    if hashlib.sha256(text).hexdigest() != digest:
        raise PayloadError(
            f"{folder / JSON} does not match the digest signed in its results payload",
            path=str(folder / JSON),
        )
    return json.loads(text)


def part(value: Any, path: tuple[Any, ...] | list[Any], step: str) -> Any:
    """``value[path[0]][path[1]]...``, with an error that names the missing part."""
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise PayloadError(
                f"the result of step {step!r} has no part {key!r} (looked up {list(path)!r})",
                path=step,
            ) from None
    return value


def value(folder: Path) -> Any:
    """The step's return value: verified, then unpickled."""
    import cloudpickle

    _, body = _verified(folder)
    return cloudpickle.loads(body)


def as_text(data: Any) -> str:
    """A result part as a script argument: a str as it is, anything else as JSON."""
    return data if isinstance(data, str) else json.dumps(data, sort_keys=True)
