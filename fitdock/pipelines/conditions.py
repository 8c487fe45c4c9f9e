"""Conditions of a pipeline (SageMaker's names): comparisons of step results, pipeline
parameters and constants, combined with ``ConditionNot`` and ``ConditionOr``; and
``Join``, a string built from such values (a FailStep's message).

Conditions are pure data. Operands are opaque here: whoever evaluates a condition
passes ``resolve`` (an operand -> its value; constants come back as themselves) and,
for its definition, ``render`` (an operand -> its JSON). ``operands()`` lists every
operand at any depth, so the caller can find the steps and parameters a condition
needs. Values of different types never compare (int and float are one type, bool is
not a number): that is a ``ConditionError``, not False."""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from fitdock.errors import ConditionError, SpecError

Resolve = Callable[[Any], Any]  # an operand -> its value
Render = Callable[[Any], Any]  # an operand -> its JSON in a definition


class Join:
    """``on.join(str(value) for value in values)``, each value resolved first; usable
    as a condition operand (it resolves to the string)."""

    def __init__(self, on: str, values: Sequence[Any]) -> None:
        if not isinstance(on, str):
            raise SpecError(f"Join: on must be a str, got {on!r}", field="on")
        if not isinstance(values, (list, tuple)):
            raise SpecError(f"Join: values must be a list, got {values!r}", field="values")
        self.on = on
        self.values = list(values)

    def operands(self) -> list[Any]:
        return _leaves(self.values)

    def resolve_with(self, resolve: Resolve) -> str:
        return self.on.join(str(_resolve(value, resolve)) for value in self.values)

    def to_definition(self, render: Render) -> dict[str, Any]:
        values = [_render(value, render) for value in self.values]
        return {"Std:Join": {"On": self.on, "Values": values}}

    def __repr__(self) -> str:
        return f"Join({self.on!r}, {self.values!r})"


def _leaves(values: Sequence[Any]) -> list[Any]:
    """The operands in ``values``, a Join's values in place of the Join."""
    found: list[Any] = []
    for value in values:
        found.extend(value.operands() if isinstance(value, Join) else [value])
    return found


def _resolve(operand: Any, resolve: Resolve) -> Any:
    return operand.resolve_with(resolve) if isinstance(operand, Join) else resolve(operand)


def _render(operand: Any, render: Render) -> Any:
    return operand.to_definition(render) if isinstance(operand, Join) else render(operand)


def _kind(value: Any) -> str:
    """The type that comparisons go by: int and float are one, bool is its own."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _check(condition: str, left: Any, right: Any, *, ordered: bool) -> None:
    """ConditionError unless ``left`` and ``right`` compare (and, if ``ordered``, order)."""
    if _kind(left) != _kind(right):
        verb, why = "compare", ""
    elif ordered and _kind(left) not in ("number", "str"):
        verb, why = "order", ": only numbers and strings have an order"
    else:
        return
    raise ConditionError(
        f"{condition}: cannot {verb} {type(left).__name__} ({left!r}) "
        f"with {type(right).__name__} ({right!r}){why}",
        condition=condition,
        values=(left, right),
    )


class Condition(ABC):
    """What every condition does; ``type_name`` is its "Type" in a definition."""

    type_name: ClassVar[str]

    @abstractmethod
    def operands(self) -> list[Any]:
        """Every operand at any depth (Join values in place of the Join), in order."""

    @abstractmethod
    def evaluate(self, resolve: Resolve) -> bool:
        """True or False, every operand resolved with ``resolve``; ConditionError if
        resolved values do not compare."""

    @abstractmethod
    def to_definition(self, render: Render) -> dict[str, Any]:
        """The condition as SageMaker-like JSON, operands rendered with ``render``."""


class _Comparison(Condition):
    """``left <op> right``."""

    ordered: ClassVar[bool] = True
    compare: ClassVar[Callable[..., Any]]  # the operator, a staticmethod

    def __init__(self, left: Any, right: Any) -> None:
        self.left = left
        self.right = right

    def operands(self) -> list[Any]:
        return _leaves([self.left, self.right])

    def evaluate(self, resolve: Resolve) -> bool:
        left, right = _resolve(self.left, resolve), _resolve(self.right, resolve)
        _check(type(self).__name__, left, right, ordered=self.ordered)
        return bool(self.compare(left, right))

    def to_definition(self, render: Render) -> dict[str, Any]:
        return {
            "Type": self.type_name,
            "LeftValue": _render(self.left, render),
            "RightValue": _render(self.right, render),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.left!r}, {self.right!r})"


class ConditionEquals(_Comparison):
    """``left == right``; values of any one type (dicts and lists too)."""

    type_name = "Equals"
    ordered = False
    compare = staticmethod(operator.eq)


class ConditionGreaterThan(_Comparison):
    """``left > right``; numbers or strings."""

    type_name = "GreaterThan"
    compare = staticmethod(operator.gt)


class ConditionGreaterThanOrEqualTo(_Comparison):
    """``left >= right``; numbers or strings."""

    type_name = "GreaterThanOrEqualTo"
    compare = staticmethod(operator.ge)


class ConditionLessThan(_Comparison):
    """``left < right``; numbers or strings."""

    type_name = "LessThan"
    compare = staticmethod(operator.lt)


class ConditionLessThanOrEqualTo(_Comparison):
    """``left <= right``; numbers or strings."""

    type_name = "LessThanOrEqualTo"
    compare = staticmethod(operator.le)


class ConditionIn(Condition):
    """``value`` equals one of ``in_values``; it must have the type of every one."""

    type_name = "In"

    def __init__(self, value: Any, in_values: Sequence[Any]) -> None:
        if not isinstance(in_values, (list, tuple)) or not in_values:
            raise SpecError(
                f"ConditionIn: in_values must be a non-empty list, got {in_values!r}",
                field="in_values",
            )
        self.value = value
        self.in_values = list(in_values)

    def operands(self) -> list[Any]:
        return _leaves([self.value, *self.in_values])

    def evaluate(self, resolve: Resolve) -> bool:
        query = _resolve(self.value, resolve)
        candidates = [_resolve(value, resolve) for value in self.in_values]
        for candidate in candidates:  # every one, so the order of the list never hides one
            _check("ConditionIn", query, candidate, ordered=False)
        return any(query == candidate for candidate in candidates)

    def to_definition(self, render: Render) -> dict[str, Any]:
        values = [_render(value, render) for value in self.in_values]
        return {"Type": "In", "QueryValue": _render(self.value, render), "Values": values}

    def __repr__(self) -> str:
        return f"ConditionIn({self.value!r}, {self.in_values!r})"


class ConditionNot(Condition):
    """The opposite of ``expression``."""

    type_name = "Not"

    def __init__(self, expression: Condition) -> None:
        if not isinstance(expression, Condition):
            raise SpecError(
                f"ConditionNot: expression must be a Condition, got {expression!r}",
                field="expression",
            )
        self.expression = expression

    def operands(self) -> list[Any]:
        return self.expression.operands()

    def evaluate(self, resolve: Resolve) -> bool:
        return not self.expression.evaluate(resolve)

    def to_definition(self, render: Render) -> dict[str, Any]:
        return {"Type": "Not", "Expression": self.expression.to_definition(render)}

    def __repr__(self) -> str:
        return f"ConditionNot({self.expression!r})"


class ConditionOr(Condition):
    """True if any of ``conditions`` is; all are evaluated, so none hides an error."""

    type_name = "Or"

    def __init__(self, conditions: Sequence[Condition]) -> None:
        if not isinstance(conditions, (list, tuple)) or not conditions:
            raise SpecError(
                f"ConditionOr: conditions must be a non-empty list, got {conditions!r}",
                field="conditions",
            )
        for condition in conditions:
            if not isinstance(condition, Condition):
                raise SpecError(
                    f"ConditionOr: conditions must be Conditions, got {condition!r}",
                    field="conditions",
                )
        self.conditions = list(conditions)

    def operands(self) -> list[Any]:
        return [operand for condition in self.conditions for operand in condition.operands()]

    def evaluate(self, resolve: Resolve) -> bool:
        results = [condition.evaluate(resolve) for condition in self.conditions]
        return any(results)

    def to_definition(self, render: Render) -> dict[str, Any]:
        conditions = [condition.to_definition(render) for condition in self.conditions]
        return {"Type": "Or", "Conditions": conditions}

    def __repr__(self) -> str:
        return f"ConditionOr({self.conditions!r})"
