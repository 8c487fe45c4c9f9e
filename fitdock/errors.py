"""Every exception fitdock raises on purpose.

    FitdockError                      base: catch this to catch them all
    ├── SpecError                     bad user input, found before anything is created
    │   │ (also a ValueError)         .field names the offending argument
    │   ├── PipelineValidationError   a pipeline that cannot run; .problems lists them all
    │   ├── ConditionError            values a condition cannot compare; .condition, .values
    │   └── ScriptBundleError         a script bundle (zip) refused before extraction; .entry
    ├── NotAvailableError             asked for something this installation cannot do yet
    ├── SnapshotError                 source directory missing, or over the size/file limits
    ├── EnvironmentResolutionError    unknown framework version, unknown catalogue entry
    ├── LauncherNotFoundError         mpirun/mpiexec (or another launcher) is not installed
    ├── ImageBuildError               an environment's image could not be built
    │                                 .tag, .step (the failing instruction), .tail, .log
    ├── StagingError                  copying a run to or from a host failed
    ├── SlurmError                    Slurm refused a request (its own message)
    ├── MpiMismatchError              no launcher of the MPI that the job's libraries load
    │                                 .launchers, .libraries (found before any rank starts)
    ├── ScriptError                   an azureml_main script raised, or returned what cannot
    │                                 be a DataFrame; .line, .exception, .traceback (Azure's shape)
    ├── SandboxError                  the sandbox asked for cannot be had (strict), or it
    │                                 stopped the script (memory); .missing
    ├── PayloadError                  a signed step payload was refused (missing, truncated,
    │                                 changed, foreign key, loose key permissions); .path
    ├── StepResultError               result() of a step that has none; .step, .status
    ├── StorageError                  fitdock's files cannot be written: no space left, a
    │                                 read-only file system; .path, .errno
    ├── RunNotFoundError              no run record with that id
    └── RunFailedError                wait_for_completion(raise_on_error=True) on a failed run
                                      .run_id, .status, .error (which rank, exit code, stderr tail)

Each message says what to change. Lower-level errors are chained with ``from``.

    UserWarning
    └── GpuNotFoundWarning            use_gpu=True where no NVIDIA GPU is visible
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class FitdockError(Exception):
    """Base class of every fitdock error."""


class SpecError(FitdockError, ValueError):
    """An estimator or environment argument is invalid."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def from_pydantic(cls, owner: str, exc: Any) -> SpecError:
        """A pydantic ``ValidationError`` (taken as it is: this module imports no pydantic)
        as a ``SpecError`` naming every wrong field, what is wrong and what it got."""
        errors = exc.errors()
        field = ".".join(str(part) for part in errors[0]["loc"]) or None if errors else None
        lines = []
        for err in errors:
            loc = ".".join(str(part) for part in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"is not an argument of {owner}"
            elif err["type"] == "missing":
                msg = "is required"
            shown = repr(err.get("input"))
            shown = shown if len(shown) <= 200 else shown[:160] + f"... ({len(shown)} characters)"
            got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {shown})"
            lines.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
        return cls(f"{owner}: " + "; ".join(lines), field=field)


class PipelineValidationError(SpecError):
    """A pipeline that cannot run: every problem found (a cycle, an input no step
    produces, two steps of one name, an output produced twice, a parameter without a
    value), in ``problems``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"the pipeline cannot run:\n{listed}", field="steps")


class ConditionError(SpecError):
    """A condition was asked to compare values of different types, or to order values
    that have no order. ``.condition`` is the condition's class name, ``.values`` the
    resolved values it could not compare."""

    def __init__(self, message: str, *, condition: str, values: Sequence[Any]) -> None:
        super().__init__(message, field="conditions")
        self.condition = condition
        self.values = tuple(values)


class GpuNotFoundWarning(UserWarning):
    """``use_gpu=True`` for ranks on this machine, but it shows no NVIDIA GPU: the job would
    run on the CPU. The message names what was looked for (driver, ``nvidia-smi``, devices)."""


class NotAvailableError(FitdockError):
    """The requested feature is not available in this installation."""


class SnapshotError(FitdockError):
    """The source directory cannot be snapshotted."""


class EnvironmentResolutionError(FitdockError, ValueError):
    """No curated environment matches what was asked for."""


class LauncherNotFoundError(FitdockError):
    """A launcher program (mpirun, mpiexec, ...) is not installed."""


class ImageBuildError(FitdockError):
    """An environment's image could not be built (or, for a custom image, found).

    ``.step`` is the failing Dockerfile instruction (``None`` before the first step),
    ``.tail`` the last lines of its output, ``.log`` the full build log."""

    def __init__(
        self,
        message: str,
        *,
        tag: str,
        step: str | None = None,
        tail: Iterable[str] = (),
        log: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.tag = tag
        self.step = step
        self.tail = list(tail)
        self.log = log


class StagingError(FitdockError):
    """Copying the run to or from a host failed."""


class SlurmError(FitdockError):
    """Slurm refused a request (the message is Slurm's own)."""


class MpiMismatchError(FitdockError):
    """No MPI launcher matches the MPI library the job loads: its ranks would not form
    one world. ``launchers`` and ``libraries`` are what was found on each side."""

    def __init__(self, message: str, launchers: Sequence[Any], libraries: Sequence[Any]) -> None:
        super().__init__(message)
        self.launchers = tuple(launchers)
        self.libraries = tuple(libraries)


class ScriptBundleError(SpecError):
    """A script bundle was refused before anything was written: an entry with ``..``, an
    absolute path, a link or a device, too many entries, too large, or too compressed."""

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message, field="script_bundle")
        self.entry = entry


class ScriptError(FitdockError):
    """An ``azureml_main`` script failed. The message is Azure's: "Got exception when
    invoking script at line N in function azureml_main: 'ValueError: ...'.";
    ``.traceback`` holds the user's frames only."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        exception: str | None = None,
        traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.line = line
        self.exception = exception
        self.traceback = traceback


class SandboxError(FitdockError):
    """``sandbox="strict"`` without full isolation here (``.missing`` says what), or the
    sandbox stopped the script (its memory limit)."""

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


class PayloadError(FitdockError):
    """A signed payload (a step's function, arguments or result) was refused; nothing was
    unpickled."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StepResultError(FitdockError):
    """``result(step)`` asked of a step that has no result: not a function step, or it did
    not complete."""

    def __init__(self, message: str, *, step: str, status: str) -> None:
        super().__init__(message)
        self.step = step
        self.status = status


class StorageError(FitdockError):
    """A file fitdock keeps (a run's record, snapshot or logs, an environment) could not be
    written: ``.path`` names it, ``.errno`` says why (ENOSPC: no space left; EROFS: a
    read-only file system); the message says what to free or where to point
    ``FITDOCK_HOME``."""

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class RunNotFoundError(FitdockError, LookupError):
    """No run record exists with the given id."""

    def __init__(self, run_id: str, home: str, reason: str | None = None) -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"no run {run_id!r} under {home}{why}; `fitdock runs list` shows the runs there"
        )
        self.run_id = run_id


class RunFailedError(FitdockError):
    """A run ended in Failed, Canceled or TimedOut."""

    def __init__(self, run_id: str, status: Any, error: dict[str, Any] | None) -> None:
        detail = (error or {}).get("message", "")
        super().__init__(f"run {run_id} ended {status}" + (f": {detail}" if detail else ""))
        self.run_id = run_id
        self.status = status
        self.error = error
