"""The rules for names that become folders, files or variables: one place, used by every
caller that turns a user's name into a path.

- ``folder_name``: what names a folder under ``$FITDOCK_HOME`` (experiment, pipeline and
  function-step names): 1 to 200 letters, digits, ``_``, ``-`` and ``.``, starting with a
  letter or a digit. So never ``.``, ``..``, a ``/``, a NUL, white space or a newline.
- ``word``: what names a variable as well as a folder (inputs, ``PipelineData``,
  ``PipelineParameter``): 1 to 200 letters, digits and ``_``, not starting with a digit.
- ``check_run_id``: an id looked up under ``runs/`` or ``pipelines/``: one path
  component (no ``/``, not ``.`` or ``..``, no NUL or line break, at most 255 bytes), so
  that a lookup reads nothing outside the home folder. Looser than ``folder_name`` on
  purpose: runs made before these rules keep their ids.
- ``safe_stem``: any text made into the first part of a new run id.

Windows' reserved device names (``con``, ``nul``, ...) are not refused: fitdock runs on
POSIX systems, where only ``.`` and ``..`` are special.
"""

from __future__ import annotations

import re

from fitdock.errors import SpecError

MAX_NAME = 200
MAX_COMPONENT = 255  # bytes in one file name on Linux file systems
_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_folder_name(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME and bool(_FOLDER.fullmatch(value))


def is_word(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME and bool(_WORD.fullmatch(value))


def folder_name(value: object, what: str, field: str = "name") -> str:
    """``value`` when it may name a folder, else a ``SpecError`` naming ``field``."""
    if not is_folder_name(value):
        raise SpecError(
            f"{what} {_shown(value)} cannot name a folder: use 1 to {MAX_NAME} letters, "
            "digits, '_', '-' and '.', starting with a letter or digit",
            field=field,
        )
    return str(value)


def word(value: object, what: str, field: str = "name") -> str:
    """``value`` when it may name a folder and a variable, else a ``SpecError``."""
    if not is_word(value):
        raise SpecError(
            f"{what} {_shown(value)} must be a word of 1 to {MAX_NAME} letters, digits and "
            "'_' that does not start with a digit (it becomes a folder and a variable name)",
            field=field,
        )
    return str(value)


def run_id_problem(run_id: object) -> str | None:
    """Why ``run_id`` cannot be a folder right under ``runs/`` (None: it can)."""
    if not isinstance(run_id, str) or not run_id:
        return "a run id is a non-empty string"
    if run_id in (".", "..") or "/" in run_id or "\\" in run_id:
        return "a run id is one folder name, without '/' and not '.' or '..'"
    if any(ch in run_id for ch in "\0\n\r"):
        return "a run id holds no NUL byte or line break"
    if len(run_id.encode("utf-8", "surrogateescape")) > MAX_COMPONENT:
        return f"a run id has at most {MAX_COMPONENT} bytes"
    return None


def check_run_id(run_id: object, field: str = "run_id") -> str:
    problem = run_id_problem(run_id)
    if problem is not None:
        raise SpecError(f"{field} {_shown(run_id)}: {problem}", field=field)
    return str(run_id)


def safe_stem(text: str, default: str = "run", limit: int = 100) -> str:
    """``text`` with every run of other characters than letters, digits, ``._-`` as one
    ``_``, cut to ``limit`` characters, without leading or trailing ``._-``."""
    cleaned = _UNSAFE.sub("_", text)[:limit].strip("._-")
    return cleaned or default


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"...' ({len(text)} characters)"
