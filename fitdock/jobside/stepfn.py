"""The job-side runner of a ``@step`` function (copied into the step's build folder as
``fitdock_step.py``, beside ``fitdock_payload.py``; a copy of the submitter's
cloudpickle is at ``$FITDOCK_STEP_VENDOR`` and comes first on ``sys.path``).

Under the step's own interpreter, wherever it runs: it verifies the signed ``function``
and ``arguments`` payloads before unpickling anything, refuses a Python other than the
submitter's (cloudpickle cannot cross versions), runs the pre-execution commands, puts
the pipeline's workspace on ``sys.path``, replaces the references in the arguments by
the upstream results (verified too) and data paths, calls the function, and writes its
return value signed to ``$FITDOCK_OUTPUT_DIR/.step-results/results`` (with a JSON copy
when it has one). Standard library only, plus cloudpickle, which ``pickle`` imports only
for payloads that need it (a function pickled by value; a result plain pickle refuses).

Variables it reads (paths and names only; the key itself travels in no variable):
``FITDOCK_STEP_KEY`` (the key file), ``FITDOCK_STEP_WORKSPACE``, ``FITDOCK_STEP_REFS``
(JSON: step name -> its results folder), ``FITDOCK_STEP_DATA`` (JSON: data name -> path).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from pathlib import Path

try:
    import fitdock_payload as payload  # the copy beside this file
except ImportError:  # pragma: no cover - run from the package
    from fitdock.jobside import payload  # type: ignore[no-redef]

REFUSED = 3  # exit code: a payload or the interpreter was refused, nothing ran
RESULTS = ".step-results"
MARK = "__fitdock_ref__"


def refuse(message: str) -> None:
    print(f"fitdock step: refused: {message}", file=sys.stderr, flush=True)
    raise SystemExit(REFUSED)


def main() -> None:
    here = Path(__file__).resolve().parent
    env = os.environ
    try:
        key = payload.load_key(Path(env["FITDOCK_STEP_KEY"]), folder=False)
        header, function = payload.read(here / "function", "function", key)
        _, arguments = payload.read(here / "arguments", "arguments", key)
    except payload.PayloadError as exc:
        refuse(str(exc))
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if header["python"] != ours:
        refuse(
            f"this interpreter ({sys.executable}) is Python {ours} but the pipeline was "
            f"submitted with Python {header['python']}: cloudpickle cannot cross Python "
            f"versions; run the step with Python {header['python']}"
        )
    _pre_execution(here, header)
    workspace = env.get("FITDOCK_STEP_WORKSPACE")
    if workspace:
        sys.path.insert(1, workspace)
    vendor = env.get("FITDOCK_STEP_VENDOR")
    if vendor:  # the submitter's cloudpickle, first: payloads load with the version that made them
        sys.path.insert(1, vendor)
    func = pickle.loads(function)
    args, kwargs = pickle.loads(arguments)
    refs = _Refs(json.loads(env.get("FITDOCK_STEP_REFS") or "{}"), key)
    data = json.loads(env.get("FITDOCK_STEP_DATA") or "{}")
    args = [_resolve(value, refs, data) for value in args]
    kwargs = {name: _resolve(value, refs, data) for name, value in kwargs.items()}
    result = func(*args, **kwargs)
    _write_results(Path(env["FITDOCK_OUTPUT_DIR"]) / RESULTS, result, key)


def _pre_execution(here: Path, header: dict) -> None:
    """SageMaker's pre-execution commands and script, before anything is unpickled (they
    may install what unpickling needs). Each command is split like a shell line and run
    without a shell; write ``sh -c '...'`` for pipes and redirections."""
    script = here / "pre_execution.sh"
    if header.get("pre_script_sha256"):
        if hashlib.sha256(script.read_bytes()).hexdigest() != header["pre_script_sha256"]:
            refuse(f"{script} does not match its signed digest")
        _run(["sh", str(script)])
    commands = json.loads(header.get("pre_commands") or "[]")
    if commands:
        import shlex

        for command in commands:
            _run(shlex.split(command))


def _run(argv: list) -> None:
    import shlex
    import subprocess

    print(f"fitdock step: pre-execution: {shlex.join(argv)}", file=sys.stderr, flush=True)
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        print(f"fitdock step: {shlex.join(argv)} exited {done.returncode}", file=sys.stderr)
        raise SystemExit(done.returncode or 1)


class _Refs:
    """Upstream results, each verified and unpickled once."""

    def __init__(self, folders: dict, key: bytes) -> None:
        self.folders, self.key = folders, key
        self.loaded: dict = {}

    def value(self, step: str, path: list) -> object:
        if step not in self.loaded:
            try:
                _, body = payload.read(Path(self.folders[step]) / "results", "results", self.key)
            except (payload.PayloadError, KeyError) as exc:
                refuse(f"the result of step {step!r}: {exc}")
            self.loaded[step] = pickle.loads(body)
        value = self.loaded[step]
        for part in path:
            value = value[part]
        return value


def _resolve(value: object, refs: _Refs, data: dict) -> object:
    if isinstance(value, dict) and MARK in value:
        if value[MARK] == "result":
            return refs.value(value["step"], value["path"])
        return data[value["name"]]
    if isinstance(value, dict):
        return {k: _resolve(v, refs, data) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, refs, data) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_resolve(v, refs, data) for v in value)
    return value


def _write_results(folder: Path, result: object, key: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    try:
        text = json.dumps(result, sort_keys=True)
    except (TypeError, ValueError):
        text = None  # not JSON: conditions and `pipeline result` cannot read it
    if text is not None:
        (folder / "results.json").write_text(text)
        meta["json_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    try:  # plain pickle when it can (no cloudpickle import), else by value
        body = pickle.dumps(result, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        import cloudpickle

        body = cloudpickle.dumps(result, protocol=5)
    payload.write(folder / "results", "results", body, key, meta)


if __name__ == "__main__":
    main()
