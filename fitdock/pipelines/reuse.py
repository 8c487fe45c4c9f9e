"""Content-addressed reuse of pipeline steps, and why a step ran.

A step's key is the hash of named parts, all kept beside the key: its kind and script,
the content of its source directory (file names and bytes, minus ignored files), its
arguments with every piece of data replaced by the content hash of that data (changed
data reruns, the same data at a new path reuses), its params after substitution, the
content of its inputs, its environment's hash, its distribution and counts, and its
version. No run ids, timestamps or paths: the compute target is not in the key either,
except where it changes the environment (GPU rows differ from CPU rows).

``$FITDOCK_HOME/pipelines/cache/<key>.json`` holds the completed step run of a key and
the content hashes of its outputs, verified again before a reuse: missing or modified
outputs mean a rerun, never a silent wrong reuse. ``cache/steps/<name>.json`` lists the
keys a step name had, newest last, so that ``explain`` can name what changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitdock.runs.contenthash import TreeHash, hash_path
from fitdock.runs.layout import RECORD
from fitdock.runs.store import runs_root
from fitdock.shared import now_iso, read_json, write_json_atomic
from fitdock.specs.job import JobSpec

HISTORY = 20  # keys kept per step name for explain


@dataclass(frozen=True)
class Hit:
    key: str
    run_id: str
    outputs: dict[str, str]  # PipelineData name -> path
    output_hashes: dict[str, str]


def cache_root() -> Path:
    from fitdock.pipelines.record import pipelines_root

    return pipelines_root() / "cache"


def key_parts(
    kind: str,
    script: str,
    spec: JobSpec,
    tree: TreeHash,
    arguments: list[Any],
    params: dict[str, str],
    inputs: dict[str, str],
    version: str | None,
) -> dict[str, Any]:
    """The named parts of a step's key. ``arguments`` and ``inputs`` already hold content
    hashes in place of data paths; ``tree``: the source directory's content."""
    return {
        "kind": kind,
        "script": script,
        "source": {"digest": tree.digest, "files": tree.files},
        "arguments": arguments,
        "params": params,
        "inputs": inputs,
        "environment": spec.environment.hash(),
        "distribution": {
            "node_count": spec.node_count,
            "process_count_per_node": spec.process_count_per_node,
            "distribution": spec.distribution.model_dump(mode="json")
            if spec.distribution
            else None,
        },
        "version": version,
    }


def key_of(parts: dict[str, Any]) -> str:
    compact = {**parts, "source": parts["source"]["digest"]}
    blob = json.dumps(compact, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def lookup(key: str, max_age: dt.timedelta | None = None) -> Hit | None:
    """The completed step of ``key`` whose outputs are still as they were (and, with
    ``max_age``, that is not older), or None."""
    entry = read_json(cache_root() / f"{key}.json")
    if not entry or not (runs_root() / entry["run_id"] / RECORD).is_file():
        return None  # never completed, or its run was deleted since
    if max_age is not None and _age(entry.get("created_at", "")) > max_age:
        return None
    outputs: dict[str, str] = entry.get("outputs", {})
    hashes: dict[str, str] = entry.get("output_hashes", {})
    for name, path in outputs.items():
        try:
            if hash_path(Path(path)) != hashes.get(name):
                return None
        except OSError:
            return None
    return Hit(key, entry["run_id"], outputs, hashes)


def _age(stamp: str) -> dt.timedelta:
    try:
        made = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return dt.timedelta.max
    return dt.datetime.now(made.tzinfo) - made


def store(
    step: str,
    key: str,
    parts: dict[str, Any],
    run_id: str,
    outputs: dict[str, str],
    output_hashes: dict[str, str],
) -> None:
    root = cache_root()
    (root / "steps").mkdir(parents=True, exist_ok=True)
    entry = {
        "key": key,
        "step": step,
        "run_id": run_id,
        "parts": parts,
        "outputs": outputs,
        "output_hashes": output_hashes,
        "created_at": now_iso(),
    }
    write_json_atomic(root / f"{key}.json", entry, fsync=False)
    remember(step, key, parts)


def remember(step: str, key: str, parts: dict[str, Any]) -> None:
    """Add ``key`` (with its parts) to the step name's history, newest last."""
    path = _history_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = [h for h in read_json(path).get("keys", []) if h["key"] != key]
    history = [*history, {"key": key, "parts": parts, "at": now_iso()}][-HISTORY:]
    write_json_atomic(path, {"step": step, "keys": history}, fsync=False)


def explain(step: str, key: str, parts: dict[str, Any]) -> str:
    """Why a step with ``key`` runs: what differs from the newest earlier key of the same
    step, part by part (which files of its source, which argument, ...)."""
    earlier = [h for h in read_json(_history_path(step)).get("keys", []) if h["key"] != key]
    if not earlier:
        return "ran: never run before"
    before = earlier[-1]["parts"]
    described = (
        _describe(name, before.get(name), parts.get(name))
        for name in parts
        if _comparable(before.get(name)) != _comparable(parts.get(name))
    )
    changes = [change for change in described if change]
    if not changes:
        return f"ran: no earlier completed run of key {key[:12]} is left intact"
    return "ran: " + "; ".join(changes)


def _comparable(value: Any) -> Any:
    return value.get("digest") if isinstance(value, dict) and "digest" in value else value


def _describe(name: str, old: Any, new: Any) -> str:
    if name == "source" and isinstance(old, dict) and isinstance(new, dict):
        before, after = old.get("files", {}), new.get("files", {})
        changed = sorted(f for f in set(before) | set(after) if before.get(f) != after.get(f))
        shown = ", ".join(
            f"{f} ({'added' if f not in before else 'removed' if f not in after else 'changed'})"
            for f in changed[:5]
        )
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        return f"source files: {shown}{more}"
    if name == "arguments" and isinstance(old, list) and isinstance(new, list):
        changed = [
            f"argument {i + 1}: {_short(a)} -> {_short(b)}"
            for i, (a, b) in enumerate(zip(old, new, strict=False))
            if a != b and not (_is_data(a) and _is_data(b))  # data: said under inputs
        ]
        if len(old) != len(new):
            changed.append(f"{len(old)} arguments -> {len(new)}")
        return "; ".join(changed)  # empty: only the data they name changed (see inputs)
    if name in ("params", "inputs") and isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if name == "inputs":
            return "; ".join(f"input {k}: its content changed" for k in keys)
        return "; ".join(f"param {k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys)
    if name == "environment":
        return "the environment changed (its packages, variables or image)"
    if name == "function":
        return "the function's code changed"
    if name == "dependencies":
        return "the dependencies file changed"
    return f"{name}: {_short(old)} -> {_short(new)}"


def _is_data(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("data:")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _history_path(step: str) -> Path:
    digest = hashlib.sha256(step.encode()).hexdigest()[:16]
    return cache_root() / "steps" / f"{digest}.json"
