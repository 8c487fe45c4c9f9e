"""What flows between the steps of a pipeline: data that a step writes and later steps
read (``PipelineData``), local files and folders (``InputData``), and values set per
submission (``PipelineParameter``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fitdock.errors import SpecError
from fitdock.runs.names import MAX_NAME, word


def check_name(name: object, what: str) -> str:
    return word(name, f"{what} name")


class PipelineData:
    """A folder (or, with ``is_directory=False``, a file) that one step writes and later
    steps read. In ``arguments`` it becomes its path where the step runs; in a step's
    ``outputs`` it is produced there (``<run>/outputs/<name>``), in another's ``inputs``
    it is read there."""

    def __init__(
        self, name: str, is_directory: bool = True, output_name: str | None = None
    ) -> None:
        self.name = check_name(name, "PipelineData")
        self.is_directory = is_directory
        self.output_name = output_name or name
        self.producers: list[Any] = []  # the steps that list it in their outputs (one, valid)

    def __repr__(self) -> str:
        return f"PipelineData({self.name!r})"


class InputData:
    """A local file or folder that steps read; its content (not its path) is part of the
    steps' reuse keys. Plain ``str``/``Path`` inputs become one of these."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        self.name = check_name(name or _name_of(self.path), "InputData")

    def __repr__(self) -> str:
        return f"InputData({str(self.path)!r}, name={self.name!r})"


def _name_of(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", path.name)[: MAX_NAME - 1] or "input"
    return stem if not stem[0].isdigit() else f"_{stem}"


class PipelineParameter:
    """A value given per submission (``pipeline_parameters={name: value}``), else its
    ``default_value``; usable in ``arguments``, ``params`` and
    ``runconfig_pipeline_params``."""

    def __init__(self, name: str, default_value: Any) -> None:
        self.name = check_name(name, "PipelineParameter")
        self.default_value = default_value

    def __repr__(self) -> str:
        return f"PipelineParameter({self.name!r}, default_value={self.default_value!r})"


def as_input(value: Any) -> PipelineData | InputData:
    """A step's input: PipelineData and InputData as they are, a path as InputData."""
    if isinstance(value, (PipelineData, InputData)):
        return value
    if isinstance(value, (str, Path)):
        return InputData(value)
    raise SpecError(
        f"input {value!r} is neither a PipelineData, an InputData nor a path", field="inputs"
    )
