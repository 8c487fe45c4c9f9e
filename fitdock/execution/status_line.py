"""A live status line while a run is followed (``fit(show_output=True)``, ``fitdock run``).

On a terminal (and with rich installed) one line at the bottom says where the run is,
redrawn in place, with the run's log lines printed above it::

    ⠹ run train_20261202-101500_ab12cd · running · 1m 05s elapsed, 8m 55s left

Elsewhere (a pipe, a CI log) each change of phase is one plain line::

    fitdock: run train_20261202-101500_ab12cd: running (limit 10m 00s)

The phases: resolving and snapshot (set by hand, before the run's record exists), then
from the record: building the environment (with the last line of the build's log),
queued on Slurm, running (elapsed and remaining time), stopping (a cancel, the time
limit), ended. ``describe`` is the pure part: record and time in, phase and words out.

``StatusLine`` also follows the run's logs (``LogFollower``) so that both go through one
writer: ``pump()`` where a ``LogFollower`` was pumped, ``pump(final=True)`` at the end.
"""

from __future__ import annotations

import enum
import io
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO, cast

from fitdock.runs.follow import LogFollower, tail
from fitdock.runs.layout import ENV_BUILD_LOG, IMAGE_BUILD_LOG, RunPaths
from fitdock.runs.listing import duration_seconds, format_duration, parse_time
from fitdock.runs.record import RunRecord
from fitdock.runs.status import RunStatus


class Phase(str, enum.Enum):
    RESOLVING = "resolving"
    SNAPSHOT = "snapshot"
    BUILDING = "building the environment"
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    ENDED = "ended"


@dataclass(frozen=True)
class State:
    """Where the run is. A plain line (``words(live=False)``) is printed when the phase or
    its ``detail`` changes; the live line shows ``clock`` (the running time, the build's
    last line) in place of the detail when there is one."""

    phase: Phase
    detail: str = ""
    clock: str = ""

    def words(self, live: bool) -> str:
        if live:
            shown = self.clock or self.detail
            return self.phase.value + (f" · {shown}" if shown else "")
        return self.phase.value + (f" ({self.detail})" if self.detail else "")


def describe(record: RunRecord, now: float, build_line: str = "", canceling: bool = False) -> State:
    """The state of the run that ``record`` describes at wall-clock time ``now``."""
    status = record.status
    if status.is_terminal:
        took = duration_seconds(record.as_json())
        return State(
            Phase.ENDED, status.value + (f" after {format_duration(took)}" if took else "")
        )
    if canceling or record.cancel_requested:
        return State(Phase.STOPPING, "cancel requested")
    if status is RunStatus.PREPARING:
        return State(Phase.BUILDING, clock=build_line[:70])
    if status is RunStatus.QUEUED:
        if record.slurm is None:
            return State(Phase.QUEUED)
        reason = f", {record.slurm.reason}" if record.slurm.reason else ""
        return State(Phase.QUEUED, f"on Slurm, job {record.slurm.job_id}{reason}")
    return _running(record, now)


def _running(record: RunRecord, now: float) -> State:
    limit = record.spec.get("max_run_duration_seconds")
    attempt = f"attempt {record.attempt}" if (record.attempt or 1) > 1 else ""
    started = parse_time(record.started_at)
    if started is None:
        return State(Phase.RUNNING, attempt)
    elapsed = max(0.0, now - started.timestamp())
    if limit and elapsed > float(limit):
        return State(Phase.STOPPING, f"time limit of {format_duration(float(limit))} reached")
    clock = f"{attempt}, " if attempt else ""
    clock += f"{format_duration(elapsed)} elapsed"
    if limit:
        clock += f", {format_duration(float(limit) - elapsed)} left"
    parts = [attempt] if attempt else []
    if limit:
        parts.append(f"limit {format_duration(float(limit))}")
    return State(Phase.RUNNING, ", ".join(parts), clock)


class StatusLine:
    """The status line of one run (``run``), or of a run about to be made (``label``)."""

    def __init__(
        self,
        run: RunPaths | None = None,
        out: TextIO | None = None,
        *,
        label: str | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run = run
        self.out = out or sys.stdout
        self.label = f"run {run.id}" if run is not None else (label or "fitdock")
        self.clock = clock
        self.state: State | None = None
        self._record: RunRecord | None = None
        self._printed: tuple[Phase, str] | None = None
        self._pinned = False  # a phase set by hand holds until the record says ended
        if run is not None:  # the first words of the live line: already the record's
            self.state = self._read()
        self._live = _live_display(self, self.out) if _wants_live(self.out, live) else None
        self.stream: TextIO = self._live.stream if self._live is not None else self.out
        self._follower = LogFollower(run.logs, self.stream) if run is not None else None
        if self.state is not None:
            self._show(self.state)

    # ------------------------------------------------------------------ driving
    def phase(self, phase: Phase, detail: str = "") -> None:
        """Set the phase by hand (resolving, snapshot, stopping on Ctrl-C)."""
        self._pinned = phase is Phase.STOPPING
        self._record = None
        self._show(State(phase, detail))

    def stopping(self, detail: str = "") -> None:
        """The run is being stopped from here (Ctrl-C): said until it has ended."""
        self.phase(Phase.STOPPING, detail)

    def pump(self, final: bool = False) -> None:
        """Bring the line up to date and print the new log lines (in that order: a phase's
        line comes before the output it leads to); ``final``: the last lines, the end
        state, and close. The record is read each time (a few kB, well under a ms)."""
        if not final:
            self.refresh()
        if self._follower is not None:
            self._follower.pump(final=final)
        if final:
            self.refresh()
            self.close()

    def refresh(self) -> None:
        """Read the record again and show what it says."""
        state = self._read()
        if state is not None and not (self._pinned and state.phase is not Phase.ENDED):
            self._show(state)

    def _read(self) -> State | None:
        if self.run is None:
            return None
        try:
            record = RunRecord.model_validate_json(self.run.record_path.read_bytes())
        except (OSError, ValueError):
            return None  # being replaced: the next refresh reads it
        state = describe(
            record,
            self.clock(),
            build_line=self._build_line() if record.status is RunStatus.PREPARING else "",
            canceling=self.run.cancel_path.exists(),
        )
        if not self._pinned:
            self._record = record if state.phase is Phase.RUNNING else None
        return state

    def close(self) -> None:
        """Stop the live line (it is erased) and print where the run ended, once."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.state is not None and self.state.phase is Phase.ENDED:
            self._print_plain(self.state)

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ drawing
    def render(self) -> str:
        """The live line's words (the spinner is drawn before them)."""
        state = self.state or State(Phase.RESOLVING)
        if self._record is not None and state.phase is Phase.RUNNING:
            state = describe(self._record, self.clock())  # the clock moves between reads
        return f"{self.label} · {state.words(live=True)}"

    def _show(self, state: State) -> None:
        self.state = state
        if self._live is None and state.phase is not Phase.ENDED:
            self._print_plain(state)

    def _print_plain(self, state: State) -> None:
        key = (state.phase, state.detail)
        if key == self._printed:
            return
        self._printed = key
        self.out.write(f"fitdock: {self.label}: {state.words(live=False)}\n")
        self.out.flush()

    def _build_line(self) -> str:
        if self.run is None:
            return ""
        for name in (IMAGE_BUILD_LOG, ENV_BUILD_LOG):
            line = tail(self.run.logs / name, 1).strip()
            if line:
                return line
        return ""


def _wants_live(out: TextIO, live: bool | None) -> bool:
    if live is not None:
        return live
    try:
        interactive = out.isatty()
    except (AttributeError, ValueError):
        return False
    return interactive and os.environ.get("TERM") != "dumb" and not os.environ.get("CI")


def _live_display(line: StatusLine, out: TextIO) -> _Live | None:
    try:
        return _Live(line, out)
    except ImportError:  # rich is the `plot` extra: plain lines without it
        return None


class _Live:
    """rich's ``Live`` around a spinner whose text ``line.render()`` gives; lines written
    to ``stream`` are printed above it."""

    def __init__(self, line: StatusLine, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner
        from rich.text import Text

        self.console = Console(file=out, highlight=False)
        spinner = Spinner("dots", text="")

        def renderable() -> Any:
            spinner.update(text=Text(line.render(), no_wrap=True, overflow="ellipsis"))
            return spinner

        self._live = Live(
            console=self.console,
            get_renderable=renderable,
            refresh_per_second=8,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.stream = cast(TextIO, _Above(self.console))
        self._live.start()

    def stop(self) -> None:
        self.stream.flush()
        self._live.stop()


class _Above(io.TextIOBase):
    """Complete lines written here are printed above the live line."""

    def __init__(self, console: Any) -> None:
        self._console = console
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        from rich.text import Text

        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._console.print(Text.from_ansi(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self.write("\n")
