"""The base of the spec models: a bad argument is a ``SpecError`` naming the field, never
pydantic's own ``ValidationError``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from fitdock.errors import SpecError


class SpecModel(BaseModel):
    """A pydantic model whose constructor raises ``SpecError`` (``model_validate`` of stored
    data still raises pydantic's error)."""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SpecError.from_pydantic(type(self).__name__, exc) from None
