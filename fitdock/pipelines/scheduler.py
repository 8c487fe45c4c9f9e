"""The pipeline scheduler: an event loop over ready steps, in a thread of the process that
submitted the pipeline.

It only decides what to submit when: each step that is not reused becomes one ordinary
fitdock run through ``execution.submit`` (so every target works, with all of its
supervision), and a step starts the moment the last step it depends on has completed,
up to ``max_concurrency`` steps at once (steps on Slurm do not count: Slurm queues them).
A failed step skips what depends on it; without ``continue_on_step_failure`` nothing new
starts and the running steps are canceled. Every state change is written to
``pipeline.json`` atomically, so a crash loses at most the steps in flight, and
submitting the same pipeline again reuses every step that completed.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock.errors import FitdockError
from fitdock.execution import tracking
from fitdock.execution.run import Run
from fitdock.execution.submit import submit
from fitdock.jobside.stepfn import RESULTS
from fitdock.pipelines import branching, build, reuse
from fitdock.pipelines import record as records
from fitdock.pipelines.control import Decision
from fitdock.pipelines.function import FunctionStep
from fitdock.pipelines.graph import dependencies
from fitdock.pipelines.keys import Values
from fitdock.pipelines.record import PipelineRecord, StepState
from fitdock.pipelines.run import PipelineRun
from fitdock.pipelines.script_step import ExecutePythonScriptStep
from fitdock.pipelines.steps import PythonScriptStep, StepContext
from fitdock.runs.contenthash import hash_path
from fitdock.runs.status import RunStatus
from fitdock.runs.store import SupervisorLock, new_run_id, runs_root
from fitdock.shared import now_iso, pause_at
from fitdock.specs.compute import Slurm
from fitdock.specs.job import JobSpec

if TYPE_CHECKING:
    from fitdock.pipelines.pipeline import Pipeline

IDLE_SECONDS = 0.5  # the longest the loop sleeps without news (a step's end wakes it)


def start(
    pipeline: Pipeline,
    *,
    experiment_name: str | None,
    parameters: dict[str, Any],
    continue_on_step_failure: bool,
    regenerate_outputs: bool,
    max_concurrency: int | None,
    force: list[str],
) -> PipelineRun:
    """Record the pipeline run, start its scheduler thread, return its handle."""
    run_id = new_run_id(_safe(pipeline.name))
    steps = {
        step.name: StepState(
            name=step.name,
            kind=step.kind,
            depends_on=[d.name for d in dependencies(step)],
            branches=step.branch_names(),
        )
        for step in pipeline.steps
    }
    options = {
        "continue_on_step_failure": continue_on_step_failure,
        "regenerate_outputs": regenerate_outputs,
        "max_concurrency": max_concurrency,
        "force": force,
    }
    values = dict(parameters)  # checked, defaults in (Pipeline.parameter_values)
    record = PipelineRecord(
        id=run_id, name=pipeline.name, experiment_name=experiment_name,
        description=pipeline.description, created_at=now_iso(), parameters=values,
        options=options, steps=steps, order=list(steps),
    )  # fmt: skip
    builds = build.prepare(
        pipeline.steps, pipeline.name, values
    )  # before any record: a payload error leaves nothing
    records.write(record)
    lock = SupervisorLock(records.folder(run_id) / records.LOCK)
    lock.acquire()
    scheduler = Scheduler(pipeline, record, lock, builds)
    scheduler.tracking = tracking.pipeline_parent(run_id, experiment_name or pipeline.name, values)
    handle = PipelineRun(run_id, scheduler=scheduler)
    threading.Thread(target=scheduler.run, name=f"fitdock-pipeline-{run_id}", daemon=False).start()
    return handle


class Scheduler:
    def __init__(
        self,
        pipeline: Pipeline,
        record: PipelineRecord,
        lock: SupervisorLock,
        builds: build.Builds | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.record = record
        self.lock = lock
        self.builds = builds or build.Builds(None, {})
        self.steps = {step.name: step for step in pipeline.steps}
        self.runs: dict[str, Run] = {}
        self.parts: dict[str, dict[str, Any]] = {}
        self.values = Values(record, self.builds.cwd or Path.cwd())
        self.results: dict[str, Path] = {}  # function step -> where its results go
        self.cancel_requested = threading.Event()
        self.done = threading.Event()
        self.wake = threading.Event()  # set when a step's run ends, or on cancel
        options = record.options
        self.limit = options["max_concurrency"] or os.cpu_count() or 1
        names = set(self.steps) if options["regenerate_outputs"] else set(options["force"])
        self.forced = self._with_dependants(names)
        self.stopping = False
        self.tracking: tracking.ParentRun | None = None  # the MLflow parent of the steps' runs

    def cancel(self) -> None:
        self.cancel_requested.set()
        self.wake.set()

    def _canceled(self) -> bool:
        """Asked here, or from another process (the cancel file, seen within a second)."""
        marker = records.folder(self.record.id) / records.CANCEL
        if not self.cancel_requested.is_set() and marker.exists():
            self.cancel_requested.set()
        return self.cancel_requested.is_set()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        try:
            while True:
                self.wake.clear()  # before looking: an end seen later wakes the wait below
                if self._canceled() and not self.stopping:
                    self._stop(RunStatus.CANCELED)
                while self._collect() | self._start_ready():
                    pass  # a step that ended or was reused may let others start at once
                if not self.runs and not self._startable():
                    break
                self.wake.wait(IDLE_SECONDS)
            self._finish()
        except BaseException as exc:
            self.record.status = RunStatus.FAILED
            self.record.error = {"reason": "scheduler_error", "message": repr(exc)}
            self.record.ended_at = now_iso()
            self._save()
            raise
        finally:
            if self.tracking is not None:
                self.tracking.finish(self.record.status)
            self.lock.release()
            self.done.set()

    def _startable(self) -> list[str]:
        if self.stopping:
            return []
        return [
            state.name
            for state in self.record.ordered()
            if state.status is RunStatus.NOT_STARTED and self._satisfied(state.name)
        ]

    def _satisfied(self, name: str) -> bool:
        return branching.satisfied(self.record.steps, self.steps[name])

    def _start_ready(self) -> bool:
        """Start (or reuse) what can start now; True when something did."""
        started = False
        for name in self._startable():
            if self._busy() >= self.limit and not self._on_slurm(name):
                break
            self._start(name)
            started = True
        return started

    def _busy(self) -> int:
        return sum(1 for name in self.runs if not self._on_slurm(name))

    def _on_slurm(self, name: str) -> bool:
        step = self.steps[name]
        target = step.compute_target
        if isinstance(step, (PythonScriptStep, ExecutePythonScriptStep)):
            target = target or step.runconfig.target
        return isinstance(target, Slurm) or target == "slurm"

    # ------------------------------------------------------------------ one step
    def _start(self, name: str) -> None:
        step, state = self.steps[name], self.record.steps[name]
        if not step.runs_job:
            self._decide(name)
            return
        run_id = new_run_id(_safe(name))
        own = {
            data.name: str(runs_root() / run_id / "outputs" / data.name) for data in step.outputs
        }
        try:
            spec = step.job_spec(lambda value: self.resolve(value, own), self._context(name))
            if isinstance(step, FunctionStep):
                same_python(spec)
            parts = self.key_parts(step, spec)
        except (FitdockError, OSError) as exc:
            self._ended(name, RunStatus.FAILED, {"reason": "step_spec", "message": str(exc)})
            return
        key = reuse.key_of(parts)
        state.key, state.started_at = key, now_iso()
        max_age = _max_age(step)
        hit = reuse.lookup(key, max_age) if step.allow_reuse and name not in self.forced else None
        if hit is not None:
            state.run_id, state.reused, state.outputs = hit.run_id, True, hit.outputs
            state.output_hashes = hit.output_hashes
            state.explain = f"reused from {hit.run_id} (key {key[:12]})"
            reuse.remember(name, key, parts)
            pause_at("pipeline_reuse")  # a test hook (fitdock.shared.pause_at); inert otherwise
            self._ended(name, RunStatus.COMPLETED, None)
            return
        state.explain = (
            "ran: forced"
            if name in self.forced
            else reuse.explain(name, key, parts)
            if step.allow_reuse
            else f"ran: reuse is off ({step.reuse_switch} turns it on)"
        )
        folders = tuple(data.name for data in step.outputs if data.is_directory)
        pause_at("pipeline_scheduling")
        try:
            self.runs[name] = submit(
                spec, wait=False, run_id=run_id, parent_id=self.record.id, output_folders=folders
            )
        except FitdockError as exc:
            self._ended(name, RunStatus.FAILED, {"reason": "submit", "message": str(exc)})
            return
        self.parts[name] = parts
        if isinstance(step, FunctionStep):
            self.results[name] = build.results_folder(self.pipeline.name, self.record.id, name)
        state.run_id, state.outputs, state.status = run_id, own, RunStatus.RUNNING
        self._notify_on_end(self.runs[name])
        self._save()

    def _notify_on_end(self, run: Run) -> None:
        """Wake the loop the moment this step's run ends (no polling delay between steps)."""
        supervisor = run._supervisor
        if supervisor is None:  # not supervised here: the loop's idle wake-ups see its end
            return

        def watch() -> None:
            supervisor.done.wait()
            self.wake.set()

        threading.Thread(target=watch, name=f"fitdock-step-{run.id}", daemon=True).start()

    def resolve(self, value: Any, own: dict[str, str]) -> Any:
        return self.values.resolve(value, own)

    def key_parts(self, step: Any, spec: JobSpec) -> dict[str, Any]:
        return self.values.key_parts(step, spec)

    def _context(self, name: str) -> StepContext | None:
        """A function step's build folder, and where its references and data are."""
        step = self.steps[name]
        if not isinstance(step, FunctionStep):
            return None
        refs = {r.step.name: str(self.values.results_of(r.step.name)) for r in step.references()}
        data = {d.name: str(self.resolve(d, {})) for d in step.reads()}
        folder = self.builds.folders.get(name, Path("<build>"))
        return build.context(folder, self.builds.space or Path("<workspace>"), refs, data)

    def _decide(self, name: str) -> None:
        """A condition or a fail step: decided here, with no run."""
        state = self.record.steps[name]
        state.started_at = now_iso()
        try:
            decision: Decision = self.steps[name].decide(self.values.value_of)  # type: ignore[attr-defined]
        except FitdockError as exc:
            self._ended(name, RunStatus.FAILED, {"reason": "condition", "message": str(exc)})
            return
        state.explain, state.outcome = decision.explain, decision.outcome
        for skipped in decision.skip:
            if self.record.steps[skipped.name].status is RunStatus.NOT_STARTED:
                self.record.steps[skipped.name].status = RunStatus.SKIPPED
        branching.skip_unreachable(self.record.steps, self.steps)
        self._ended(name, decision.status, decision.error)

    def _collect(self) -> bool:
        """Take in the steps whose runs have ended; True when one had."""
        ended = False
        for name, run in list(self.runs.items()):
            supervisor = run._supervisor
            if supervisor is not None and not supervisor.done.is_set():
                continue
            del self.runs[name]
            ended = True
            status = run.status
            if status is RunStatus.COMPLETED:
                self._completed(name, run)
            else:
                self._ended(name, status, run.error)
        return ended

    def _completed(self, name: str, run: Run) -> None:
        state = self.record.steps[name]
        if name in self.results and not self._take_results(name, run):
            return
        hashes = {}
        for data_name, path in state.outputs.items():
            if not Path(path).exists():
                message = f"the step completed but did not write its output {data_name!r} ({path})"
                self._ended(
                    name, RunStatus.FAILED, {"reason": "missing_output", "message": message}
                )
                return
            hashes[data_name] = hash_path(Path(path))
        state.output_hashes = hashes
        if state.key is not None:
            reuse.store(name, state.key, self.parts.pop(name), run.id, state.outputs, hashes)
        self._ended(name, RunStatus.COMPLETED, None)
        pause_at("pipeline_between_steps")

    def _take_results(self, name: str, run: Run) -> bool:
        """Move a function step's results from its run to the execution's folder."""
        made, target = run.output_dir / RESULTS, self.results.pop(name)
        if not (made / "results").is_file():
            message = "the function step completed but stored no result"
            self._ended(name, RunStatus.FAILED, {"reason": "missing_output", "message": message})
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(made, target)
        self.record.steps[name].outputs = {"results": str(target)}
        return True

    def _ended(self, name: str, status: RunStatus, error: dict[str, Any] | None) -> None:
        state = self.record.steps[name]
        state.status, state.ended_at, state.error = status, now_iso(), error
        if status is not RunStatus.COMPLETED:
            for dependant in self._with_dependants({name}) - {name}:
                if self.record.steps[dependant].status is RunStatus.NOT_STARTED:
                    self.record.steps[dependant].status = RunStatus.SKIPPED
            if not self.record.options["continue_on_step_failure"] and not self.stopping:
                self._stop(RunStatus.SKIPPED)
        self._save()

    def _stop(self, unstarted: RunStatus) -> None:
        """Start nothing more; cancel what runs (SIGTERM, grace, SIGKILL)."""
        self.stopping = True
        for state in self.record.steps.values():
            if state.status is RunStatus.NOT_STARTED:
                state.status = unstarted
        for run in self.runs.values():
            run.cancel()
        self._save()

    def _finish(self) -> None:
        states = self.record.steps.values()
        failed = [s for s in states if s.status in (RunStatus.FAILED, RunStatus.TIMED_OUT)]
        if failed:
            self.record.status = RunStatus.FAILED
            first = min(failed, key=lambda s: s.ended_at or "")
            message = (first.error or {}).get("message", "")
            if (first.error or {}).get("reason") != "fail_step":
                message = f"step {first.name!r} failed: {message}"
            self.record.error = {"step": first.name, "message": message}
        elif self._canceled() or any(s.status is RunStatus.CANCELED for s in states):
            self.record.status = RunStatus.CANCELED
        else:
            self.record.status = RunStatus.COMPLETED
        self.record.ended_at = now_iso()
        self._save()

    def _with_dependants(self, names: set[str]) -> set[str]:
        found = set(names)
        changed = True
        while changed:
            changed = False
            for step in self.pipeline.steps:
                if step.name not in found and any(d.name in found for d in dependencies(step)):
                    found.add(step.name)
                    changed = True
        return found

    def _save(self) -> None:
        records.write(self.record, fsync=self.record.status.is_terminal)


def same_python(spec: JobSpec) -> None:
    """Refuse a function step whose environment names another Python than this one
    (cloudpickle payloads cannot cross versions); an image's Python, not known here, is
    checked by the step itself before it unpickles anything."""
    wanted = spec.environment.python.python_version
    ours = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if wanted and ".".join(wanted.split(".")[:2]) != ours:
        raise FitdockError(
            f"the step's environment has Python {wanted} but the pipeline is submitted "
            f"with Python {ours}: cloudpickle payloads cannot cross Python versions"
        )


def _max_age(step: Any) -> Any:
    config = getattr(getattr(step, "options", None), "cache_config", None)
    return config.max_age if config is not None else None


def _safe(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return cleaned.strip("._") or "pipeline"
