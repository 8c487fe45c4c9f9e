"""What differs between runs: ``fitdock runs compare``. Pure: records and metric values in,
rows out; the command reads them and prints the table.

One row per field, one value per run: name, status, target, duration, environment hash,
git commit, each script parameter (parsed from the script's arguments: ``--lr 0.1``,
``--lr=0.1``, a bare flag, positional arguments), then for each metric its final value
and its best: the lowest for a name containing ``loss``, ``error`` or ``rmse``, else the
highest (accuracy, F1, ...).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fitdock.runs.listing import duration_seconds, format_duration

LOWER_IS_BETTER = ("loss", "error", "rmse")
MISSING = "-"


@dataclass(frozen=True)
class RunFacts:
    """One run to compare: its record (as JSON) and its numeric metric values."""

    record: dict[str, Any]
    metrics: dict[str, list[float]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.record.get("id", "?"))


@dataclass(frozen=True)
class Row:
    name: str
    values: tuple[str, ...]

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


def lower_is_better(metric: str) -> bool:
    """True for a metric whose best value is its lowest (loss, error, rmse in the name)."""
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def compare(
    runs: Sequence[RunFacts], show_all: bool = False, now: dt.datetime | None = None
) -> list[Row]:
    """The rows of the comparison; only those that differ unless ``show_all``."""
    rows = [
        _row("name", runs, lambda r: str(r.record.get("name") or MISSING)),
        _row("status", runs, lambda r: str(r.record.get("status") or MISSING)),
        _row("target", runs, lambda r: str(r.record.get("target") or MISSING)),
        _row("ranks", runs, lambda r: str(r.record.get("world_size") or MISSING)),
        _row("duration", runs, lambda r: format_duration(duration_seconds(r.record, now))),
        _row("environment", runs, lambda r: _short(r.record.get("environment_hash"))),
        _row(
            "git commit", runs, lambda r: _short((r.record.get("source") or {}).get("git_commit"))
        ),
        *_param_rows(runs),
        *_metric_rows(runs),
    ]
    return rows if show_all else [row for row in rows if row.differs]


def script_params(arguments: Sequence[Any]) -> dict[str, str]:
    """The script's arguments as parameters: ``["--lr", "0.1", "--fast", "data.csv"]`` ->
    ``{"--lr": "0.1", "--fast": "true", "arg 1": "data.csv"}`` (``--lr=0.1`` too; a flag
    given twice keeps both values, comma-separated)."""
    params: dict[str, str] = {}
    words = [str(word) for word in arguments]
    positional = 0
    i = 0
    while i < len(words):
        word = words[i]
        if _is_flag(word):
            key, sep, value = word.partition("=")
            if not sep:
                following = words[i + 1] if i + 1 < len(words) else None
                if following is not None and not _is_flag(following):
                    value, i = following, i + 1
                else:
                    value = "true"
            params[key] = f"{params[key]},{value}" if key in params else value
        else:
            positional += 1
            params[f"arg {positional}"] = word
        i += 1
    return params


def _is_flag(word: str) -> bool:
    """``-x``/``--name`` but not a negative number."""
    if not word.startswith("-") or word == "-":
        return False
    try:
        float(word)
    except ValueError:
        return True
    return False


def _row(name: str, runs: Sequence[RunFacts], value: Any) -> Row:
    return Row(name, tuple(value(run) for run in runs))


def _short(text: object) -> str:
    return str(text)[:12] if text else MISSING


def _param_rows(runs: Sequence[RunFacts]) -> list[Row]:
    each = [script_params((run.record.get("spec") or {}).get("arguments") or []) for run in runs]
    keys: list[str] = []
    for params in each:
        keys += [key for key in params if key not in keys]
    return [Row(f"param {key}", tuple(params.get(key, MISSING) for params in each)) for key in keys]


def _metric_rows(runs: Sequence[RunFacts]) -> list[Row]:
    names: list[str] = []
    for run in runs:
        names += [name for name in run.metrics if name not in names]
    rows = []
    for name in names:
        series = [run.metrics.get(name) or [] for run in runs]
        best = min if lower_is_better(name) else max
        rows.append(Row(f"final {name}", tuple(_number(s[-1]) if s else MISSING for s in series)))
        rows.append(
            Row(
                f"best {name} ({best.__name__})",
                tuple(_number(best(s)) if s else MISSING for s in series),
            )
        )
    return rows


def _number(value: float) -> str:
    return f"{value:.6g}"
