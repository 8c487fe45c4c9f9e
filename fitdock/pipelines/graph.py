"""The graph of a pipeline's steps: what a step waits for, every step the given ones
need, and cycles (pure functions over steps)."""

from __future__ import annotations

from fitdock.pipelines.data import PipelineData
from fitdock.pipelines.steps import Step


def dependencies(step: Step) -> list[Step]:
    """The steps ``step`` waits for: the producers of what it reads, and ``run_after``."""
    found = [*step.after, *data_dependencies(step)]
    unique: list[Step] = []
    for other in found:
        if not any(other is seen for seen in unique):
            unique.append(other)
    return unique


def data_dependencies(step: Step) -> list[Step]:
    """The steps whose results ``step`` receives: producers of its data, steps of its
    ``DelayedReturn``s. (A step skipped by a condition skips the steps that need its data.)"""
    found: list[Step] = [ref.step for ref in step.references()]
    for data in step.reads():
        if isinstance(data, PipelineData):
            found += data.producers
    return found


def closure(steps: list[Step]) -> list[Step]:
    """``steps`` and every step they depend on, dependencies first where possible."""
    ordered: list[Step] = []
    visiting: list[Step] = []

    def visit(step: Step) -> None:
        if any(step is seen for seen in ordered) or any(step is v for v in visiting):
            return
        visiting.append(step)
        for dependency in dependencies(step):
            visit(dependency)
        visiting.remove(step)
        ordered.append(step)

    pending = list(steps)
    while pending:
        for step in pending:
            visit(step)
        # a condition's branches belong to the pipeline too (with what they need)
        pending = [b for s in ordered for b in s.branches() if not any(b is o for o in ordered)]
    return ordered


def find_cycle(steps: list[Step]) -> list[Step] | None:
    """A cycle of dependencies as the path ``a, b, ..., a``, or None."""
    state: dict[int, str] = {}
    path: list[Step] = []

    def visit(step: Step) -> list[Step] | None:
        state[id(step)] = "open"
        path.append(step)
        for dependency in dependencies(step):
            if state.get(id(dependency)) == "open":
                start = next(i for i, s in enumerate(path) if s is dependency)
                return [*path[start:], dependency]
            if id(dependency) not in state:
                found = visit(dependency)
                if found:
                    return found
        path.pop()
        state[id(step)] = "done"
        return None

    for step in steps:
        if id(step) not in state:
            found = visit(step)
            if found:
                return list(reversed(found))
    return None
