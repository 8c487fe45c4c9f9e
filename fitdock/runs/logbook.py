"""The files a script logs into its run: their names, and reading them back in Azure's shapes.

Stdlib only and light: ``runs/context.py`` (every rank imports it) writes these files and
reads through this module. Each is JSON lines that ``RunContext`` appends to; a last line
that a rank is still writing (no newline yet) is left for the next read. ``runs/layout.py``
lists the names with the rest of the run folder's.

* ``metrics``: Azure's ``get_metrics()``: a metric logged once is its value, several times
  a list (``as_lists`` gives lists always; ``log_list`` always a list), a table (rows and
  tables) a dict of columns, an image the path of its file in the run folder.
* ``as_readers_see``: the record (``run.json``) with the tags the script set merged in,
  and Failed where the script called ``fail()`` but exited 0. The supervisor owns
  ``run.json``; the script never writes it, so nothing races.
* ``azure_details``: Azure's ``get_details()`` (``runId``, ``status``, ``startTimeUtc``,
  ``endTimeUtc``, ``properties``, ``runDefinition``, ``logFiles``), with the record.
* ``artifact_path``: where a file of the run named as in Azure lies (``outputs/x`` is
  ``<run>/outputs/x``; a name outside ``outputs``, ``logs`` and ``checkpoints`` is kept in
  ``<run>/uploads/``).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

METRICS = "metrics.jsonl"  # log(), log_list(): one line per value
TABLES = "tables.jsonl"  # log_row(), log_table(): one line per call
TAGS = "tags.jsonl"  # tag(), set_tags(), add_properties(): one line per call
IMAGE_LOG = "images.jsonl"  # log_image(): one line per image
STATUS_LOG = "status.jsonl"  # complete(), fail(): what the script declared
UPLOADS = "uploads"  # upload_file(), upload_folder(): files by the names they were given
IMAGES = "images"  # outputs/images/: the PNGs of log_image()
SCRIPT_FILES = (METRICS, TABLES, TAGS, IMAGE_LOG, STATUS_LOG, UPLOADS)  # in the run folder
RECORD = "run.json"  # the record, which the script reads (its shape: runs/record.py)
_OUTPUTS, _LOGS, _CHECKPOINTS = "outputs", "logs", "checkpoints"  # as in runs/layout.py
ARTIFACT_FOLDERS = (_OUTPUTS, _LOGS, _CHECKPOINTS)  # the file "outputs/x" is outputs/x
DECLARED_FAILURE = "the script called fail()"


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (none when it does not exist)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    found = []
    for raw in data.split(b"\n")[:-1]:  # after the last newline: a line still being written
        if raw.strip():
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
    return found


def read_record(run_dir: Path) -> dict[str, Any]:
    """``run.json`` as JSON ({} while there is none)."""
    try:
        found = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _wanted(line: dict[str, Any], name: str | None, rank: int | None) -> bool:
    return (name is None or line.get("name") == name) and (rank is None or line.get("rank") == rank)


# ---------------------------------------------------------------------------------- metrics
def metrics(
    run_dir: Path, name: str | None = None, rank: int | None = None, as_lists: bool = False
) -> dict[str, Any]:
    """Metric name -> value(s), in Azure's shape (see the module's docstring)."""
    values: dict[str, list[Any]] = {}
    lists: set[str] = set()
    for line in read_lines(run_dir / METRICS):
        if _wanted(line, name, rank):
            values.setdefault(line["name"], []).append(line.get("value"))
            if line.get("kind") == "list":
                lists.add(line["name"])
    found: dict[str, Any] = {
        key: _shaped(seen, as_lists or key in lists) for key, seen in values.items()
    }
    found.update(tables(run_dir, name, rank))
    for key, paths in images(run_dir, name, rank).items():
        found[key] = _shaped(paths, as_lists)
    return found


def _shaped(values: list[Any], as_list: bool) -> Any:
    return values[0] if len(values) == 1 and not as_list else values


def tables(
    run_dir: Path, name: str | None = None, rank: int | None = None
) -> dict[str, dict[str, list[Any]]]:
    """Table name -> column -> values: the rows and tables logged under that name, in
    order; a column that a row or table did not give holds ``None`` there."""
    found: dict[str, dict[str, list[Any]]] = {}
    counts: dict[str, int] = {}
    for line in read_lines(run_dir / TABLES):
        if not _wanted(line, name, rank):
            continue
        if line.get("kind") == "row":
            block = {key: [value] for key, value in line["row"].items()}
        else:
            block = line["columns"]
        added = len(next(iter(block.values()), []))
        table, count = found.setdefault(line["name"], {}), counts.get(line["name"], 0)
        for key in block:
            table.setdefault(key, [None] * count)
        for key, column in table.items():
            column.extend(block.get(key, [None] * added))
        counts[line["name"]] = count + added
    return found


def images(run_dir: Path, name: str | None = None, rank: int | None = None) -> dict[str, list[str]]:
    """Image name -> its files (paths relative to the run folder), in logging order."""
    found: dict[str, list[str]] = {}
    for line in read_lines(run_dir / IMAGE_LOG):
        if _wanted(line, name, rank):
            found.setdefault(line["name"], []).append(line["path"])
    return found


# ---------------------------------------------------------------------------------- tags
def merged_tags(record: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """The record's tags, then the script's (a later value of a key wins)."""
    found = dict(record.get("tags") or {})
    for line in read_lines(run_dir / TAGS):
        if line.get("kind") == "tags":
            found.update(line["values"])
    return found


def read_properties(run_dir: Path) -> dict[str, str]:
    """The properties the script added (a property keeps its first value, as Azure's)."""
    found: dict[str, str] = {}
    for line in read_lines(run_dir / TAGS):
        if line.get("kind") == "properties":
            for key, value in line["values"].items():
                found.setdefault(key, value)
    return found


def declared_failure(run_dir: Path) -> dict[str, Any] | None:
    """The first ``fail()`` the script called, or ``None``."""
    for line in read_lines(run_dir / STATUS_LOG):
        if line.get("status") == "Failed":
            return line
    return None


def as_readers_see(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The record with the script's tags merged in, and Failed where the script declared a
    failure but exited 0 (the error names the rank and what it said)."""
    shown = {**record, "tags": merged_tags(record, run_dir)}
    if record.get("status") == "Completed":
        failure = declared_failure(run_dir)
        if failure is not None:
            said = failure.get("details")
            message = DECLARED_FAILURE + (f": {said}" if said else "")
            shown["status"] = "Failed"
            shown["error"] = {"reason": "rank_failed", "message": message,
                              "rank": failure.get("rank")}  # fmt: skip
    return shown


# ---------------------------------------------------------------------------------- files
def artifact_path(run_dir: Path, name: str) -> Path:
    """Where the run's file ``name`` lies (``ValueError`` for a name that would leave it)."""
    pure = PurePosixPath(name) if isinstance(name, str) else PurePosixPath()
    if not pure.parts or pure.is_absolute() or ".." in pure.parts or "\\" in str(name):
        raise ValueError(f"a file name in the run must be a relative path, got {name!r}")
    root = run_dir if pure.parts[0] in ARTIFACT_FOLDERS else run_dir / UPLOADS
    return root.joinpath(*pure.parts)


def uploaded_names(run_dir: Path) -> list[str]:
    """The names of the files uploaded under other names than outputs/, logs/, ..."""
    folder = run_dir / UPLOADS
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------- details
def azure_details(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Azure's ``get_details()`` of a record (as ``as_readers_see`` gives it), with the
    record itself under ``record``."""
    spec = record.get("spec") or {}
    logs = run_dir / _LOGS
    details: dict[str, Any] = {
        "runId": record.get("id"),
        "target": record.get("target"),
        "status": record.get("status"),
        "startTimeUtc": _utc(record.get("started_at")),
        "endTimeUtc": _utc(record.get("ended_at")),
        "parentRunId": record.get("parent_id"),
        "properties": read_properties(run_dir),
        "tags": record.get("tags") or {},
        "inputDatasets": [],
        "outputDatasets": [],
        "runDefinition": {
            "script": spec.get("entry_script"),
            "arguments": list(spec.get("arguments") or []),
            "target": record.get("target"),
            "framework": spec.get("framework"),
            "nodeCount": spec.get("node_count"),
            "processCountPerNode": spec.get("process_count_per_node"),
            "environment": {"name": (spec.get("environment") or {}).get("name")},
        },
        "logFiles": {
            f"logs/{p.relative_to(logs).as_posix()}": str(p)
            for p in (sorted(logs.rglob("*")) if logs.is_dir() else [])
            if p.is_file()
        },
        "record": record,
    }
    error = record.get("error")
    if error:
        details["error"] = {"error": {"code": error.get("reason"), "message": error.get("message")}}
    return details


def _utc(stamp: str | None) -> str | None:
    """fitdock's ISO time (``+00:00``) as Azure writes it (``Z``)."""
    return stamp[: -len("+00:00")] + "Z" if stamp and stamp.endswith("+00:00") else stamp
