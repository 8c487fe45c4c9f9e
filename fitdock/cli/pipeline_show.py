"""How ``fitdock pipeline show`` draws a pipeline run: the DAG as text (each step under
the step it depends on, with its state, duration and reuse, the branch a condition chose,
a function step's short result) or as Graphviz DOT."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from fitdock.runs.status import RunStatus

if TYPE_CHECKING:  # importing the pipelines package costs every `fitdock` command 0.3 s
    from fitdock.pipelines.record import PipelineRecord, StepState

WIDTH = 100  # lines stay within this many columns
SHORT = 60  # a function step's result, as compact JSON, is shown when at most this long
SKIPPED_FILL = "#eeeeee"


def ordered(record: PipelineRecord) -> list[StepState]:
    """The steps, each after every step it depends on, and as soon after its last
    dependency as that allows (depth first, record order among siblings)."""
    states = record.steps
    children: dict[str, list[str]] = {name: [] for name in states}
    for state in states.values():
        for dep in state.depends_on:
            children.setdefault(dep, []).append(state.name)
    placed: dict[str, StepState] = {}

    def place(name: str) -> None:
        placed[name] = states[name]
        for child in children[name]:
            deps = states[child].depends_on
            if child not in placed and all(d in placed or d not in states for d in deps):
                place(child)

    for name, state in states.items():
        if name not in placed and not any(d in states for d in state.depends_on):
            place(name)
    for name in states:  # only a cycle, which validation refuses, leaves steps out
        if name not in placed:
            placed[name] = states[name]
    return list(placed.values())


def draw(record: PipelineRecord) -> str:
    """The DAG as text, one line per step: under the step it depends on (``└─>``), then
    its state, duration, and a note: its run or the run it reused (then ``-> <result>``
    for a function step's short JSON result), a condition's chosen branch, a fail step's
    message; other steps it depends on are named on a line below it (``(also after a)``).
    Lines stay within WIDTH columns."""
    steps = ordered(record)
    not_taken = _not_taken(record)
    level: dict[str, int] = {}
    rows: list[tuple[str, str, StepState]] = []  # (tree, also after, state)
    for index, state in enumerate(steps):
        deps = [d for d in state.depends_on if d in level]
        depth = level[state.name] = 1 + max((level[d] for d in deps), default=-1)
        prefix = "" if depth == 0 else "    " * (depth - 1) + "└─> "
        above = next((s.name for s in reversed(steps[:index]) if level[s.name] == depth - 1), None)
        others = [d for d in deps if d != above]
        also = ""
        if others:
            also = " " * len(prefix) + f"({'also ' if above in deps else ''}after "
            also += ", ".join(others) + ")"
        rows.append((prefix + state.name, also, state))
    width = min(max((len(tree) for tree, _, _ in rows), default=0), 40)
    status = max((len(state.status.value) for state in steps), default=0)
    lines = [_headline(record)]
    for tree, also, state in rows:
        head = f"  {tree.ljust(width)}  {state.status.value.ljust(status)}  {_duration(state):>6}"
        lines += _placed(head, _note(state, not_taken), _result(state))
        if also:
            lines.append(_fit(f"  {also}"))
    return "\n".join(lines)


def _headline(record: PipelineRecord) -> str:
    head = f"pipeline {record.id} ({record.name}): {record.status.value}"
    head += f", created {when(record.created_at)}"
    if record.error:
        head += f"\n  error: {record.error.get('message', record.error)}"
    return _fit(head)


def _placed(head: str, note: str, result: str) -> list[str]:
    """The step's line, with its note (and ``-> result``) after it when they fit; else the
    note on a line of its own, as far left as the notes column allows, and the result on
    one more when it does not fit there either."""
    arrow = f"-> {result}" if result else ""
    full = " ".join(part for part in (note, arrow) if part)
    if not full or len(head) + 2 + len(full) <= WIDTH:
        return [f"{head}  {full}".rstrip()]
    if len(full) <= WIDTH - 6 or not result:
        return [head, _fit(" " * max(6, min(len(head) + 2, WIDTH - len(full))) + full)]
    return [*_placed(head, note, ""), " " * max(6, min(len(head) + 2, WIDTH - len(arrow))) + arrow]


def _not_taken(record: PipelineRecord) -> set[str]:
    """The steps on the side of a decided condition that it did not choose."""
    names: set[str] = set()
    for state in record.steps.values():
        if state.kind == "condition" and state.outcome is not None:
            names.update(state.branches.get("else" if state.outcome else "if", []))
    return names


def _note(state: StepState, not_taken: set[str]) -> str:
    if state.kind == "condition" and state.outcome is not None:
        side = "if" if state.outcome else "else"
        chosen = ", ".join(state.branches.get(side, [])) or "(no steps)"
        return f"condition {'held' if state.outcome else 'did not hold'}: {side} -> {chosen}"
    if state.status is RunStatus.SKIPPED and state.name in not_taken:
        return "skipped: branch not taken"
    if state.reused:
        return f"reused from {state.run_id}"
    note = f"run {state.run_id}" if state.run_id else ""
    if state.error:
        lines = str(state.error.get("message", state.error)).strip().splitlines()
        message = lines[0] if lines else str(state.error)
        note = f"{note}: {message}" if note else message
    elif state.kind == "condition" and not state.status.is_terminal:
        note = "not decided yet"
    return note


def _result(state: StepState) -> str:
    """A completed function step's result as compact JSON when it is short, else "".
    For display only: read from ``results.json`` unverified; any error shows nothing."""
    folder = state.outputs.get("results")
    if state.kind != "function" or state.status is not RunStatus.COMPLETED or not folder:
        return ""
    path = Path(folder) / "results.json"
    try:
        if path.stat().st_size > 16 * SHORT:  # cannot be short: not worth reading
            return ""
        text = json.dumps(json.loads(path.read_text()), separators=(",", ":"), sort_keys=True)
    except (OSError, ValueError, RecursionError):
        return ""
    return text if len(text) <= SHORT else ""


def when(iso: str) -> str:
    """A record's UTC timestamp to the second: ``2026-01-31 12:00:00 UTC``."""
    return iso[:19].replace("T", " ") + " UTC"


def _fit(line: str) -> str:
    line = line.rstrip()
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


def _duration(state: StepState) -> str:
    if state.started_at is None:
        return "-"
    start = datetime.fromisoformat(state.started_at)
    end = datetime.fromisoformat(state.ended_at) if state.ended_at else datetime.now(timezone.utc)
    seconds = max(0.0, (end - start).total_seconds())
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def dot(record: PipelineRecord) -> str:
    """Graphviz DOT: one node per step (name, state, "reused" when reused; dashed when
    reused; a condition a diamond; a skipped step grey and dotted), one edge per dependency
    (labelled "if" or "else" from a condition to the steps of its branches)."""

    fills = {RunStatus.COMPLETED: "#d9ead3", RunStatus.FAILED: "#f4cccc"}
    fills |= {RunStatus.TIMED_OUT: "#f4cccc", RunStatus.RUNNING: "#fff2cc"}
    lines = [
        f"digraph {_quote(record.id)} {{",
        f"  graph [label={_quote(f'{record.name}: {record.status.value}')}, labelloc=t];",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff"];',
    ]
    for state in ordered(record):
        label = f"{state.name}\n{state.status.value}" + (", reused" if state.reused else "")
        skipped = state.status is RunStatus.SKIPPED
        fill = SKIPPED_FILL if skipped else fills.get(state.status, "#ffffff")
        lines.append(
            f"  {_quote(state.name)} [label={_quote(label)}, fillcolor={_quote(fill)}"
            f"{_shape(state, skipped)}];"
        )
    sides = {
        (state.name, name): side
        for state in record.steps.values()
        if state.kind == "condition"
        for side, names in state.branches.items()
        for name in names
    }
    for state in ordered(record):
        for dep in state.depends_on:
            side = sides.get((dep, state.name))
            edge = f" [label={_quote(side)}]" if side else ""
            lines.append(f"  {_quote(dep)} -> {_quote(state.name)}{edge};")
    return "\n".join([*lines, "}"])


def _shape(state: StepState, skipped: bool) -> str:
    """DOT attributes beyond the defaults: a condition's diamond (not rounded), a reused
    step's dashes, a skipped step's dots."""
    condition = state.kind == "condition"
    styles = ([] if condition else ["rounded"]) + ["filled"]
    styles += ["dashed"] if state.reused else ["dotted"] if skipped else []
    shape = ", shape=diamond" if condition else ""
    style = ",".join(styles)
    return shape + (f", style={_quote(style)}" if style != "rounded,filled" else "")


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


# ------------------------------------------------------------------ explain, cancel, logs
