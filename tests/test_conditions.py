"""Conditions (comparisons, In, Not, Or, Join) and typed pipeline parameters: pure
data, evaluated with a resolve function the test passes, no pipeline run."""

from __future__ import annotations

from typing import Any

import pytest

from fitdock.errors import SpecError
from fitdock.pipelines.conditions import (
    Condition,
    ConditionEquals,
    ConditionError,
    ConditionGreaterThan,
    ConditionGreaterThanOrEqualTo,
    ConditionIn,
    ConditionLessThan,
    ConditionLessThanOrEqualTo,
    ConditionNot,
    ConditionOr,
    Join,
)
from fitdock.pipelines.data import PipelineParameter
from fitdock.pipelines.parameters import (
    ParameterBoolean,
    ParameterFloat,
    ParameterInteger,
    ParameterString,
)


class Ref:
    """A stand-in for a step's future result: opaque to conditions."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Ref({self.path!r})"

    def __iter__(self) -> Any:  # like DelayedReturn: conditions must never iterate it
        raise NotImplementedError("a Ref cannot be iterated")


def resolver(values: dict[str, Any]) -> Any:
    """Refs and parameters by name from ``values``; constants as themselves."""

    def resolve(operand: Any) -> Any:
        if isinstance(operand, Ref):
            return values[operand.path]
        if isinstance(operand, PipelineParameter):
            return values.get(operand.name, operand.default_value)
        return operand

    return resolve


def render(operand: Any) -> Any:
    if isinstance(operand, Ref):
        return {"Get": operand.path}
    if isinstance(operand, PipelineParameter):
        return {"Get": f"Parameters.{operand.name}"}
    return operand


CONST = resolver({})

# ---- comparisons ----------------------------------------------------------------------

COMPARISONS = [
    # (class, left, right, expected)
    (ConditionEquals, 3, 3, True),
    (ConditionEquals, 3, 4, False),
    (ConditionEquals, "a", "a", True),
    (ConditionEquals, "a", "b", False),
    (ConditionEquals, True, True, True),
    (ConditionEquals, True, False, False),
    (ConditionEquals, {"a": [1]}, {"a": [1]}, True),
    (ConditionEquals, [1, 2], [2, 1], False),
    (ConditionEquals, None, None, True),
    (ConditionGreaterThan, 5, 3, True),
    (ConditionGreaterThan, 3, 3, False),
    (ConditionGreaterThan, "b", "a", True),
    (ConditionGreaterThanOrEqualTo, 3, 3, True),
    (ConditionGreaterThanOrEqualTo, 2, 3, False),
    (ConditionLessThan, 2, 3, True),
    (ConditionLessThan, 3, 3, False),
    (ConditionLessThanOrEqualTo, 3, 3, True),
    (ConditionLessThanOrEqualTo, 4, 3, False),
    (ConditionLessThanOrEqualTo, "a", "b", True),
]


@pytest.mark.parametrize(("cls", "left", "right", "expected"), COMPARISONS)
def test_comparison_true_and_false(cls: type, left: Any, right: Any, expected: bool) -> None:
    assert cls(left, right).evaluate(CONST) is expected


@pytest.mark.parametrize(
    ("cls", "left", "right", "expected"),
    [
        (ConditionEquals, 1, 1.0, True),
        (ConditionEquals, 1, 1.5, False),
        (ConditionGreaterThan, 0.42, 0, True),
        (ConditionGreaterThanOrEqualTo, 0.5, 1, False),
        (ConditionLessThan, 2, 2.5, True),
        (ConditionLessThanOrEqualTo, 3.0, 3, True),
    ],
)
def test_int_and_float_compare_as_numbers(cls: type, left: Any, right: Any, expected: bool) -> None:
    assert cls(left, right).evaluate(CONST) is expected


@pytest.mark.parametrize(
    ("cls", "left", "right", "message"),
    [
        (
            ConditionGreaterThanOrEqualTo,
            0.42,
            "0.5",
            "ConditionGreaterThanOrEqualTo: cannot compare float (0.42) with str ('0.5')",
        ),
        (ConditionEquals, 1, "1", "ConditionEquals: cannot compare int (1) with str ('1')"),
        (ConditionEquals, True, 1, "ConditionEquals: cannot compare bool (True) with int (1)"),
        (
            ConditionEquals,
            0.0,
            False,
            "ConditionEquals: cannot compare float (0.0) with bool (False)",
        ),
        (ConditionEquals, None, 0, "ConditionEquals: cannot compare NoneType (None) with int (0)"),
        (
            ConditionEquals,
            [1],
            {"a": 1},
            "ConditionEquals: cannot compare list ([1]) with dict ({'a': 1})",
        ),
        (ConditionGreaterThan, 2, True, "ConditionGreaterThan: cannot compare int (2) with bool"),
        (ConditionLessThan, "a", None, "ConditionLessThan: cannot compare str ('a') with NoneType"),
        (
            ConditionLessThanOrEqualTo,
            [1],
            1,
            "ConditionLessThanOrEqualTo: cannot compare list ([1]) with int (1)",
        ),
    ],
)
def test_values_of_different_types_do_not_compare(
    cls: type, left: Any, right: Any, message: str
) -> None:
    with pytest.raises(ConditionError) as caught:
        cls(left, right).evaluate(CONST)
    assert str(caught.value).startswith(message)
    assert caught.value.condition == cls.__name__
    assert caught.value.values == (left, right)
    assert isinstance(caught.value, SpecError)


@pytest.mark.parametrize(
    ("cls", "left", "right", "described"),
    [
        (ConditionGreaterThan, {"a": 1}, {"a": 2}, "dict ({'a': 1}) with dict ({'a': 2})"),
        (ConditionGreaterThanOrEqualTo, [1], [2], "list ([1]) with list ([2])"),
        (ConditionLessThan, None, None, "NoneType (None) with NoneType (None)"),
        (ConditionLessThanOrEqualTo, True, False, "bool (True) with bool (False)"),
    ],
)
def test_ordering_needs_numbers_or_strings(
    cls: type, left: Any, right: Any, described: str
) -> None:
    with pytest.raises(ConditionError) as caught:
        cls(left, right).evaluate(CONST)
    assert str(caught.value) == (
        f"{cls.__name__}: cannot order {described}: only numbers and strings have an order"
    )


def test_operands_are_resolved_before_comparing() -> None:
    accuracy = Ref("train.accuracy")
    threshold = ParameterFloat("threshold", default_value=0.5)
    condition = ConditionGreaterThanOrEqualTo(accuracy, threshold)
    assert condition.evaluate(resolver({"train.accuracy": 0.7})) is True
    assert condition.evaluate(resolver({"train.accuracy": 0.4})) is False
    assert condition.evaluate(resolver({"train.accuracy": 0.4, "threshold": 0.3})) is True
    with pytest.raises(ConditionError, match=r"cannot compare str \('0.7'\) with float"):
        condition.evaluate(resolver({"train.accuracy": "0.7"}))


# ---- In, Not, Or ----------------------------------------------------------------------


def test_in() -> None:
    assert ConditionIn("b", ["a", "b"]).evaluate(CONST) is True
    assert ConditionIn("c", ("a", "b")).evaluate(CONST) is False
    assert ConditionIn(2, [1.0, 2.0]).evaluate(CONST) is True
    assert ConditionIn(Ref("r"), [Ref("s"), 3]).evaluate(resolver({"r": 3, "s": 4})) is True


def test_in_checks_every_candidate_type() -> None:
    with pytest.raises(ConditionError) as caught:
        ConditionIn(1, [1, "1"]).evaluate(CONST)  # a match first does not hide the mismatch
    assert str(caught.value) == "ConditionIn: cannot compare int (1) with str ('1')"
    with pytest.raises(ConditionError, match=r"cannot compare bool \(True\) with int \(1\)"):
        ConditionIn(True, [1]).evaluate(CONST)


@pytest.mark.parametrize("bad", [[], (), "ab", None, {"a"}, Ref("r")])
def test_in_needs_a_non_empty_list(bad: Any) -> None:
    with pytest.raises(SpecError, match="ConditionIn: in_values must be a non-empty list") as e:
        ConditionIn(1, bad)
    assert e.value.field == "in_values"


def test_not_and_or_nest() -> None:
    small = ConditionLessThan(Ref("loss"), 0.1)
    named = ConditionIn(Ref("model"), ["a", "b"])
    either = ConditionOr([small, ConditionNot(named)])
    assert either.evaluate(resolver({"loss": 0.5, "model": "c"})) is True
    assert either.evaluate(resolver({"loss": 0.5, "model": "a"})) is False
    assert either.evaluate(resolver({"loss": 0.05, "model": "a"})) is True
    assert ConditionNot(ConditionNot(small)).evaluate(resolver({"loss": 0.05})) is True
    assert ConditionNot(either).evaluate(resolver({"loss": 0.5, "model": "a"})) is True


def test_or_evaluates_every_condition() -> None:
    either = ConditionOr([ConditionEquals(1, 1), ConditionEquals(Ref("r"), 2)])
    with pytest.raises(ConditionError, match="ConditionEquals: cannot compare str"):
        either.evaluate(resolver({"r": "2"}))


@pytest.mark.parametrize("bad", [ConditionEquals, 1, True, None, Ref("r")])
def test_not_needs_a_condition(bad: Any) -> None:
    with pytest.raises(SpecError, match="ConditionNot: expression must be a Condition") as e:
        ConditionNot(bad)
    assert e.value.field == "expression"


def test_or_needs_a_non_empty_list_of_conditions() -> None:
    bads: list[Any] = [[], (), None, ConditionEquals(1, 1)]
    for bad in bads:
        with pytest.raises(SpecError, match="conditions must be a non-empty list") as e:
            ConditionOr(bad)  # type: ignore[arg-type]
        assert e.value.field == "conditions"
    with pytest.raises(SpecError, match=r"conditions must be Conditions, got None"):
        ConditionOr([None])  # type: ignore[list-item]
    with pytest.raises(SpecError, match=r"conditions must be Conditions, got True") as e:
        ConditionOr([ConditionEquals(1, 1), True])  # type: ignore[list-item]
    assert e.value.field == "conditions"


# ---- Join -----------------------------------------------------------------------------


def test_join_resolves_every_value() -> None:
    join = Join(" ", ["accuracy", Ref("acc"), "below", ParameterFloat("t", 0.5), 1, True])
    assert join.resolve_with(resolver({"acc": 0.25})) == "accuracy 0.25 below 0.5 1 True"
    assert Join(",", []).resolve_with(CONST) == ""
    nested = Join("/", ["runs", Join("-", [Ref("a"), Ref("b")])])
    assert nested.resolve_with(resolver({"a": "x", "b": 2})) == "runs/x-2"


def test_join_as_operand() -> None:
    name = Join("-", [Ref("model"), "v", ParameterInteger("version", 2)])
    assert ConditionEquals(name, "bert-v-2").evaluate(resolver({"model": "bert"})) is True
    assert ConditionIn(name, ["a", "bert-v-3"]).evaluate(resolver({"model": "bert", "version": 3}))
    with pytest.raises(ConditionError, match=r"cannot compare str \('bert-v-2'\) with int"):
        ConditionEquals(name, 2).evaluate(resolver({"model": "bert"}))


def test_join_validates_its_arguments() -> None:
    with pytest.raises(SpecError, match="Join: on must be a str, got 1") as e:
        Join(1, ["a"])  # type: ignore[arg-type]
    assert e.value.field == "on"
    with pytest.raises(SpecError, match="Join: values must be a list, got 'ab'") as e:
        Join(",", "ab")
    assert e.value.field == "values"


# ---- operands, definitions, repr ------------------------------------------------------


def test_operands_at_any_depth() -> None:
    a, b, c, d, e = Ref("a"), Ref("b"), Ref("c"), Ref("d"), Ref("e")
    p = ParameterInteger("p", 1)
    condition = ConditionOr(
        [
            ConditionNot(ConditionEquals(a, Join("-", [b, "x", Join("/", [c])]))),
            ConditionIn(p, [d, 2]),
            ConditionOr([ConditionLessThan(e, 0.5)]),
        ]
    )
    found = condition.operands()
    assert found == [a, b, "x", c, p, d, 2, e, 0.5]
    assert [o for o in found if isinstance(o, Ref)] == [a, b, c, d, e]
    assert Join(",", [a, Join(";", [b])]).operands() == [a, b]
    assert isinstance(condition, Condition)


def test_definitions() -> None:
    threshold = ParameterFloat("threshold", 0.5)
    condition = ConditionOr(
        [
            ConditionGreaterThanOrEqualTo(Ref("train.acc"), threshold),
            ConditionNot(ConditionIn(Ref("train.model"), ["a", "b"])),
            ConditionEquals(Join("-", [Ref("x"), 1]), "y-1"),
        ]
    )
    assert condition.to_definition(render) == {
        "Type": "Or",
        "Conditions": [
            {
                "Type": "GreaterThanOrEqualTo",
                "LeftValue": {"Get": "train.acc"},
                "RightValue": {"Get": "Parameters.threshold"},
            },
            {
                "Type": "Not",
                "Expression": {
                    "Type": "In",
                    "QueryValue": {"Get": "train.model"},
                    "Values": ["a", "b"],
                },
            },
            {
                "Type": "Equals",
                "LeftValue": {"Std:Join": {"On": "-", "Values": [{"Get": "x"}, 1]}},
                "RightValue": "y-1",
            },
        ],
    }
    for cls, name in [
        (ConditionGreaterThan, "GreaterThan"),
        (ConditionLessThan, "LessThan"),
        (ConditionLessThanOrEqualTo, "LessThanOrEqualTo"),
    ]:
        assert cls(1, 2).to_definition(render) == {
            "Type": name,
            "LeftValue": 1,
            "RightValue": 2,
        }


def test_repr() -> None:
    condition = ConditionOr(
        [ConditionNot(ConditionEquals(Ref("a"), 1)), ConditionIn("x", ["x", Join("-", ["y"])])]
    )
    assert repr(condition) == (
        "ConditionOr([ConditionNot(ConditionEquals(Ref('a'), 1)), "
        "ConditionIn('x', ['x', Join('-', ['y'])])])"
    )
    assert repr(ConditionGreaterThan(ParameterInteger("n", 3), 2)) == (
        "ConditionGreaterThan(ParameterInteger('n', default_value=3), 2)"
    )


# ---- typed parameters -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "given", "expected"),
    [
        (ParameterInteger("n"), 3, 3),
        (ParameterInteger("n"), "3", 3),
        (ParameterInteger("n"), " -12 ", -12),
        (ParameterFloat("x"), 0.5, 0.5),
        (ParameterFloat("x"), "0.5", 0.5),
        (ParameterFloat("x"), 2, 2.0),
        (ParameterFloat("x"), "3", 3.0),
        (ParameterFloat("x"), "-1e-3", -0.001),
        (ParameterFloat("x"), ".5", 0.5),
        (ParameterBoolean("b"), True, True),
        (ParameterBoolean("b"), False, False),
        (ParameterBoolean("b"), "TRUE", True),
        (ParameterBoolean("b"), "false", False),
        (ParameterBoolean("b"), "1", True),
        (ParameterBoolean("b"), "0", False),
        (ParameterBoolean("b"), "Yes", True),
        (ParameterBoolean("b"), "no", False),
        (ParameterString("s"), "anything", "anything"),
        (ParameterString("s"), "", ""),
        (ParameterString("s", enum_values=["a", "b"]), "b", "b"),
    ],
)
def test_check_accepts_and_converts(parameter: Any, given: Any, expected: Any) -> None:
    checked = parameter.check(given)
    assert checked == expected
    assert type(checked) is type(expected)


@pytest.mark.parametrize(
    ("parameter", "given", "message"),
    [
        (
            ParameterInteger("epochs"),
            "3.5",
            "ParameterInteger 'epochs' expects an Integer (a whole number such as 3 or '3'), "
            "got '3.5' (str)",
        ),
        (ParameterInteger("epochs"), True, "got True (bool)"),
        (ParameterInteger("epochs"), 3.0, "got 3.0 (float)"),
        (ParameterInteger("epochs"), "three", "got 'three' (str)"),
        (ParameterInteger("epochs"), "", "got '' (str)"),
        (ParameterInteger("epochs"), None, "got None (NoneType)"),
        (
            ParameterFloat("lr"),
            "fast",
            "ParameterFloat 'lr' expects a Float (a finite number such as 0.5 or '0.5'), "
            "got 'fast' (str)",
        ),
        (ParameterFloat("lr"), False, "got False (bool)"),
        (ParameterFloat("lr"), "nan", "got 'nan' (str)"),
        (ParameterFloat("lr"), float("inf"), "got inf (float)"),
        (ParameterFloat("lr"), [0.5], "got [0.5] (list)"),
        (
            ParameterBoolean("shuffle"),
            "maybe",
            "ParameterBoolean 'shuffle' expects a Boolean (True, False or one of 'true', "
            "'false', '1', '0', 'yes', 'no'), got 'maybe' (str)",
        ),
        (ParameterBoolean("shuffle"), 1, "got 1 (int)"),
        (ParameterBoolean("shuffle"), None, "got None (NoneType)"),
        (ParameterString("mode"), 3, "ParameterString 'mode' expects a String, got 3 (int)"),
        (ParameterString("mode"), None, "got None (NoneType)"),
        (
            ParameterString("mode", enum_values=["train", "eval"]),
            "test",
            "ParameterString 'mode' expects a String, got 'test' (str), which is not one of "
            "['train', 'eval']",
        ),
    ],
)
def test_check_rejects_with_a_message(parameter: Any, given: Any, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parameter.check(given)
    assert caught.value.field == parameter.name
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{type(parameter).__name__} {parameter.name!r}")


def test_defaults_are_checked_and_converted() -> None:
    not_a_str: Any = 1
    assert ParameterInteger("n", "4").default_value == 4
    assert ParameterFloat("x", 1).default_value == 1.0
    assert ParameterBoolean("b", "yes").default_value is True
    assert ParameterString("s", "a", enum_values=["a"]).default_value == "a"
    assert ParameterInteger("n").default_value is None
    for make, message in [
        (lambda: ParameterInteger("n", 1.5), "ParameterInteger 'n' expects an Integer"),
        (lambda: ParameterFloat("x", True), "ParameterFloat 'x' expects a Float"),
        (lambda: ParameterBoolean("b", "on"), "ParameterBoolean 'b' expects a Boolean"),
        (lambda: ParameterString("s", not_a_str), "ParameterString 's' expects a String"),
        (lambda: ParameterString("s", "c", enum_values=["a", "b"]), "not one of ['a', 'b']"),
    ]:
        with pytest.raises(SpecError, match=message.replace("[", r"\[")):
            make()


@pytest.mark.parametrize("bad", [[], "ab", ["a", 1], None.__class__, {"a": 1}])
def test_enum_values_must_be_strings(bad: Any) -> None:
    with pytest.raises(SpecError, match="ParameterString 'mode': enum_values must be") as e:
        ParameterString("mode", enum_values=bad)
    assert e.value.field == "enum_values"


def test_parameters_keep_the_pipeline_parameter_contract() -> None:
    for parameter in (
        ParameterString("s", "x"),
        ParameterInteger("i", 1),
        ParameterFloat("f", 0.5),
        ParameterBoolean("b", False),
    ):
        assert isinstance(parameter, PipelineParameter)
        assert parameter.name in "sifb"
    with pytest.raises(SpecError, match="name '1x' must be a word"):
        ParameterInteger("1x", 1)
    assert PipelineParameter("p", "anything").default_value == "anything"


def test_parameter_definitions() -> None:
    assert ParameterInteger("n", 3).to_definition() == {
        "Name": "n",
        "Type": "Integer",
        "DefaultValue": 3,
    }
    assert ParameterFloat("x", "0.5").to_definition() == {
        "Name": "x",
        "Type": "Float",
        "DefaultValue": 0.5,
    }
    assert ParameterBoolean("b", False).to_definition() == {
        "Name": "b",
        "Type": "Boolean",
        "DefaultValue": False,
    }
    assert ParameterString("s").to_definition() == {"Name": "s", "Type": "String"}
    assert ParameterString("m", "a", enum_values=("a", "b")).to_definition() == {
        "Name": "m",
        "Type": "String",
        "DefaultValue": "a",
        "EnumValues": ["a", "b"],
    }
    assert [cls.type_name for cls in (ParameterString, ParameterInteger)] == ["String", "Integer"]
    assert repr(ParameterString("m", "a", enum_values=["a"])) == (
        "ParameterString('m', default_value='a', enum_values=['a'])"
    )
