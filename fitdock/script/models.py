"""The body of ``fitdock script serve``'s requests and answers, as pydantic models: a
request in either shape (``dataframe1``/``dataframe2``, or Azure classic's ``Inputs`` with
``GlobalParameters``), its rows checked with one clear error each, and the tables it gives
in order (:meth:`ScoreRequest.tables`); the response and error bodies, for the OpenAPI
page.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

__all__ = ["AzureInputs", "ErrorResponse", "Results", "ScoreRequest", "ScoreResponse"]


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def _check_rows(value: Any) -> Any:
    """A table: a list of JSON objects whose values are scalars (one clear error)."""
    if not isinstance(value, list):
        raise ValueError(f"a table is a list of rows {{column: value}}, not {_kind(value)}")
    for number, row in enumerate(value):
        if not isinstance(row, dict):
            raise ValueError(f"row {number} is {_kind(row)}, not an object {{column: value}}")
        for column, cell in row.items():
            if cell is not None and not isinstance(cell, (str, int, float)):
                raise ValueError(
                    f"row {number}, column {column!r}: {_kind(cell)} is not a value; values "
                    "are strings, numbers, booleans or null"
                )
    return value


Rows = Annotated[list[dict[str, Any]], BeforeValidator(_check_rows)]


class AzureInputs(BaseModel):
    """Azure classic's ``Inputs``: ``input1`` is ``dataframe1``, ``input2`` ``dataframe2``."""

    model_config = ConfigDict(extra="forbid")
    input1: Rows | None = None
    input2: Rows | None = None


class ScoreRequest(BaseModel):
    """Either ``dataframe1``/``dataframe2`` or Azure classic's ``Inputs``, not both."""

    model_config = ConfigDict(extra="forbid")
    dataframe1: Rows | None = None
    dataframe2: Rows | None = None
    Inputs: AzureInputs | None = None
    GlobalParameters: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> ScoreRequest:
        if self.Inputs is not None and (self.dataframe1 is not None or self.dataframe2 is not None):
            raise ValueError("give dataframe1/dataframe2 or Azure's Inputs, not both")
        if self.GlobalParameters:
            names = ", ".join(sorted(self.GlobalParameters))
            raise ValueError(
                f"GlobalParameters {names}: this service has no global parameters "
                "(send {} or leave it out)"
            )
        return self

    def tables(self) -> list[list[dict[str, Any]]]:
        """The tables given, in order: the first is azureml_main's first input."""
        both = (self.Inputs.input1, self.Inputs.input2) if self.Inputs else None
        return [t for t in both or (self.dataframe1, self.dataframe2) if t is not None]


class Results(BaseModel):
    output1: list[dict[str, Any]]
    output2: list[dict[str, Any]]


class ScoreResponse(BaseModel):
    Results: Results


class ErrorResponse(BaseModel):
    detail: str
    exception: str | None = None
    line: int | None = None
