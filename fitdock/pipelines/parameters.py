"""Typed pipeline parameters (SageMaker's names): ``ParameterString``,
``ParameterInteger``, ``ParameterFloat`` and ``ParameterBoolean``. Each checks its default
at once and every value given per submission with ``check``, which also parses the
strings of a command line (``--param epochs=3`` gives ``"3"``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from fitdock.errors import SpecError
from fitdock.pipelines.data import PipelineParameter

_INTEGER = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class TypedParameter(PipelineParameter):
    """A ``PipelineParameter`` whose values have one type. ``default_value=None`` means
    no default: the submission must give a value."""

    type_name: ClassVar[str]  # the "Type" of SageMaker's definition JSON
    expected: ClassVar[str]  # what a good value looks like, for messages

    def __init__(self, name: str, default_value: Any = None) -> None:
        super().__init__(name, default_value)
        if default_value is not None:
            self.default_value = self.check(default_value)

    def check(self, value: Any) -> Any:
        """``value`` as this parameter's Python type; SpecError if it is not one."""
        converted = self._convert(value)
        if converted is None:
            raise self._error(value)
        return converted

    def _convert(self, value: Any) -> Any:
        """The converted value, or None when ``value`` is not of this type."""
        raise NotImplementedError

    def _error(self, value: Any, why: str = "") -> SpecError:
        return SpecError(
            f"{type(self).__name__} {self.name!r} expects {self.expected}, "
            f"got {value!r} ({type(value).__name__}){why}",
            field=self.name,
        )

    def to_definition(self) -> dict[str, Any]:
        """SageMaker's shape: ``{"Name", "Type", "DefaultValue"}``; no ``DefaultValue``
        when there is no default."""
        definition: dict[str, Any] = {"Name": self.name, "Type": self.type_name}
        if self.default_value is not None:
            definition["DefaultValue"] = self.default_value
        return definition

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, default_value={self.default_value!r})"


class ParameterInteger(TypedParameter):
    """A whole number: an ``int`` (never a bool) or a string such as ``"3"``."""

    type_name = "Integer"
    expected = "an Integer (a whole number such as 3 or '3')"

    def _convert(self, value: Any) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and _INTEGER.match(value.strip()):
            return int(value.strip())
        return None


class ParameterFloat(TypedParameter):
    """A finite number: a ``float``, an ``int`` (never a bool) or a string such as
    ``"0.5"``; always returned as a ``float``."""

    type_name = "Float"
    expected = "a Float (a finite number such as 0.5 or '0.5')"

    def _convert(self, value: Any) -> float | None:
        if isinstance(value, bool):
            return None
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str) and _FLOAT.match(value.strip()):
            number = float(value.strip())
        return number if number is not None and math.isfinite(number) else None


class ParameterBoolean(TypedParameter):
    """A ``bool``, or one of the strings true/false, 1/0, yes/no in any case."""

    type_name = "Boolean"
    expected = "a Boolean (True, False or one of 'true', 'false', '1', '0', 'yes', 'no')"

    def _convert(self, value: Any) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        return None


class ParameterString(TypedParameter):
    """A ``str``; with ``enum_values``, one of those."""

    type_name = "String"
    expected = "a String"

    def __init__(
        self,
        name: str,
        default_value: str | None = None,
        enum_values: Sequence[str] | None = None,
    ) -> None:
        if enum_values is not None and (
            isinstance(enum_values, str)
            or not isinstance(enum_values, (list, tuple))
            or not enum_values
            or not all(isinstance(v, str) for v in enum_values)
        ):
            raise SpecError(
                f"ParameterString {name!r}: enum_values must be a non-empty list of "
                f"strings, got {enum_values!r}",
                field="enum_values",
            )
        self.enum_values = list(enum_values) if enum_values is not None else None
        super().__init__(name, default_value)

    def check(self, value: Any) -> str:
        """``value`` if it is a str (one of ``enum_values`` when given), else SpecError."""
        checked: str = super().check(value)
        if self.enum_values is not None and checked not in self.enum_values:
            raise self._error(value, f", which is not one of {self.enum_values!r}")
        return checked

    def _convert(self, value: Any) -> str | None:
        return value if isinstance(value, str) else None

    def to_definition(self) -> dict[str, Any]:
        """SageMaker's shape, with ``EnumValues`` when given."""
        definition = super().to_definition()
        if self.enum_values is not None:
            definition["EnumValues"] = list(self.enum_values)
        return definition

    def __repr__(self) -> str:
        enum = f", enum_values={self.enum_values!r}" if self.enum_values is not None else ""
        return f"ParameterString({self.name!r}, default_value={self.default_value!r}{enum})"
