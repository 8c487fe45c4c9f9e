"""What a run looks like to MLflow, as plain data (no MLflow here): metric values read
from ``metrics.jsonl``, params, tags and tables. ``execution/tracking.py`` sends them.

    metrics.jsonl line                            MLflow
    {"name": "loss", "value": 0.5, "step": 3,  -> metric "loss" = 0.5 at step 3, its time
     "rank": 0, "time": ...}
    rank r > 0                                 -> metric "rank_<r>/<name>"
    no step                                    -> the count of that metric's values so far
    a value that is no number (text, None)     -> not mirrored; counted in ``skipped``
    tables.jsonl (log_row, log_table)          -> artifact tables/<name>.json (MLflow's form)
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from fitdock.runs.record import RunRecord

BATCH = 1000  # values in one log_batch (MLflow's limit)
RUN_TAG = "fitdock.run_id"  # on each MLflow run: the fitdock run (or pipeline run) it mirrors
MAX_KEY = 250  # MLflow's limits on names and values
MAX_PARAM = 6000
MAX_TAG = 8000
_BAD_KEY = re.compile(r"[^/\w.\- :]")
_SETTINGS = (
    "entry_script", "framework", "framework_version", "node_count", "process_count_per_node",
    "use_gpu", "use_docker", "max_run_duration_seconds", "max_restarts", "hang_timeout_seconds",
)  # fmt: skip
_PIPELINE_PARAMETER = "AML_PARAMETER_"


class Value(NamedTuple):
    """One metric value as MLflow takes it."""

    key: str
    value: float
    timestamp: int  # milliseconds
    step: int


def metric_key(name: str, rank: int = 0) -> str:
    """A metric or param name MLflow accepts (its characters, no path tricks, 250 long);
    a rank other than 0 is a prefix (``rank_1/loss``)."""
    key = _BAD_KEY.sub("_", name)
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):  # MLflow's own test
        key = key.replace("/", "_")
        key = "_" + key if key.startswith(".") else key
    key = key or "_"
    return (f"rank_{rank}/{key}" if rank else key)[:MAX_KEY]


class MetricReader:
    """``metrics.jsonl`` from a byte offset, complete lines only. Reading up to an offset
    given at the start rebuilds what the lines before it set (steps, skipped)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = 0
        self.values = 0  # numbers read so far
        self.steps: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        while self.offset < offset and self.read(BATCH, until=offset):
            pass

    def read(self, limit: int, until: int | None = None) -> list[Value]:
        """Up to ``limit`` values after the offset, which moves past the lines read."""
        found: list[Value] = []
        try:
            stream = self.path.open("rb")
        except FileNotFoundError:
            return found
        with stream:
            stream.seek(self.offset)
            while len(found) < limit and (until is None or self.offset < until):
                line = stream.readline()
                if not line.endswith(b"\n"):  # nothing more, or a line still being written
                    break
                self.offset += len(line)
                value = self._parse(line)
                if value is not None:
                    found.append(value)
        self.values += len(found)
        return found

    def _parse(self, line: bytes) -> Value | None:
        try:
            entry = json.loads(line)
            name, value = str(entry["name"]), entry.get("value")
            rank = int(entry.get("rank") or 0)
        except (ValueError, KeyError, TypeError):
            self._skip("(unreadable line)")
            return None
        if not isinstance(value, (int, float)):
            self._skip(name)
            return None
        key = metric_key(name, rank)
        count = self.steps.get(key, 0)
        self.steps[key] = count + 1
        step = entry.get("step")
        step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else count
        stamp = entry.get("time")
        stamp = float(stamp) if isinstance(stamp, (int, float)) else time.time()
        return Value(key, float(value), int(stamp * 1000), step)

    def _skip(self, name: str) -> None:
        self.skipped[name] = self.skipped.get(name, 0) + 1


def count_values(path: Path, offset: int) -> int:
    """The numbers in ``metrics.jsonl`` after ``offset`` (what is left to send)."""
    reader = MetricReader(path)
    reader.offset = offset
    while reader.read(100_000):
        pass
    return reader.values


def script_params(argv: Sequence[str]) -> dict[str, str]:
    """``data.csv --lr 0.1 --fast`` -> ``{"arg.0": "data.csv", "lr": "0.1", "fast": "true"}``;
    ``--lr=0.1`` too; a flag given twice keeps both values, comma-joined."""
    found: dict[str, list[str]] = {}
    positional = 0
    words = list(argv)
    index = 0
    while index < len(words):
        word = words[index]
        if _is_flag(word):
            name, equals, value = word.lstrip("-").partition("=")
            if not equals:
                following = words[index + 1] if index + 1 < len(words) else "--"
                if _is_flag(following) or following == "--":
                    value = "true"
                else:
                    value, index = following, index + 1
            found.setdefault(name, []).append(value)
        elif word != "--":
            found[f"arg.{positional}"] = [word]
            positional += 1
        index += 1
    return {name: ",".join(values) for name, values in found.items()}


def _is_flag(word: str) -> bool:
    if not word.startswith("-") or word == "--" or len(word) < 2:
        return False
    try:
        float(word)
    except ValueError:
        return True
    return False  # a negative number


def run_params(record: RunRecord) -> dict[str, str]:
    """The script's params by name, the estimator's settings (``fitdock.*``) and a pipeline
    step's parameters (``pipeline.*``)."""
    spec = record.spec
    params = {metric_key(k): v for k, v in script_params(spec.get("arguments") or []).items()}
    for name in _SETTINGS:
        if spec.get(name) is not None:
            params[f"fitdock.{name}"] = _text(spec[name])
    params["fitdock.world_size"] = str(record.world_size)
    params["fitdock.compute_target"] = _text(spec.get("compute_target"))
    if spec.get("distribution") is not None:
        params["fitdock.distribution"] = _text(spec["distribution"])
    params["fitdock.environment"] = _text((spec.get("environment") or {}).get("name"))
    for name, value in (spec.get("variables") or {}).items():
        if name.startswith(_PIPELINE_PARAMETER):
            params[metric_key(f"pipeline.{name[len(_PIPELINE_PARAMETER) :]}")] = str(value)
    return {key: value[:MAX_PARAM] for key, value in params.items()}


def run_tags(record: RunRecord, own: Mapping[str, str] | None = None) -> dict[str, str]:
    """fitdock's tags (framework, target, environment hash, git commit, version), then the
    run's own (``own``: its tags and properties), which never replace fitdock's."""
    spec = record.spec
    tags = {
        RUN_TAG: record.id,
        "fitdock.version": record.fitdock_version,
        "fitdock.framework": str(spec.get("framework")),
        "fitdock.target": record.target,
        "fitdock.environment_hash": record.environment_hash,
        "mlflow.source.name": str(spec.get("entry_script")),
        "mlflow.source.type": "JOB",
    }
    if record.source.git_commit:
        tags["mlflow.source.git.commit"] = record.source.git_commit
    if record.parent_id:
        tags["fitdock.parent_id"] = record.parent_id
    for key, value in (own or {}).items():
        tags.setdefault(metric_key(key), str(value))
    return {key: value[:MAX_TAG] for key, value in tags.items()}


def table_json(columns: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A table as ``logbook.tables`` gives it (column -> values) in MLflow's form, the one
    ``mlflow.log_table`` writes: ``{"columns": [...], "data": [[row], ...]}``."""
    names = list(columns)
    rows = max((len(values) for values in columns.values()), default=0)
    data = [[_at(columns[name], row) for name in names] for row in range(rows)]
    return {"columns": names, "data": data}


def _at(values: list[Any], index: int) -> Any:
    return values[index] if index < len(values) else None


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)
