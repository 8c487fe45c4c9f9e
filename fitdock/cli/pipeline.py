"""``fitdock pipeline run|list|show|explain|result|cancel|logs``: pipelines of steps.

``run`` loads a Python file, takes the ``Pipeline`` object it defines, submits it and waits;
``--dry-run`` prints the DAG and what would run, running nothing. The other actions read
``$FITDOCK_HOME/pipelines/<id>/pipeline.json`` through ``PipelineRun``. Help texts:
:mod:`~fitdock.cli.pipeline_help`; drawing: :mod:`~fitdock.cli.pipeline_show`; ``result``:
:mod:`~fitdock.cli.pipeline_result`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import sys
import textwrap
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock.cli.pipeline_help import ACTIONS, PIPELINE_EPILOG, PIPELINE_HELP, RUN_EPILOG, RUN_HELP
from fitdock.cli.pipeline_result import print_result
from fitdock.cli.pipeline_show import dot, draw, ordered, when
from fitdock.cli.table import columns
from fitdock.errors import FitdockError

if TYPE_CHECKING:
    from fitdock.pipelines import Pipeline, PipelineRun


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock pipeline`` and its actions."""
    group = subparsers.add_parser(
        "pipeline", help="run and inspect pipelines", description=PIPELINE_HELP,
        epilog=PIPELINE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = group.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    _add_run(actions)
    handlers = {
        "list": cmd_list, "show": cmd_show, "explain": cmd_explain, "result": cmd_result,
        "cancel": cmd_cancel, "logs": cmd_logs,
    }  # fmt: skip
    for name, (text, description, example) in ACTIONS.items():
        action = actions.add_parser(
            name, help=text, description=textwrap.fill(description, 88),
            epilog=f"example:\n  {example}\n", formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        action.set_defaults(func=handlers[name])
        if name == "list":
            action.add_argument("--limit", type=int, default=20, help="show the newest N (20)")
            continue
        action.add_argument("run_id", help="a pipeline run id (`fitdock pipeline list`)")
        if name in ("explain", "logs"):
            action.add_argument("step", nargs="?", help="only this step")
        if name == "result":
            action.add_argument("step", help="a @step function's step name")
        if name == "show":
            action.add_argument(
                "--format", choices=["text", "dot"], default="text",
                help="text: the DAG drawn here (default); dot: Graphviz DOT",
            )  # fmt: skip


def _add_run(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = actions.add_parser(
        "run", help="run the Pipeline a Python file defines", description=RUN_HELP,
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    run.add_argument("target", metavar="FILE.py[:NAME]", help="a file defining a Pipeline")
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a pipeline parameter (repeatable); integers, floats and true/false (any case) "
        "become numbers and booleans, anything else stays a string",
    )  # fmt: skip
    run.add_argument(
        "--regenerate-outputs", action="store_true", help="rerun every step; reuse nothing"
    )
    run.add_argument(
        "--force", action="append", default=[], metavar="STEP",
        help="rerun STEP and every step that depends on it (repeatable)",
    )  # fmt: skip
    run.add_argument(
        "--continue-on-step-failure", action="store_true",
        help="after a failed step, still finish the branches that do not depend on it",
    )  # fmt: skip
    run.add_argument(
        "--max-concurrency", type=int, metavar="N", help="steps at once (default: CPUs)"
    )
    run.add_argument("--experiment", metavar="NAME", help="the experiment name to record")
    run.add_argument(
        "--dry-run", action="store_true",
        help="print the DAG and, for each step, whether it would be reused now (its key "
        "and the reuse cache) or run and why; run nothing",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)


# ---------------------------------------------------------------------------------- run
def cmd_run(ns: argparse.Namespace) -> int:
    """Submit the file's pipeline and wait (``--dry-run``: print what would run)."""
    from fitdock.runs.status import RunStatus

    if ns.max_concurrency is not None and ns.max_concurrency < 1:
        raise FitdockError(f"--max-concurrency must be at least 1, not {ns.max_concurrency}")
    parameters = parse_params(ns.param)
    label, pipeline = load_pipeline(ns.target)
    # From the file's folder, as it was loaded: @step functions take it as their workspace.
    with _inside(Path(_split_target(ns.target)[0]).expanduser().resolve().parent):
        if ns.dry_run:
            print(dry_run_text(label, pipeline, parameters, ns.force, ns.regenerate_outputs))
            return 0
        run = pipeline.submit(
            experiment_name=ns.experiment, pipeline_parameters=parameters,
            continue_on_step_failure=ns.continue_on_step_failure,
            regenerate_outputs=ns.regenerate_outputs, max_concurrency=ns.max_concurrency,
            force=ns.force,
        )  # fmt: skip
    print(f"pipeline run {run.id} ({label})", flush=True)
    record = run.wait_for_completion(show_output=True, raise_on_error=False)
    print(draw(record))
    return 0 if record.status is RunStatus.COMPLETED else 1


def load_pipeline(target: str) -> tuple[str, Pipeline]:
    """``FILE.py[:NAME]``: a label and the ``Pipeline`` named NAME, or the only one the file
    defines. The file runs as a module (not as ``__main__``) from its folder (relative paths
    in it are from there), with that folder on sys.path; a
    file that submits a pipeline itself (``Experiment(ws, name).submit(pipeline)`` at the
    top level, as Azure's notebooks do) stops there, and that pipeline is the one."""
    from fitdock.pipelines import Pipeline

    text, name = _split_target(target)
    if not Path(text).expanduser().is_file():
        raise FitdockError(f"pipeline file {text} not found")
    path = Path(text).expanduser().resolve()
    namespace = _run_file(path)
    found: dict[int, list[str]] = {}
    for key, value in namespace.items():
        if isinstance(value, Pipeline) and not key.startswith("__"):
            found.setdefault(id(value), []).append(key)
    names = [keys[0] for keys in found.values()]
    if name is not None:
        chosen = namespace.get(name)
        if not isinstance(chosen, Pipeline):
            known = f"; it defines {', '.join(names)}" if names else ""
            raise FitdockError(f"{path} defines no Pipeline named {name!r}{known}")
        return f"{path.name}:{name}", chosen
    if not names:
        raise FitdockError(
            f"{path} defines no Pipeline: bind one to a module-level name "
            "(pipeline = Pipeline(ws, steps=[...]))"
        )
    if len(names) > 1:
        raise FitdockError(
            f"{path} defines {len(names)} pipelines ({', '.join(names)}): "
            f"choose one with {path}:NAME"
        )
    return f"{path.name}:{names[0]}", namespace[names[0]]


def _split_target(target: str) -> tuple[str, str | None]:
    head, colon, tail = target.rpartition(":")
    if colon and head and tail.isidentifier():
        return head, tail
    return target, None


class _Submitted(Exception):
    """Stops a file that submits its pipeline itself (Azure's notebooks do, at the top
    level): the pipeline it submits is the one to run, with the command's options."""

    def __init__(self, pipeline: Any) -> None:
        super().__init__("submitted")
        self.pipeline = pipeline


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _run_file(path: Path) -> dict[str, Any]:
    from fitdock.pipelines import Pipeline

    def capture(pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        raise _Submitted(pipeline)

    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    submit = Pipeline.submit
    Pipeline.submit = capture  # type: ignore[method-assign,assignment]
    here = os.getcwd()
    os.chdir(folder)  # relative paths in the file (source_directory=...) are from its folder
    try:
        return runpy.run_path(str(path), run_name="__fitdock_pipeline__")
    except _Submitted as submitted:
        return {"submitted_pipeline": submitted.pipeline}
    except FitdockError:
        raise
    except Exception as exc:
        traceback.print_exc()
        raise FitdockError(f"loading {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        os.chdir(here)
        Pipeline.submit = submit  # type: ignore[method-assign]
        if folder in sys.path:
            sys.path.remove(folder)


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs: integers, floats and true/false become their types."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name:
            raise FitdockError(f"--param {pair!r}: give NAME=VALUE")
        values[name] = parse_value(text)
    return values


def parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


# ------------------------------------------------------------------------------ dry run
def dry_run_text(
    label: str,
    pipeline: Pipeline,
    parameters: Mapping[str, Any],
    force: Sequence[str],
    regenerate: bool,
) -> str:
    """The DAG (each step, its kind and script, what it depends on) and what a submission
    would do now, from the engine's ``preview``: validated, keyed, nothing run or written."""
    from fitdock.pipelines.graph import dependencies
    from fitdock.pipelines.preview import preview

    pipeline.validate(parameters)
    unknown = sorted(set(force) - {step.name for step in pipeline.steps})
    if unknown:
        raise FitdockError(f"--force names no step of {label}: {', '.join(unknown)}")
    said = preview(pipeline, dict(parameters), regenerate_outputs=regenerate, force=tuple(force))
    rows = [
        (
            step.name,
            step.kind,
            _script(step),
            ", ".join(d.name for d in dependencies(step)) or "-",
            said.get(step.name, "-"),
        )
        for step in pipeline.steps
    ]
    values = {p.name: parameters.get(p.name, p.default_value) for p in pipeline.all_parameters()}
    shown = ", ".join(f"{k}={v!r}" for k, v in values.items()) or "none"
    head = f"pipeline {label}: {len(rows)} steps, parameters {shown}; dry run, nothing runs"
    return head + "\n" + columns(("STEP", "KIND", "SCRIPT", "AFTER", "NOW"), rows)


def _script(step: Any) -> str:
    script = getattr(step, "script_name", None)
    estimator = getattr(step, "estimator", None)
    if script is None and estimator is not None:
        script = estimator.entry_script
    return str(script or "-")


# ----------------------------------------------------------------------- list and show
def cmd_list(ns: argparse.Namespace) -> int:
    from fitdock.pipelines import PipelineRun
    from fitdock.runs.status import RunStatus

    rows = []
    for run in PipelineRun.list()[-ns.limit :]:
        record = run.record
        states = record.steps.values()
        done = sum(1 for s in states if s.status is RunStatus.COMPLETED)
        reused = sum(1 for s in states if s.reused)
        steps = f"{done}/{len(states)}" + (f", {reused} reused" if reused else "")
        rows.append((run.id, record.name, record.status.value, steps, when(record.created_at)))
    print(columns(("ID", "NAME", "STATUS", "STEPS", "CREATED"), rows))
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    from fitdock.pipelines import PipelineRun

    record = PipelineRun(ns.run_id).record
    print(dot(record) if ns.format == "dot" else draw(record))
    return 0


def _open(run_id: str, step: str | None = None) -> PipelineRun:
    from fitdock.pipelines import PipelineRun

    run = PipelineRun(run_id)
    if step is not None and step not in run.record.steps:
        known = ", ".join(run.record.steps)
        raise FitdockError(f"pipeline run {run_id} has no step {step!r}; its steps: {known}")
    return run


def cmd_explain(ns: argparse.Namespace) -> int:
    print(_open(ns.run_id, ns.step).explain(ns.step))
    return 0


def cmd_result(ns: argparse.Namespace) -> int:
    return print_result(_open(ns.run_id, ns.step), ns.step)


def cmd_cancel(ns: argparse.Namespace) -> int:
    run = _open(ns.run_id)
    if run.status.is_terminal:
        print(f"pipeline run {run.id} already ended: {run.status.value}")
        return 0
    run.cancel()
    print(f"cancel requested for pipeline run {run.id}")
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    from fitdock.errors import RunNotFoundError
    from fitdock.execution.run import Run
    from fitdock.runs.follow import LogFollower

    record = _open(ns.run_id, ns.step).record
    chosen = [record.steps[ns.step]] if ns.step else ordered(record)
    for state in chosen:
        tag = f"[{state.name}]"
        if state.run_id is None:
            print(f"{tag} no run: {state.status.value}")
            continue
        if state.reused:
            print(f"{tag} reused: the logs of {state.run_id}")
        try:
            logs = Run(state.run_id).log_dir
        except RunNotFoundError:
            print(f"{tag} run {state.run_id} is gone")
            continue
        buffer = io.StringIO()
        LogFollower(logs, out=buffer).pump(final=True)
        for line in buffer.getvalue().splitlines():
            print(f"{tag} {line}")
    return 0
