"""``DelayedReturn``: what calling a ``@step`` function gives instead of running it.

It stands for the step's return value, which exists only once the step has run. Indexing
it (``r["rmse"]``, ``r[0]``, ``r[1]["k"]``) gives another ``DelayedReturn`` for a part of
that value; passing one to another step makes a data dependency, and that step receives
the real value. Everything that would need the value now (unpacking, iterating, ``bool``,
attributes) raises an error that says what to do instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fitdock.errors import SpecError

if TYPE_CHECKING:
    from fitdock.pipelines.steps import Step

Key = str | int


class DelayedReturnError(SpecError, NotImplementedError):
    """A ``DelayedReturn`` was used as if its value were known (unpacked, iterated)."""


class DelayedReturn:
    __slots__ = ("_path", "_step")

    def __init__(self, step: Step, path: tuple[Key, ...] = ()) -> None:
        object.__setattr__(self, "_step", step)
        object.__setattr__(self, "_path", path)

    @property
    def step(self) -> Step:
        return self._step  # type: ignore[no-any-return]

    @property
    def path(self) -> tuple[Key, ...]:
        return self._path  # type: ignore[no-any-return]

    def __getitem__(self, key: Any) -> DelayedReturn:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(
                f"{self!r}[{key!r}]: a part of a step's result is taken by a str key or an "
                "int index"
            )
        returns = getattr(self.step, "returns_sequence", False)
        if not self.path and returns and not isinstance(key, int):
            raise TypeError(
                f"{self!r}[{key!r}]: the function is annotated to return a tuple or list; "
                "index it with an int"
            )
        return DelayedReturn(self.step, (*self.path, key))

    def __iter__(self) -> Any:
        raise DelayedReturnError(
            f"{self!r} has no value yet, so it cannot be unpacked or iterated: take its "
            "parts by index instead (r[0], r[1], r['key']) and pass them to other steps"
        )

    def __len__(self) -> int:
        raise TypeError(f"{self!r} has no length yet: its value exists once the step has run")

    def __bool__(self) -> bool:
        raise TypeError(
            f"{self!r} has no truth value yet: its value exists once the step has run; "
            "branch on it with ConditionStep(conditions=[ConditionEquals(...)], ...)"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"{self!r} has no attribute {name!r}: its value exists once the step has run; "
            f"for a key of a returned dict use r[{name!r}], or return what you need"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "depends_on":
            raise AttributeError("use get_step(r).add_depends_on([...]) instead")
        raise AttributeError(f"a DelayedReturn cannot be changed (setting {name!r})")

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self!r} cannot be pickled: pass it to a step as an argument and the step "
            "receives the real value"
        )

    def __repr__(self) -> str:
        parts = "".join(f"[{key!r}]" for key in self.path)
        return f"DelayedReturn({self.step.name}(){parts})"


def get_step(value: DelayedReturn) -> Step:
    """The step behind a ``DelayedReturn`` (for ``add_depends_on``)."""
    if not isinstance(value, DelayedReturn):
        raise SpecError(f"get_step() takes a DelayedReturn, got {value!r}", field="value")
    return value.step


def references(value: Any) -> list[DelayedReturn]:
    """Every ``DelayedReturn`` in ``value``, looking inside lists, tuples, sets and dicts."""
    if isinstance(value, DelayedReturn):
        return [value]
    found: list[DelayedReturn] = []
    if isinstance(value, dict):
        for item in value.values():
            found += references(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            found += references(item)
    return found


KEEP = object()  # what a ``walk`` replacer returns for an item it leaves alone


def walk(value: Any, replace: Any) -> Any:
    """``value`` with each item that ``replace`` answers for (anything but ``KEEP``)
    replaced, inside lists, tuples and dicts (the shapes a step's arguments take)."""
    new = replace(value)
    if new is not KEEP:
        return new
    if isinstance(value, dict):
        return {key: walk(item, replace) for key, item in value.items()}
    if isinstance(value, list):
        return [walk(item, replace) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(walk(item, replace) for item in value)
    return value
