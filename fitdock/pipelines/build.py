"""What a submission stores for its ``@step`` functions (the seed's layout), under
``$FITDOCK_HOME/pipelines/<pipeline name>/``:

    workspace/<digest>/                 the submitter's working folder (ignore files
                                        honoured), once per content; on the steps' sys.path
    <step>/<timestamp>/function         the function, pickled and signed
    <step>/<timestamp>/arguments        its arguments, references to other steps' results
                                        and to data left as markers the step resolves
    <step>/<timestamp>/dependencies     a copy of the step's requirements file, if any
    <execution id>/<step>/results       the return value, pickled and signed
    <execution id>/<step>/results.json  its JSON copy, when it has one
    definition.json                     what ``create()``/``upsert()`` stored

Every build stores the payloads afresh under a new timestamp. The build folder also holds
the job-side runner; a copy of cloudpickle (once per version, in ``cache/step-vendor/``)
is on the step's path, so the step runs in any interpreter of the submitter's Python
version (a venv of its own, an image).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import cloudpickle

import fitdock.jobside.payload as payload
import fitdock.jobside.stepfn as stepfn
from fitdock.errors import SpecError
from fitdock.pipelines.data import InputData, PipelineData, PipelineParameter
from fitdock.pipelines.delayed import KEEP, DelayedReturn, walk
from fitdock.pipelines.function import RUNNER, FunctionStep
from fitdock.pipelines.record import pipelines_root
from fitdock.pipelines.steps import StepContext
from fitdock.runs.contenthash import TreeHash, hash_tree
from fitdock.runs.names import check_run_id, folder_name
from fitdock.runs.snapshot import snapshot
from fitdock.shared import fitdock_home

RESERVED = {"cache"}  # names under pipelines/ that are not pipelines


def signing_key() -> bytes:
    """The user's key (made on first use: 0600 in a 0700 folder)."""
    try:
        return payload.load_key(payload.key_path(fitdock_home()), create=True)
    except payload.PayloadError as exc:
        from fitdock.errors import PayloadError

        raise PayloadError(str(exc), path=str(exc.path)) from None


def storage(pipeline_name: str) -> Path:
    """``$FITDOCK_HOME/pipelines/<name>``, for a name that can be a folder's."""
    if pipeline_name in RESERVED:
        raise SpecError(
            f"pipeline name {pipeline_name!r} is reserved (fitdock keeps its reuse cache "
            "there): choose another",
            field="name",
        )
    return pipelines_root() / folder_name(pipeline_name, "pipeline name")


def workspace(pipeline_name: str, folder: Path, tree: TreeHash | None = None) -> Path:
    """The submitter's working folder as the steps see it: one copy per content."""
    tree = tree or hash_tree(folder)
    target = storage(pipeline_name) / "workspace" / tree.digest[:16]
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{dt.datetime.now().timestamp()}")
        snapshot(folder, partial, max_size_mb=300, max_files=2000)
        try:
            partial.rename(target)
        except OSError:  # another submission made the same one meanwhile
            shutil.rmtree(partial, ignore_errors=True)
    return target


def marker(value: Any, parameters: dict[str, Any]) -> Any:
    """An argument as the step's payload holds it (``walk`` replacer)."""
    if isinstance(value, DelayedReturn):
        return {stepfn.MARK: "result", "step": value.step.name, "path": list(value.path)}
    if isinstance(value, PipelineData):
        return {stepfn.MARK: "data", "name": value.name}
    if isinstance(value, InputData):
        return str(value.path)
    if isinstance(value, PipelineParameter):
        return parameters[value.name]
    return KEEP


def pickled_arguments(step: FunctionStep, parameters: dict[str, Any]) -> bytes:
    def replace(value: Any) -> Any:
        return marker(value, parameters)

    args = [walk(value, replace) for value in step.args]
    kwargs = {name: walk(value, replace) for name, value in step.kwargs.items()}
    return cloudpickle.dumps((args, kwargs), protocol=5)  # type: ignore[no-any-return]


def pickled_function(step: FunctionStep, folder: Path) -> bytes:
    """The function, by value unless the step can import its module by name."""
    module = sys.modules.get(getattr(step.func, "__module__", ""), None)
    by_value = module is not None and not _importable(module, folder)
    if by_value:  # a file the steps cannot import by name (fitdock pipeline run FILE.py)
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(step.func, protocol=5)  # type: ignore[no-any-return]
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def write_build(
    step: FunctionStep, pipeline_name: str, parameters: dict[str, Any], cwd: Path, key: bytes
) -> Path:
    """A new ``<step>/<timestamp>/`` folder with the signed payloads and the runner."""
    parent = storage(pipeline_name) / folder_name(step.name, "step name")
    parent.mkdir(parents=True, exist_ok=True)
    folder = _new_folder(parent)
    options = step.options
    meta: dict[str, Any] = {
        "function_name": step.function_name,
        "pre_commands": json.dumps(options.pre_execution_commands),
    }
    if options.pre_execution_script is not None:
        script = options.pre_execution_script.read_bytes()
        (folder / "pre_execution.sh").write_bytes(script)
        meta["pre_script_sha256"] = hashlib.sha256(script).hexdigest()
    function = pickled_function(step, cwd)
    payload.write(folder / "function", "function", function, key, meta)
    arguments = pickled_arguments(step, parameters)
    payload.write(folder / "arguments", "arguments", arguments, key)
    if options.dependencies is not None:
        shutil.copyfile(options.dependencies, folder / "dependencies")
    shutil.copyfile(stepfn.__file__, folder / RUNNER)
    shutil.copyfile(payload.__file__, folder / "fitdock_payload.py")
    return folder


def vendor() -> Path:
    """A copy of this cloudpickle, once per version, for step interpreters without one:
    ``$FITDOCK_HOME/cache/step-vendor/<version>/cloudpickle``."""
    folder = fitdock_home() / "cache" / "step-vendor" / cloudpickle.__version__
    if not (folder / "cloudpickle").is_dir():
        partial = folder.with_name(f".{folder.name}.{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        source = Path(cloudpickle.__file__).parent
        shutil.copytree(source, partial / "cloudpickle", ignore=_no_cache)
        try:
            partial.rename(folder)
        except OSError:  # another submission made it meanwhile
            shutil.rmtree(partial, ignore_errors=True)
    return folder


def prepare(steps: list[Any], pipeline_name: str, values: dict[str, Any]) -> Builds:
    """Store the payloads of the function steps among ``steps`` (nothing when none)."""
    functions = [step for step in steps if isinstance(step, FunctionStep)]
    if not functions:
        return Builds(None, {})
    storage(pipeline_name)  # the names first: a bad one refuses before anything is made
    for function in functions:
        folder_name(function.name, "step name")
    key = signing_key()  # a key refused (loose permissions) refuses before anything is made
    cwd = Path.cwd()
    space = workspace(pipeline_name, cwd)
    folders = {step.name: write_build(step, pipeline_name, values, cwd, key) for step in functions}
    return Builds(space, folders, cwd)


class Builds:
    """A submission's workspace copy and each function step's build folder."""

    def __init__(self, space: Path | None, folders: dict[str, Path], cwd: Path | None = None):
        self.space, self.folders, self.cwd = space, folders, cwd


def results_folder(pipeline_name: str, execution_id: str, step_name: str) -> Path:
    execution = check_run_id(execution_id, "execution id")
    return storage(pipeline_name) / execution / folder_name(step_name, "step name")


def context(build: Path, space: Path, refs: dict[str, str], data: dict[str, str]) -> StepContext:
    """The variables (paths only: never the key) and read-only inputs of one step."""
    key = payload.key_path(fitdock_home())
    variables = {
        "FITDOCK_STEP_KEY": str(key),
        "FITDOCK_STEP_WORKSPACE": str(space),
        "FITDOCK_STEP_REFS": json.dumps(refs, sort_keys=True),
        "FITDOCK_STEP_DATA": json.dumps(data, sort_keys=True),
        "FITDOCK_STEP_VENDOR": str(vendor()),
    }
    inputs = {"fitdock_key": key, "fitdock_workspace": space, "fitdock_vendor": vendor()}
    inputs.update({f"fitdock_result_{i}": Path(path) for i, path in enumerate(refs.values())})
    return StepContext(build=build, variables=variables, inputs=inputs)


def _new_folder(parent: Path) -> Path:
    while True:
        folder = parent / dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _importable(module: Any, folder: Path) -> bool:
    """Whether a step can import ``module`` by its name: from the workspace ``folder`` or
    from an installed package. ``__main__``, files run by path and modules found through
    the submitter's own PYTHONPATH cannot."""
    name = getattr(module, "__name__", "")
    spec = getattr(module, "__spec__", None)
    if name == "__main__" or spec is None or spec.name != name or not spec.origin:
        return False
    origin = Path(spec.origin).resolve()
    homes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix)}
    return any(origin.is_relative_to(home) for home in {folder.resolve(), *homes})


def _no_cache(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "__pycache__"]
