"""``PipelineRun``: a handle on one run of a pipeline (Azure's names): its status, its
steps (each an ordinary ``Run``), their outputs, and why each step ran or was reused."""

from __future__ import annotations

import builtins
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock.errors import RunFailedError, StepResultError
from fitdock.execution.run import Run
from fitdock.pipelines import record as records
from fitdock.pipelines.record import PipelineRecord, StepState
from fitdock.runs.status import RunStatus
from fitdock.runs.store import SupervisorLock
from fitdock.shared import now_iso

if TYPE_CHECKING:
    from fitdock.pipelines.scheduler import Scheduler

POLL_SECONDS = 0.1
LOST = "lost scheduler: the process that ran this pipeline died before it ended"


class StepRun(Run):
    """A step's run: an ordinary ``Run`` (logs, metrics, files) plus the step's ``name``,
    whether it was ``reused``, and ``reused_from`` (the run whose results it took)."""

    def __init__(self, state: StepState) -> None:
        assert state.run_id is not None
        super().__init__(state.run_id)
        self.name = state.name
        self.reused = state.reused
        self.reused_from = state.run_id if state.reused else None
        self.step_status = state.status

    def __repr__(self) -> str:
        how = f", reused_from={self.reused_from!r}" if self.reused else ""
        return f"StepRun(name={self.name!r}, id={self.id!r}{how})"


class PipelineRun:
    def __init__(self, run_id: str, *, scheduler: Scheduler | None = None) -> None:
        self.id = run_id
        self._scheduler = scheduler
        records.read(run_id)  # RunNotFoundError for an unknown id

    @classmethod
    def list(cls) -> builtins.list[PipelineRun]:
        return [cls(run_id) for run_id in records.list_ids()]

    @property
    def record(self) -> PipelineRecord:
        """``pipeline.json``; a live-looking run whose scheduler died reads as Failed."""
        record = records.read(self.id)
        if record.status.is_terminal or self._scheduler is not None:
            return record
        with SupervisorLock(records.folder(self.id) / records.LOCK, blocking=False) as held:
            if held:  # nobody schedules it any more
                record = records.read(self.id)
                if not record.status.is_terminal:
                    record.status, record.ended_at = RunStatus.FAILED, now_iso()
                    record.error = {"reason": "lost_scheduler", "message": LOST}
                    records.write(record)
        return record

    @property
    def status(self) -> RunStatus:
        return self.record.status

    def get_status(self) -> str:
        """Azure's status string."""
        return self.status.value

    @property
    def error(self) -> dict[str, Any] | None:
        return self.record.error

    def wait_for_completion(
        self, show_output: bool = True, raise_on_error: bool = True
    ) -> PipelineRecord:
        """Block until every step has ended; with ``show_output``, print each step's state
        as it changes. Raises ``RunFailedError`` for a pipeline that did not complete
        unless ``raise_on_error=False``. Ctrl-C cancels a pipeline this process runs."""
        seen: dict[str, tuple[RunStatus, str | None]] = {}
        try:
            while True:
                record = self.record
                if show_output:
                    self._show(record, seen)
                if record.status.is_terminal:
                    break
                if self._scheduler is not None:
                    self._scheduler.done.wait(POLL_SECONDS)
                else:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.cancel()
            raise
        if show_output:
            print(f"fitdock: pipeline {self.id}: {record.status.value}", flush=True)
        if raise_on_error and record.status is not RunStatus.COMPLETED:
            raise RunFailedError(self.id, record.status, record.error)
        return record

    def _show(self, record: PipelineRecord, seen: dict[str, tuple[RunStatus, str | None]]) -> None:
        for state in record.ordered():
            name = state.name
            now = (state.status, state.explain)
            if state.status is not RunStatus.NOT_STARTED and seen.get(name) != now:
                told = name in seen and seen[name][1] == state.explain  # said once is enough
                seen[name] = now
                why = f" ({state.explain})" if state.explain and not told else ""
                print(f"fitdock: step {name}: {state.status.value}{why}", flush=True)

    def get_steps(self) -> builtins.list[StepRun]:
        """The steps that ran or were reused, each as its run."""
        return [StepRun(state) for state in self.record.ordered() if state.run_id]

    def find_step_run(self, name: str) -> builtins.list[StepRun]:
        """Azure's shape: a list (empty when no step of that name has a run)."""
        state = self.record.steps.get(name)
        return [StepRun(state)] if state is not None and state.run_id else []

    def get_output_data(self, name: str) -> Path:
        """The local path of a ``PipelineData`` (of the run that produced or reused it)."""
        for state in self.record.ordered():
            if name in state.outputs:
                return Path(state.outputs[name])
        raise KeyError(f"pipeline run {self.id} has no output {name!r}")

    def cancel(self) -> None:
        """Stop every running step (SIGTERM, grace, SIGKILL); start nothing new."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            return
        if self.record.status.is_terminal:
            return
        (records.folder(self.id) / records.CANCEL).touch()  # the scheduler, wherever it is
        for step in self.get_steps():
            if not step.reused and not step.status.is_terminal:
                step.cancel()

    # ------------------------------------------------------------------ SageMaker's verbs
    def wait(self, delay: float = POLL_SECONDS, max_attempts: int | None = None) -> None:
        """Block until the pipeline has ended (SageMaker's name); raises ``RunFailedError``
        when it did not complete."""
        self.wait_for_completion(show_output=False)

    def describe(self) -> dict[str, Any]:
        record = self.record
        return {
            "PipelineExecutionArn": record.id,
            "PipelineName": record.name,
            "PipelineExecutionStatus": record.status.value,
            "CreationTime": record.created_at,
            "LastModifiedTime": record.ended_at or record.created_at,
            "FailureReason": (record.error or {}).get("message"),
            "Parameters": record.parameters,
        }

    def list_steps(self) -> builtins.list[dict[str, Any]]:
        """Each step's state, newest first (SageMaker's order)."""
        steps = []
        for state in reversed(self.record.ordered()):
            entry: dict[str, Any] = {
                "StepName": state.name,
                "StepType": state.kind,
                "StepStatus": state.status.value,
                "StartTime": state.started_at,
                "EndTime": state.ended_at,
                "RunId": state.run_id,
                "Reused": state.reused,
            }
            if state.error:
                entry["FailureReason"] = state.error.get("message")
            if state.outcome is not None:
                entry["Outcome"] = state.outcome
            steps.append(entry)
        return steps

    def result(self, step_name: str) -> Any:
        """A ``@step`` function's return value, verified then unpickled; an error naming
        the step's state when it has none."""
        from fitdock.pipelines.results import missing_result, value

        state = self.record.steps.get(step_name)
        if state is None:
            raise StepResultError(
                f"pipeline run {self.id} has no step {step_name!r} (steps: "
                f"{', '.join(self.record.order)})",
                step=step_name,
                status="unknown",
            )
        why = missing_result(state)
        if why is not None:
            raise StepResultError(why, step=step_name, status=state.status.value)
        return value(Path(state.outputs["results"]))

    def explain(self, step: str | None = None) -> str:
        """For each step (or one): "reused from <run> (key k)" or "ran: <what changed>"."""
        states = self.record.steps
        chosen = [states[step]] if step is not None else self.record.ordered()
        lines = []
        for state in chosen:
            reason = state.explain or state.status.value
            lines.append(f"{state.name}: {reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PipelineRun(id={self.id!r}, status={self.status.value})"
