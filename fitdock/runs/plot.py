"""Metric curves against step: ``fitdock runs plot`` and ``Run.plot``.

One panel per metric, one line per run, and per rank when a run's ranks logged the metric
separately. As a matplotlib ``Figure`` (no pyplot: no global state, no display needed),
saved as PNG when ``out`` is given; or as text for a terminal, drawn by plotext. Both are
the ``plot`` extra, imported only here and only when called. A value logged without a
step is placed at its position in its (metric, rank) series.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fitdock.errors import NotAvailableError, SpecError
from fitdock.runs.listing import read_points
from fitdock.runs.store import RunDir

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
INSTALL = "pip install 'fitdock[plot]'"


@dataclass
class Curve:
    """One line: a run's (or one of its ranks') values of one metric."""

    label: str
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def plot_runs(
    run_ids: str | Sequence[str],
    metrics: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    *,
    terminal: bool = False,
    home: Path | None = None,
    color: bool = False,
    size: tuple[int, int] | None = None,
) -> Any:
    """Plot ``metrics`` (a name, names, default: every numeric metric) of the runs
    ``run_ids`` (an id or ids).

    Returns a matplotlib ``Figure``, also written to ``out`` as PNG when given; with
    ``terminal=True`` returns the plot as text instead (plotext; ``color`` keeps its ANSI
    colours, ``size`` is (columns, rows) per panel, default: the terminal's width)."""
    if isinstance(run_ids, str):
        run_ids = [run_ids]
    if isinstance(metrics, str):
        metrics = [metrics]
    panels = curves(run_ids, metrics, home)
    if terminal:
        return text(panels, color=color, size=size)
    fig = figure(panels)
    if out is not None:
        fig.savefig(Path(out), format="png", dpi=100)
    return fig


def curves(
    run_ids: Sequence[str], metrics: Sequence[str] | None = None, home: Path | None = None
) -> dict[str, list[Curve]]:
    """Metric name -> its curves, in the order the metrics were first logged."""
    if not run_ids:
        raise SpecError("give at least one run id", field="run_ids")
    many = len(run_ids) > 1
    found: dict[str, list[Curve]] = {}
    for run_id in run_ids:
        by_line: dict[tuple[str, int], Curve] = {}
        ranks: dict[str, set[int]] = {}
        points = read_points(RunDir.find(run_id, home).path)
        for point in points:
            ranks.setdefault(point.name, set()).add(point.rank)
        for point in points:
            curve = by_line.get((point.name, point.rank))
            if curve is None:
                label = run_id if many or len(ranks[point.name]) == 1 else ""
                if len(ranks[point.name]) > 1:
                    label = f"{label} rank {point.rank}".strip()
                curve = by_line[(point.name, point.rank)] = Curve(label)
                found.setdefault(point.name, []).append(curve)
            curve.steps.append(point.step)
            curve.values.append(point.value)
    return _chosen(found, metrics, run_ids)


def _chosen(
    found: dict[str, list[Curve]], metrics: Sequence[str] | None, run_ids: Sequence[str]
) -> dict[str, list[Curve]]:
    if not found:
        raise SpecError(f"no numeric metric was logged by {', '.join(run_ids)}", field="metric")
    if not metrics:
        return found
    unknown = [name for name in metrics if name not in found]
    if unknown:
        raise SpecError(
            f"no metric {', '.join(map(repr, unknown))} in {', '.join(run_ids)}; "
            f"logged: {', '.join(found)}",
            field="metric",
        )
    return {name: found[name] for name in dict.fromkeys(metrics)}


def figure(panels: dict[str, list[Curve]]) -> Any:
    """A matplotlib ``Figure``: one panel per metric, stacked, x = step."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise NotAvailableError(f"plots as images need matplotlib: {INSTALL}") from exc
    fig = Figure(figsize=(8, 2.8 * len(panels) + 0.4), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, lines) in zip(axes, panels.items(), strict=True):
        for curve in lines:
            ax.plot(
                curve.steps,
                curve.values,
                label=curve.label,
                marker="." if len(curve.steps) < 30 else None,
            )
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are counts
        ax.grid(alpha=0.3)
        if any(curve.label for curve in lines):
            ax.legend(fontsize="small")
    return fig


def text(
    panels: dict[str, list[Curve]], color: bool = False, size: tuple[int, int] | None = None
) -> str:
    """The panels drawn for a terminal by plotext, one under the other."""
    try:
        import plotext as plt
    except ImportError as exc:
        raise NotAvailableError(f"plots in the terminal need plotext: {INSTALL}") from exc
    width, height = size or (min(shutil.get_terminal_size((100, 24)).columns, 120), 20)
    drawn = []
    for name, lines in panels.items():
        plt.clear_figure()
        plt.plotsize(width, height)
        if not color:
            plt.theme("clear")
        for curve in lines:
            plt.plot(curve.steps, curve.values, label=curve.label or None)
        plt.title(name)
        plt.xlabel("step")
        drawn.append(plt.build())
    plt.clear_figure()
    joined = "\n".join(drawn)
    return joined if color else _ANSI.sub("", joined)
