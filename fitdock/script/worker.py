"""A warm worker of ``fitdock script serve``, the process inside the sandbox: load an
``azureml_main`` script once, then call it per request.

Run as ``python -c "from fitdock.script.worker import main; main()" --script PATH
--workdir DIR`` under :func:`fitdock.script.sandbox.wrap`, in ``DIR`` (started, replaced
and stopped by :mod:`fitdock.script.handle` and :mod:`fitdock.script.pool`): load the
script the way ``runner.inner`` does (its ``Script Bundle`` and ``DIR`` on ``sys.path``),
answer one ``ready`` line, then read one request per line on stdin and answer one line on
stdout per request (the lines: :mod:`fitdock.script.protocol`). The script never sees the
protocol: its fd 0 is ``/dev/null`` and its fd 1 is the worker's stderr; the worker talks
on private copies.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from fitdock.errors import ScriptError
from fitdock.script import runner
from fitdock.script.bundle import BUNDLE_FOLDER
from fitdock.script.protocol import ERROR, FAILED, OK, READY, Rows, answer_line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fitdock-script-worker")
    parser.add_argument("--script", required=True)
    parser.add_argument("--workdir", required=True)
    ns = parser.parse_args(argv)
    raise SystemExit(serve_lines(Path(ns.script), Path(ns.workdir)))


def serve_lines(script: Path, workdir: Path) -> int:
    """Load ``script`` and answer requests until stdin closes; the exit code."""
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the script reads nothing of the protocol
    os.close(null)
    os.dup2(2, 1)  # and what it prints goes to the log, not into an answer
    try:
        entry, info = _load(script, workdir)
    except Exception as exc:
        error = _error(exc, script)
        _answer(writer, 0, FAILED, json.dumps(error).encode())
        return 1
    _answer(writer, 0, READY, json.dumps(info).encode())
    for line in reader:
        request = json.loads(line)
        status, body = call(entry, info["arity"], request["inputs"], script)
        sys.stdout.flush()
        _answer(writer, request["id"], status, body)
    return 0


def _answer(writer: BinaryIO, number: int, status: bytes, body: bytes) -> None:
    writer.write(answer_line(number, status, body))
    writer.flush()


def _load(script: Path, workdir: Path) -> tuple[Callable[..., Any], dict[str, int]]:
    """The script's ``azureml_main`` (compiled and run once, as ``runner.inner`` does) and
    how many inputs it needs and takes."""
    import pandas  # noqa: F401  (warm: every request needs it)

    bundle = workdir / BUNDLE_FOLDER
    if bundle.is_dir():
        sys.path.insert(0, str(bundle))
    sys.path.insert(0, str(workdir))
    namespace: dict[str, Any] = {"__name__": "__fitdock_script__", "__file__": str(script)}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    entry = runner.entry_point(namespace, 2)
    return entry, {"required": required_inputs(entry), "arity": runner.arity(entry)}


def required_inputs(entry: Callable[..., Any]) -> int:
    """How many positional parameters of ``entry`` have no default."""
    params = inspect.signature(entry).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.default is p.empty and p.kind in kinds)


def call(
    entry: Callable[..., Any], arity: int, inputs: list[Rows], script: Path
) -> tuple[bytes, bytes]:
    """One request: the inputs as DataFrames (fresh index), ``azureml_main`` over them,
    its outputs converted and normalized; ``(OK, response body)`` or ``(ERROR, error)``."""
    import pandas as pd

    from fitdock.script import convert

    try:
        frames = [convert.fresh_index(pd.DataFrame.from_records(rows)) for rows in inputs]
    except Exception as exc:
        return ERROR, _dump({"message": f"the rows cannot be made a DataFrame: {exc}"})
    try:
        result = entry(*frames[:arity])
        tables = [convert.normalize(frame) for frame in convert.to_frames(result)]
    except (Exception, SystemExit) as exc:
        error = _error(exc, script)
        print(error["message"], file=sys.stderr)
        print(error.get("traceback", ""), file=sys.stderr, end="", flush=True)
        return ERROR, _dump(error)
    try:
        outputs = [records(table) for table in tables] + [[], []]
        return OK, _dump({"Results": {"output1": outputs[0], "output2": outputs[1]}})
    except Exception as exc:  # e.g. a float inf in a column of objects
        message = f"azureml_main's outputs cannot be sent as JSON: {type(exc).__name__}: {exc}"
        return ERROR, _dump({"message": message})


def _error(exc: BaseException, script: Path) -> dict[str, Any]:
    if isinstance(exc, runner.Refused):
        return {"message": str(exc), "exception": "ValueError", "line": None}
    if isinstance(exc, ScriptError):  # what it returned cannot be a DataFrame
        return {"message": str(exc), "exception": exc.exception, "line": None}
    return runner.azure_error(exc, str(script))


def records(frame: Any) -> Rows:
    """``frame``'s rows as JSON objects; missing values and infinities become ``None``."""
    import numpy as np

    values = frame.to_numpy(dtype=object)
    missing = frame.isna().to_numpy(dtype=bool)
    for number, dtype in enumerate(frame.dtypes):
        if dtype.kind == "f":
            column = frame.iloc[:, number].to_numpy(dtype="float64", na_value=np.nan)
            missing[:, number] |= np.isinf(column)
    values[missing] = None
    columns = list(frame.columns)
    return [dict(zip(columns, row, strict=True)) for row in values.tolist()]


def _dump(value: Any) -> bytes:
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_native
    ).encode()


def _native(value: Any) -> Any:
    item = getattr(value, "item", None)  # a NumPy scalar
    return item() if callable(item) else str(value)
