"""Steps the scheduler decides itself, with no run: ``ConditionStep`` (which branch runs)
and ``FailStep`` (end the pipeline Failed with a message). SageMaker's names and meaning;
unlike SageMaker's local mode, conditions can compare step results.

Each has ``decide(value_of)``: given the values of its operands (a ``DelayedReturn``'s
JSON value, a parameter's value, a ``Join``'s text), the state it ends in, why, and
which steps it skips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fitdock.errors import SpecError
from fitdock.pipelines.conditions import Condition, Join
from fitdock.pipelines.data import PipelineParameter
from fitdock.pipelines.delayed import DelayedReturn, references
from fitdock.pipelines.steps import Step
from fitdock.runs.status import RunStatus

ValueOf = Callable[[Any], Any]


@dataclass
class Decision:
    status: RunStatus
    explain: str
    error: dict[str, Any] | None = None
    skip: list[Step] = field(default_factory=list)
    outcome: bool | None = None  # a condition's value


class _Decided(Step):
    runs_job: ClassVar[bool] = False

    def __init__(self, name: str, depends_on: Sequence[Step | DelayedReturn] | None) -> None:
        super().__init__(
            name, inputs=None, outputs=None, arguments=None, compute_target=None,
            allow_reuse=False, version=None, runconfig_pipeline_params=None,
        )  # fmt: skip
        if depends_on:
            self.add_depends_on(depends_on)

    def operands(self) -> list[Any]:
        return []

    def references(self) -> list[DelayedReturn]:
        return references(self.operands())

    def parameters(self) -> list[PipelineParameter]:
        return [value for value in self.operands() if isinstance(value, PipelineParameter)]

    def decide(self, value_of: ValueOf) -> Decision:
        raise NotImplementedError


class ConditionStep(_Decided):
    """Run ``if_steps`` when every condition holds, else ``else_steps``; the branch not
    taken, and each step that needs only it, is Skipped."""

    kind: ClassVar[str] = "condition"

    def __init__(
        self,
        name: str,
        conditions: Sequence[Condition],
        if_steps: Sequence[Step | DelayedReturn] | None = None,
        else_steps: Sequence[Step | DelayedReturn] | None = None,
        depends_on: Sequence[Step | DelayedReturn] | None = None,
    ) -> None:
        super().__init__(name, depends_on)
        if isinstance(conditions, Condition):
            conditions = [conditions]
        if not conditions or not all(isinstance(c, Condition) for c in conditions):
            raise SpecError(
                f"ConditionStep {name!r}: conditions must be a non-empty list of conditions "
                f"(ConditionEquals, ConditionGreaterThan, ...), got {conditions!r}",
                field="conditions",
            )
        self.conditions = list(conditions)
        self.if_steps = _steps(name, "if_steps", if_steps)
        self.else_steps = _steps(name, "else_steps", else_steps)
        both = [s.name for s in self.if_steps if any(s is e for e in self.else_steps)]
        if both:
            raise SpecError(
                f"ConditionStep {name!r}: {both} are in both if_steps and else_steps",
                field="if_steps",
            )
        for branch_step in [*self.if_steps, *self.else_steps]:
            branch_step.after.append(self)

    def operands(self) -> list[Any]:
        return [operand for condition in self.conditions for operand in condition.operands()]

    def branches(self) -> list[Step]:
        return [*self.if_steps, *self.else_steps]

    def branch_names(self) -> dict[str, list[str]]:
        return {"if": [s.name for s in self.if_steps], "else": [s.name for s in self.else_steps]}

    def decide(self, value_of: ValueOf) -> Decision:
        held = all(condition.evaluate(value_of) for condition in self.conditions)
        taken, skipped = ("if", self.else_steps) if held else ("else", self.if_steps)
        return Decision(
            status=RunStatus.COMPLETED,
            explain=f"conditions {'held' if held else 'did not hold'}: the {taken} branch runs",
            skip=list(skipped),
            outcome=held,
        )


class FailStep(_Decided):
    """End the pipeline Failed with ``error_message`` (a string, or a ``Join`` of values
    such as step results and parameters)."""

    kind: ClassVar[str] = "fail"

    def __init__(
        self,
        name: str,
        error_message: str | Join | None = None,
        depends_on: Sequence[Step | DelayedReturn] | None = None,
    ) -> None:
        super().__init__(name, depends_on)
        if error_message is not None and not isinstance(error_message, (str, Join)):
            raise SpecError(
                f"FailStep {name!r}: error_message must be a str or a Join, got {error_message!r}",
                field="error_message",
            )
        self.error_message = error_message

    def operands(self) -> list[Any]:
        return self.error_message.operands() if isinstance(self.error_message, Join) else []

    def decide(self, value_of: ValueOf) -> Decision:
        message = self.error_message
        text = message.resolve_with(value_of) if isinstance(message, Join) else message or ""
        return Decision(
            status=RunStatus.FAILED,
            explain="fail step reached",
            error={"reason": "fail_step", "message": text},
        )


def _steps(owner: str, what: str, items: Sequence[Any] | None) -> list[Step]:
    found: list[Step] = []
    for item in items or ():
        value = item.step if isinstance(item, DelayedReturn) else item
        if not isinstance(value, Step):
            raise SpecError(
                f"ConditionStep {owner!r}: {what} takes steps and DelayedReturns, got {item!r}",
                field=what,
            )
        found.append(value)
    return found
