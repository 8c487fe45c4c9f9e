"""Which steps may start, and which a condition's choice skips (pure functions over the
steps' states). A step skipped by a condition skips each step that needs its results,
and each step that depends on skipped steps only; a step that merely runs after it
(``add_depends_on``) runs."""

from __future__ import annotations

from fitdock.pipelines.graph import data_dependencies
from fitdock.pipelines.record import StepState
from fitdock.pipelines.steps import Step
from fitdock.runs.status import RunStatus


def satisfied(states: dict[str, StepState], step: Step) -> bool:
    """Every dependency completed, or was skipped while ``step`` does not need its
    results (an order-only dependency)."""
    needed = {other.name for other in data_dependencies(step)}
    return all(
        states[d].status is RunStatus.COMPLETED
        or (states[d].status is RunStatus.SKIPPED and d not in needed)
        for d in states[step.name].depends_on
    )


def skip_unreachable(states: dict[str, StepState], steps: dict[str, Step]) -> None:
    """Mark Skipped every step not started that needs a skipped step's results or
    depends on skipped steps only, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for state in states.values():
            if state.status is not RunStatus.NOT_STARTED or not state.depends_on:
                continue
            needed = {other.name for other in data_dependencies(steps[state.name])}
            skipped = [d for d in state.depends_on if states[d].status is RunStatus.SKIPPED]
            if set(skipped) & needed or len(skipped) == len(state.depends_on):
                state.status, changed = RunStatus.SKIPPED, True
