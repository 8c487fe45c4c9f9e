"""Reading runs for the views of ``fitdock runs`` (list, compare, plot), fast.

``fitdock runs list`` must stay quick with thousands of runs, so it reads each ``run.json``
once as plain JSON (no validation) and never a metrics file, except the end of the files
of the runs it shows when a metric column is asked for (``last_value`` reads backwards
from the end until it finds the metric). The filters and the durations are pure functions
of a record and the time.

    scan(home)              (path, summary of the record) of every run, oldest first
    Filters / matches       --status, --since, --name
    parse_since             an ISO date or time, or an age such as 2h, 3d
    duration_seconds        started -> ended (or now, for a live run)
    format_duration         12.3 s, 4m 05s, 2h 03m, 3d 04h
    last_value              a metric's last value, read from the end of metrics.jsonl
    read_points             every numeric value of metrics.jsonl: name, rank, step, value
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitdock.errors import SpecError
from fitdock.runs.layout import METRICS, RECORD
from fitdock.runs.status import RunStatus
from fitdock.shared import fitdock_home

TAIL_BLOCK = 64 * 1024
LISTING_CACHE = "listing.json"  # in $FITDOCK_HOME/cache: the summaries scan() keeps
_CACHE_VERSION = 1
# What scan() keeps of a record: what `fitdock runs list` shows and filters on.
SUMMARY = (
    "id",
    "name",
    "status",
    "target",
    "world_size",
    "created_at",
    "started_at",
    "ended_at",
    "parent_id",
)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def scan(home: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every run folder with a readable record, and what the listing shows of it (the
    ``SUMMARY`` fields of its record), oldest first.

    Parsing thousands of records each time is most of the time a listing takes, so the
    summaries are kept in ``$FITDOCK_HOME/cache/listing.json`` by folder, with the size and
    modification time (ns) of the ``run.json`` they came from: only a record that changed
    since is read again."""
    root = (home or fitdock_home()) / "runs"  # store.runs_root, without store's pydantic
    found: list[tuple[Path, dict[str, Any]]] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return found
    cache_path = root.parent / "cache" / LISTING_CACHE
    cached = _read_cache(cache_path)
    fresh: dict[str, list[Any]] = {}
    for entry in entries:
        record_path = os.path.join(entry.path, RECORD)
        try:
            stat = os.stat(record_path)
        except OSError:
            continue  # not a run folder
        hit = cached.get(entry.name)
        if hit is not None and hit[0] == stat.st_mtime_ns and hit[1] == stat.st_size:
            summary = hit[2]
        else:
            summary = _summary(record_path)
            if summary is None:
                continue  # a record being created
        fresh[entry.name] = [stat.st_mtime_ns, stat.st_size, summary]
        found.append((Path(entry.path), summary))
    if fresh != cached:
        _write_cache(cache_path, fresh)
    found.sort(key=lambda item: str(item[1].get("created_at") or ""))
    return found


def _summary(record_path: str) -> dict[str, Any] | None:
    try:
        with open(record_path, "rb") as handle:
            record = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {key: record.get(key) for key in SUMMARY}


def _read_cache(path: Path) -> dict[str, list[Any]]:
    try:
        with open(path, "rb") as handle:
            cached = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("version") != _CACHE_VERSION:
        return {}
    runs = cached.get("runs")
    return runs if isinstance(runs, dict) else {}


def _write_cache(path: Path, runs: dict[str, list[Any]]) -> None:
    """Best effort: a listing works without its cache (a read-only home, a full disk)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "runs": runs}))
        os.replace(tmp, path)
    except OSError:
        pass


# ------------------------------------------------------------------ filters
@dataclass(frozen=True)
class Filters:
    """What ``fitdock runs list`` keeps: any of ``statuses``, created at or after
    ``since``, ``name`` in the run's name or id (case-insensitive)."""

    statuses: frozenset[RunStatus] = frozenset()
    since: dt.datetime | None = None
    name: str | None = None


def matches(record: dict[str, Any], filters: Filters) -> bool:
    if filters.statuses and _status(record) not in filters.statuses:
        return False
    if filters.name:
        needle = filters.name.lower()
        if (
            needle not in str(record.get("name", "")).lower()
            and needle not in str(record.get("id", "")).lower()
        ):
            return False
    if filters.since is not None:
        created = parse_time(record.get("created_at"))
        if created is None or created < filters.since:
            return False
    return True


def parse_status(text: str) -> RunStatus:
    """A status given in any case (``completed``, ``TimedOut``)."""
    for status in RunStatus:
        if status.value.lower() == text.strip().lower():
            return status
    known = ", ".join(status.value for status in RunStatus)
    raise SpecError(f"--status {text!r}: use one of {known}", field="status")


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an age (``30m``, ``2h``, ``3d``, ``1w``) before ``now``, or an ISO date
    or time (local time unless it says otherwise)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    age = _AGE.match(text)
    if age is not None:
        return now - dt.timedelta(seconds=float(age.group(1)) * _AGE_SECONDS[age.group(2)])
    parsed = parse_time(text)
    if parsed is None:
        raise SpecError(
            f"--since {text!r}: give an ISO date or time (2026-12-01, 2026-12-01T09:30) "
            "or an age such as 45m, 2h, 3d, 1w",
            field="since",
        )
    return parsed


def parse_time(text: object) -> dt.datetime | None:
    """An ISO date or time as an aware datetime (a naive one is local time)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.astimezone()


def _status(record: dict[str, Any]) -> RunStatus | None:
    try:
        return RunStatus(record.get("status"))
    except ValueError:
        return None


# ------------------------------------------------------------------ durations
def duration_seconds(record: dict[str, Any], now: dt.datetime | None = None) -> float | None:
    """From the start to the end; to ``now`` while the run is live; None before it starts."""
    started = parse_time(record.get("started_at"))
    if started is None:
        return None
    ended = parse_time(record.get("ended_at"))
    if ended is None:
        status = _status(record)
        if status is not None and status.is_terminal:
            return None  # ended without a time: nothing to say
        ended = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (ended - started).total_seconds())


def format_duration(seconds: float | None) -> str:
    """``12.3 s``, ``4m 05s``, ``2h 03m``, ``3d 04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


# ------------------------------------------------------------------ metrics
def last_value(run_dir: Path, name: str, block: int = TAIL_BLOCK) -> Any:
    """The value last logged for metric ``name`` (any rank), or None: read backwards from
    the end of ``metrics.jsonl`` in blocks, stopping at the first line of that name."""
    try:
        with (run_dir / METRICS).open("rb") as handle:
            return _find_last(handle, name, block)
    except OSError:
        return None


def _find_last(handle: Any, name: str, block: int) -> Any:
    needle = json.dumps(name).encode()
    for line in _lines_backwards(handle, block):
        if needle not in line:
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(item, dict) and item.get("name") == name:
            return item.get("value")
    return None


def _lines_backwards(handle: Any, block: int) -> Iterator[bytes]:
    position = handle.seek(0, os.SEEK_END)
    carry = b""
    while position > 0:
        start = max(0, position - block)
        handle.seek(start)
        lines = (handle.read(position - start) + carry).split(b"\n")
        carry = lines.pop(0) if start > 0 else b""  # may start mid-line: keep for the next
        yield from reversed(lines)
        position = start


@dataclass(frozen=True)
class Point:
    """One numeric value of ``metrics.jsonl``; ``index`` counts the values of its
    (name, rank) in logging order, the step of a value logged without one."""

    name: str
    rank: int
    step: float
    value: float
    index: int


def read_points(run_dir: Path) -> list[Point]:
    """Every numeric value logged by the run, in logging order (tables, lists and text
    are left out: they have no curve)."""
    points: list[Point] = []
    counts: dict[tuple[str, int], int] = {}
    try:
        text = (run_dir / METRICS).read_text(errors="replace")
    except OSError:
        return points
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        value = item.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rank = item.get("rank")
        rank = rank if isinstance(rank, int) and not isinstance(rank, bool) else 0
        key = (item["name"], rank)
        index = counts.get(key, 0)
        counts[key] = index + 1
        step = item.get("step")
        step = step if isinstance(step, (int, float)) and not isinstance(step, bool) else index
        points.append(Point(item["name"], rank, float(step), float(value), index))
    return points


def metric_values(run_dir: Path) -> dict[str, list[float]]:
    """Metric name -> its numeric values in logging order (all ranks)."""
    values: dict[str, list[float]] = {}
    for point in read_points(run_dir):
        values.setdefault(point.name, []).append(point.value)
    return values
