"""``execute_python_script``: Azure ML Studio's Execute Python Script module as one call.

The script runs as an ordinary fitdock run (time limit, cancel, logs, record) whose entry
is the job-side runner (``runner.py``), in the curated "script" environment by default
(pandas, pyarrow, matplotlib, scikit-learn: its own venv, cached), sandboxed as
``sandbox`` asks. Everything is checked before anything is created: the script is a
text or a .py file, each input a DataFrame or a CSV/TSV/Parquet file, the bundle a zip
whose entries are safe, and the sandbox available (``strict``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitdock.environments.spec import Environment, PythonSection
from fitdock.errors import RunFailedError, SandboxError, ScriptError, SpecError
from fitdock.execution.run import Run
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir
from fitdock.script.bundle import check_bundle
from fitdock.script.convert import INPUT_SUFFIXES
from fitdock.script.runner import ERROR, IMAGES, SANDBOX

SUFFIXES = INPUT_SUFFIXES  # what convert.read_input reads
ENTRY = "fitdock_script.py"
STUB = "from fitdock.script.runner import main\n\nmain()\n"


@dataclass
class ScriptResult:
    """What a script gave: up to two DataFrames, the PNGs it saved, its output, its run."""

    dataframes: list[Any] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    run: Run | None = None


def curated() -> Environment:
    """The catalogue's "script" row: the default environment of scripts."""
    from fitdock.environments.catalogue import load_catalogue

    return load_catalogue().lookup("script", None, False).to_environment()


def this_interpreter() -> Environment:
    """The interpreter running fitdock, as it is (it needs pandas and pyarrow)."""
    import sys

    return Environment(
        python=PythonSection(user_managed_dependencies=True, interpreter_path=sys.executable)
    )


def execute_python_script(
    script: str | Path,
    dataframe1: Any = None,
    dataframe2: Any = None,
    script_bundle: str | Path | None = None,
    *,
    sandbox: str = "auto",
    timeout_seconds: float = 600,
    memory_mb: int | None = None,
    environment: Environment | None = None,
    csv: bool = False,
) -> ScriptResult:
    """Run ``azureml_main`` of ``script`` over the inputs; see the module docstring."""
    text = script_text(script)
    check_sandbox(sandbox)
    if not _positive(timeout_seconds):
        raise SpecError(
            f"timeout_seconds must be > 0, not {timeout_seconds!r}", field="timeout_seconds"
        )
    if memory_mb is not None and not _positive(memory_mb):
        raise SpecError(
            f"memory_mb must be a positive number of MB, not {memory_mb!r}", field="memory_mb"
        )
    bundle = _bundle(script_bundle)
    if sandbox == "strict":
        from fitdock.script.sandbox import choose

        choose("strict")  # SandboxError before anything is made
    given = [(n, value) for n, value in ((1, dataframe1), (2, dataframe2)) if value is not None]
    staging = Path(tempfile.mkdtemp(prefix="fitdock-script-"))
    try:
        source, data = staging / "source", staging / "data"
        source.mkdir()
        paths = [_input(value, data, n) for n, value in given]  # errors name the argument
        (source / "script.py").write_text(text)
        (source / ENTRY).write_text(STUB)
        run = _submit(source, paths, bundle, sandbox, timeout_seconds, memory_mb, environment, csv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return collect(run)


def _submit(
    staging: Path,
    paths: list[Path],
    bundle: Path | None,
    sandbox: str,
    timeout_seconds: float,
    memory_mb: int | None,
    environment: Environment | None,
    csv: bool,
) -> Run:
    from fitdock.estimators.base import Estimator

    arguments = ["--script", "script.py", "--sandbox", sandbox]
    inputs: dict[str, Path] = {}
    for number, path in enumerate(paths, start=1):
        arguments += ["--input", str(path)]
        inputs[f"input{number}"] = path
    if bundle is not None:
        arguments += ["--bundle", str(bundle)]
        inputs["bundle"] = bundle
    if memory_mb is not None:
        arguments += ["--memory-mb", str(int(memory_mb))]
    if csv:
        arguments.append("--csv")
    env = environment or curated()
    estimator = Estimator(
        staging, entry_script=ENTRY, script_params=arguments, environment_definition=env,
        inputs=inputs,
        max_run_duration_seconds=timeout_seconds, termination_grace_seconds=2,
    )  # fmt: skip
    return estimator.fit(wait=True)


def collect(run: Run) -> ScriptResult:
    """The result of a finished script run, or the error it ended with."""
    outputs = run.output_dir
    said = _read_json(outputs / SANDBOX)
    if said:
        with RunDir.find(run.id).edit() as record:  # the isolation, in the run record
            record.tags["sandbox"] = str(said.get("isolation"))
    error = _read_json(outputs / ERROR)
    stdout, stderr = _log(run, "stdout"), _log(run, "stderr")
    if run.status is not RunStatus.COMPLETED:
        if "memory" in error:
            raise SandboxError(error["memory"])
        if run.status is RunStatus.TIMED_OUT:
            raise RunFailedError(run.id, run.status, {**(run.error or {}), "message": _late(run)})
        if "message" in error:
            raise ScriptError(
                error["message"], line=error.get("line"), exception=error.get("exception"),
                traceback=error.get("traceback", ""),
            )  # fmt: skip
        raise RunFailedError(run.id, run.status, run.error)
    frames = []
    for number in (1, 2):
        path = outputs / f"output{number}.parquet"
        if path.is_file():
            import pandas as pd

            # No Arrow threads: pyarrow < 22 (what NumPy 1 allows) can abort this process
            # at exit after a threaded read (apache/arrow#34314, about 1 exit in 10 here).
            frames.append(pd.read_parquet(path, engine="pyarrow", use_threads=False))
    images = sorted((outputs / IMAGES).glob("*.png")) if (outputs / IMAGES).is_dir() else []
    return ScriptResult(frames, images, stdout, stderr, run)


def _late(run: Run) -> str:
    """The message of a script stopped at its time limit, in the caller's own words."""
    limit = (run.record.get("spec") or {}).get("max_run_duration_seconds")
    said = f"timeout_seconds={limit:g}" if isinstance(limit, (int, float)) else "timeout_seconds"
    return (
        f"the script ran past its time limit ({said}) and was stopped; raise "
        "timeout_seconds or make azureml_main faster"
    )


def sandbox_of(run: Run) -> dict[str, Any]:
    """Which isolation the script had (``runner.py`` writes it before the script runs)."""
    return _read_json(run.output_dir / SANDBOX)


def _positive(value: Any) -> bool:
    """A number > 0 (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_sandbox(mode: str) -> None:
    """A sandbox mode, or a SpecError naming the ones there are."""
    from fitdock.script.sandbox import MODES

    if mode not in MODES:
        raise SpecError(f"sandbox must be one of {', '.join(MODES)}, not {mode!r}", field="sandbox")


def script_text(script: str | Path) -> str:
    if isinstance(script, Path) or (
        isinstance(script, str) and script.endswith(".py") and "\n" not in script
    ):
        path = Path(script).expanduser()
        if not path.is_file():
            raise SpecError(f"script {path} is not a file", field="script")
        return path.read_text()
    if not isinstance(script, str) or not script.strip():
        raise SpecError("script must be the script's text or a path to a .py file", field="script")
    return script


def _bundle(bundle: str | Path | None) -> Path | None:
    if bundle is None:
        return None
    if not isinstance(bundle, (str, Path)):
        raise SpecError(
            f"script_bundle must be a path to a zip file, got {bundle!r}", field="script_bundle"
        )
    path = Path(bundle).expanduser().resolve()
    if not path.is_file():
        raise SpecError(f"script_bundle {path} is not a file", field="script_bundle")
    check_bundle(path)  # ScriptBundleError naming the entry, before anything runs
    return path


def _input(value: Any, folder: Path, number: int) -> Path:
    """A DataFrame staged as Parquet, or a data file's own path."""
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise SpecError(f"dataframe{number}: {path} is not a file", field=f"dataframe{number}")
        if path.suffix.lower() not in SUFFIXES:
            raise SpecError(
                f"dataframe{number}: {path.name} is not a CSV, TSV or Parquet file "
                f"({', '.join(SUFFIXES)})",
                field=f"dataframe{number}",
            )
        return path
    if type(value).__name__ != "DataFrame":
        raise SpecError(
            f"dataframe{number} must be a pandas DataFrame or a path to a CSV, TSV or Parquet "
            f"file, not {type(value).__name__}",
            field=f"dataframe{number}",
        )
    folder.mkdir(exist_ok=True)
    path = folder / f"input{number}.parquet"
    value.to_parquet(path)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _log(run: Run, stream: str) -> str:
    path = run.log_dir / f"rank_0.{stream}.log"
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
