"""What a pipeline submission would do now, step by step, running and writing nothing
(``fitdock pipeline run --dry-run``): the same keys and cache lookups as the scheduler."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock.errors import FitdockError
from fitdock.pipelines import reuse
from fitdock.pipelines.build import Builds
from fitdock.pipelines.function import RUNNER, FunctionStep
from fitdock.pipelines.graph import dependencies
from fitdock.pipelines.record import PipelineRecord, StepState
from fitdock.pipelines.scheduler import Scheduler
from fitdock.pipelines.steps import Step
from fitdock.runs.status import RunStatus
from fitdock.runs.store import SupervisorLock
from fitdock.shared import now_iso

if TYPE_CHECKING:
    from fitdock.pipelines.pipeline import Pipeline


def preview(
    pipeline: Pipeline,
    parameters: dict[str, Any] | None = None,
    *,
    regenerate_outputs: bool = False,
    force: tuple[str, ...] = (),
) -> dict[str, str]:
    """What a submission would do now, step by step, running and writing nothing:
    "reused from <run> (key k)", "ran: <what changed>" (as ``explain`` says it), or that
    it waits for a step that would run first (its inputs are not known before)."""
    pipeline.validate(parameters)
    values = dict(parameters or {})
    options = {
        "continue_on_step_failure": False,
        "regenerate_outputs": regenerate_outputs,
        "max_concurrency": None,
        "force": list(force),
    }
    record = PipelineRecord(
        id="preview", name=pipeline.name, created_at=now_iso(), options=options,
        parameters={p.name: values.get(p.name, p.default_value) for p in pipeline.all_parameters()},
        steps={s.name: StepState(name=s.name, kind=s.kind) for s in pipeline.steps},
        order=[s.name for s in pipeline.steps],
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fitdock-preview-") as stand_in:
        (Path(stand_in) / RUNNER).touch()  # what a function step's build folder would hold
        functions = [s.name for s in pipeline.steps if isinstance(s, FunctionStep)]
        builds = Builds(Path.cwd(), dict.fromkeys(functions, Path(stand_in)), Path.cwd())
        scheduler = Scheduler(pipeline, record, SupervisorLock(Path("/dev/null")), builds)
        said: dict[str, str] = {}
        for step in pipeline.steps:
            waits = [d.name for d in dependencies(step) if not record.steps[d.name].reused]
            if not step.runs_job:
                after = f" after {', '.join(waits)}" if waits else ""
                said[step.name] = f"decided when reached{after} ({step.kind} step)"
            elif waits:
                said[step.name] = (
                    f"runs: after {', '.join(waits)} (its inputs are not known before)"
                )
            else:
                said[step.name] = decide(scheduler, step)
    return said


def decide(scheduler: Scheduler, step: Step) -> str:
    """Whether ``step`` would be reused now, and why (for ``preview``): its key and
    cache lookup as ``_start`` makes them, with nothing submitted."""
    state = scheduler.record.steps[step.name]
    own = {data.name: f"<{data.name} of the new run>" for data in step.outputs}
    try:
        spec = step.job_spec(lambda v: scheduler.resolve(v, own), scheduler._context(step.name))
        parts = scheduler.key_parts(step, spec)
    except (FitdockError, OSError) as exc:
        return f"fails: {exc}"
    key = reuse.key_of(parts)
    hit = reuse.lookup(key) if step.allow_reuse and step.name not in scheduler.forced else None
    if hit is None:
        return (
            "runs: forced"
            if step.name in scheduler.forced
            else reuse.explain(step.name, key, parts).replace("ran:", "runs:", 1)
        )
    state.reused, state.run_id, state.outputs = True, hit.run_id, hit.outputs
    state.output_hashes, state.status = hit.output_hashes, RunStatus.COMPLETED
    return f"reused from {hit.run_id} (key {key[:12]})"
