"""``ExecutePythonScriptStep``: Azure's Execute Python Script module as a pipeline step.

Its run is the one ``execute_python_script`` makes (the runner of ``fitdock.script``,
sandboxed, in the curated "script" environment unless ``runconfig`` names another):
inputs are up to two of ``PipelineData`` (another step's output, a folder holding one
table), a CSV/TSV/Parquet path or a DataFrame (kept once, by content, as Parquet);
``outputs`` are up to two ``PipelineData`` that receive the result datasets as
``data.parquet``. The script's text is the step's source (one folder per content), so
the reuse key covers the script, the bundle's content and the inputs' content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from fitdock.errors import SpecError
from fitdock.pipelines.data import InputData, PipelineData
from fitdock.pipelines.steps import Resolver, RunConfiguration, Step, StepContext
from fitdock.script.api import ENTRY, STUB, check_sandbox, curated, script_text
from fitdock.shared import fitdock_home
from fitdock.specs.job import JobSpec


class ExecutePythonScriptStep(Step):
    kind: ClassVar[str] = "execute_python_script"

    def __init__(
        self,
        script: str | Path,
        name: str | None = None,
        inputs: Sequence[Any] | None = None,
        script_bundle: str | Path | None = None,
        outputs: Sequence[PipelineData] | None = None,
        sandbox: str = "auto",
        allow_reuse: bool = True,
        compute_target: Any = None,
        runconfig: RunConfiguration | None = None,
    ) -> None:
        text = script_text(script)
        check_sandbox(sandbox)
        tables = [_table(value, number) for number, value in enumerate(inputs or (), start=1)]
        if len(tables) > 2 or len(outputs or ()) > 2:
            raise SpecError(
                "Execute Python Script takes at most two inputs and two outputs",
                field="inputs" if len(tables) > 2 else "outputs",
            )
        bundle = InputData(script_bundle, name="script_bundle") if script_bundle else None
        if bundle is not None:
            from fitdock.script.bundle import check_bundle

            check_bundle(bundle.path)  # refused now, naming the entry
        super().__init__(
            name or "execute_python_script", inputs=[*tables, *([bundle] if bundle else [])],
            outputs=outputs, arguments=None, compute_target=compute_target,
            allow_reuse=allow_reuse, version=None, runconfig_pipeline_params=None,
        )  # fmt: skip
        self.tables, self.bundle = tables, bundle
        self.sandbox = sandbox
        self.runconfig = runconfig or RunConfiguration()
        self.source = _source(text)

    def job_spec(self, resolve: Resolver, context: StepContext | None = None) -> JobSpec:
        from fitdock.estimators.base import Estimator

        config = self.runconfig
        arguments = ["--script", "script.py", "--sandbox", self.sandbox]
        for table in self.tables:
            arguments += ["--input", str(resolve(table))]
        if self.bundle is not None:
            arguments += ["--bundle", str(self.bundle.path)]
        for number, data in enumerate(self.outputs, start=1):
            arguments += ["--output-to", f"{number}={resolve(data)}"]
        estimator = Estimator(
            self.source, entry_script=ENTRY, script_params=arguments,
            environment_definition=config.environment or curated(),
            environment_variables=config.environment_variables,
            max_run_duration_seconds=config.max_run_duration_seconds or 600,
            termination_grace_seconds=2, use_docker=config.use_docker,
            compute_target=config.target or "local",
        )  # fmt: skip
        return self._finish(estimator.job_spec, resolve, {})


def _table(value: Any, number: int) -> PipelineData | InputData:
    if isinstance(value, (PipelineData, InputData)):
        return value
    if isinstance(value, (str, Path)):
        return InputData(value, name=f"input{number}")
    if type(value).__name__ == "DataFrame":
        return InputData(_kept(value), name=f"input{number}")
    raise SpecError(
        f"input {number} must be a PipelineData, a path to a CSV/TSV/Parquet file or a "
        f"DataFrame, not {type(value).__name__}",
        field="inputs",
    )


def _kept(frame: Any) -> Path:
    """A DataFrame input, kept once by content as Parquet."""
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    data = buffer.getvalue()
    path = _store() / "frames" / f"{hashlib.sha256(data).hexdigest()[:24]}.parquet"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path


def _source(text: str) -> Path:
    """The step's source folder: the script and the runner's entry, once per content."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    folder = _store() / "scripts" / digest
    if not (folder / ENTRY).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "script.py").write_text(text)
        (folder / ENTRY).write_text(STUB)
    return folder


def _store() -> Path:
    return fitdock_home() / "pipelines" / "cache"
