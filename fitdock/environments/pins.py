"""How a user's pip requirements merge with an environment's curated pins, as pure functions.

For each package a user names that the curated environment already pins:

- a requirement without a version (``numpy``, ``NumPy``, ``numpy[extra]``,
  ``numpy; python_version > "3"``) keeps the curated pin; its extras are added to
  the pin, its marker is dropped (the pin installs the package wherever the user's
  line would). When the pin has a marker of its own and the user's line another one,
  both lines stay (pip applies both where both hold);
- a requirement with a version or a URL replaces the pin, and the replacement is
  recorded as a ``PinOverride`` (the pin's own version, however spelled, keeps it);
- a version that cannot be satisfied together with the pin is a ``SpecError`` that
  names both, before anything is built. So are two of the user's own requirements
  of one package (a requirements file line and a ``pip_packages`` entry, say) that
  cannot both hold.

Markers are not evaluated: a versioned line is checked, and replaces the pin,
whatever its marker says. Requirements with URLs are never checked (their version
is unknown until pip fetches them). ``witness`` decides whether specifier sets can
all hold at once, from candidate versions at and around their boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict

from fitdock.errors import SpecError


class PinOverride(BaseModel):
    """A user's versioned requirement that replaced a curated pin of the same package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str  # canonical name, e.g. "numpy"
    curated: str  # the pin as the curated environment had it, e.g. "numpy>=1.24,<2"
    requested: str  # the user's line as written, e.g. "numpy==1.26.4"
    field: str = "pip_packages"  # the argument the line came from


class UserRequirement(NamedTuple):
    """One line a user asked for, and the argument it came from (named in errors)."""

    spec: str
    field: str = "pip_packages"


@dataclass(frozen=True)
class PipMerge:
    """The merged pip packages (pins first, then the user's lines) and what replaced pins."""

    packages: list[str]
    overrides: list[PinOverride]


def merge_pip(
    pinned: Sequence[str], requested: Sequence[UserRequirement], *, owner: str
) -> PipMerge:
    """Merge ``requested`` into the curated ``pinned`` of environment ``owner`` (see above)."""
    users = [(item, _parse(item.spec)) for item in requested]
    _check_requested([(item, req) for item, req in users if req is not None])
    packages: list[str] = []
    overrides: list[PinOverride] = []
    folded: set[int] = set()
    for pin in pinned:
        req = _parse(pin)
        name = canonicalize_name(req.name) if req is not None else None
        mine = [i for i, (_, u) in enumerate(users) if u is not None and _name(u) == name]
        if req is None or not mine:
            packages.append(pin)
            continue
        versioned = [users[i] for i in mine if _replaces(req, users[i][1])]
        if versioned:
            _check_against_pin(pin, req, versioned, owner)
            overrides += [
                PinOverride(package=_name(req), curated=pin, requested=item.spec, field=item.field)
                for item, _ in versioned
            ]
            continue
        foldable = [i for i in mine if _foldable(req, users[i][1])]
        folded.update(foldable)
        packages.append(_with_extras(pin, req, [users[i][1] for i in foldable]))
    packages += [item.spec for i, (item, _) in enumerate(users) if i not in folded]
    return PipMerge(packages=packages, overrides=overrides)


# Satisfiability ------------------------------------------------------------------------------
def satisfiable(*sets: SpecifierSet) -> bool:
    """True when one version (prereleases allowed) satisfies every set."""
    return witness(*sets) is not None


def witness(*sets: SpecifierSet) -> str | None:
    """A version inside every set, preferring one the specifiers name and final releases;
    ``None`` when no version can satisfy them all."""
    combined = SpecifierSet()
    for one in sets:
        combined &= one
    for candidate in _candidates(combined):
        if combined.contains(candidate, prereleases=True):
            return candidate
    return None


def _candidates(combined: SpecifierSet) -> Iterator[str]:
    """Versions at, just below and just above every boundary of ``combined``: the sets'
    verdicts only change at those, so if none of them fits, no version does."""
    literals = [s.version for s in combined if s.operator == "==="]
    bounds = [v for s in combined for v in _boundaries(s.operator, s.version)]
    width = max((len(v.release) for v in bounds), default=1) + 1
    top = max((n for v in bounds for n in v.release), default=0) + 1
    near = [str(n) for v in bounds for n in _around(v, width, top)]
    finals = [c for c in near if not Version(c).is_prerelease and "+" not in c]
    ordered = [*literals, *(str(v) for v in bounds), *finals, *near, "0", "0.dev0"]
    yield from dict.fromkeys(ordered)


def _boundaries(operator: str, text: str) -> list[Version]:
    """The versions at which one specifier's verdict can change."""
    if operator == "===":
        return [v for v in [_version(text)] if v is not None]
    if text.endswith(".*"):  # ==1.2.* / !=1.2.*: the family [1.2.dev0, 1.3.dev0)
        prefix = Version(text[:-2])
        return [prefix, _bump(prefix)]
    version = Version(text)
    if operator == "~=":  # ~=1.4.5 is >=1.4.5, ==1.4.*
        return [version, _bump(_make(version.epoch, version.release[:-1]))]
    return [version]


def _around(version: Version, width: int, top: int) -> list[Version]:
    """``version``, its release's neighbours and the pre/post/dev releases beside it."""
    epoch, release = version.epoch, version.release
    base = _make(epoch, release)
    out = [version, base, _make(epoch, release, dev=0), _make(epoch, release, post=0)]
    up = (*release, *(0,) * (width - len(release)), 1)  # above base and all its post-releases
    out += [_make(epoch, up, dev=0), _make(epoch, up)]
    nonzero = [i for i, n in enumerate(release) if n]
    if nonzero:  # below base and its pre-releases, above every other boundary under it
        i = nonzero[-1]
        out.append(_make(epoch, (*release[:i], release[i] - 1, top)))
    elif epoch:
        out.append(_make(epoch - 1, (top,)))
    if version.pre is not None:
        phase, n = version.pre
        out += [_make(epoch, release, pre=(phase, n + 1)), _make(epoch, release, pre=(phase, n))]
        out += [_make(epoch, release, pre=(phase, n), dev=0)]
        out += [_make(epoch, release, pre=(phase, n), post=0)]
        if n:
            out.append(_make(epoch, release, pre=(phase, n - 1)))
    if version.post is not None:
        n = version.post
        out += [_make(epoch, release, post=n + 1), _make(epoch, release, post=n, dev=0)]
        if n:
            out.append(_make(epoch, release, post=n - 1))
    if version.dev is not None:
        pre, post, n = version.pre, version.post, version.dev
        out.append(_make(epoch, release, pre=pre, post=post, dev=n + 1))
        if n:
            out.append(_make(epoch, release, pre=pre, post=post, dev=n - 1))
    return out


def _make(
    epoch: int,
    release: tuple[int, ...],
    *,
    pre: tuple[str, int] | None = None,
    post: int | None = None,
    dev: int | None = None,
) -> Version:
    text = f"{epoch}!" + ".".join(str(n) for n in release or (0,))
    text += f"{pre[0]}{pre[1]}" if pre else ""
    text += f".post{post}" if post is not None else ""
    text += f".dev{dev}" if dev is not None else ""
    return Version(text)


def _bump(version: Version) -> Version:
    """The next release of the same length: 1.2 -> 1.3."""
    release = version.release or (0,)
    return _make(version.epoch, (*release[:-1], release[-1] + 1))


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


# Checks ---------------------------------------------------------------------------------------
def _check_requested(users: Sequence[tuple[UserRequirement, Requirement]]) -> None:
    """Two of the user's own requirements of one package must be able to hold together."""
    groups: dict[str, list[tuple[UserRequirement, Requirement]]] = {}
    for item, req in users:
        if req.specifier and not req.url:
            groups.setdefault(_name(req), []).append((item, req))
    for name, group in groups.items():
        for later, (item, req) in enumerate(group):
            for earlier, ereq in group[:later]:
                if not satisfiable(req.specifier, ereq.specifier):
                    raise SpecError(
                        f"{item.field} {item.spec!r} cannot be satisfied together with "
                        f"{earlier.field} {earlier.spec!r}: give {name} once, or versions "
                        "that overlap",
                        field=item.field,
                    )
        if not satisfiable(*(req.specifier for _, req in group)):
            lines = " and ".join(f"{item.field} {item.spec!r}" for item, _ in group)
            raise SpecError(
                f"{lines} cannot all be satisfied together: give {name} once",
                field=group[-1][0].field,
            )


def _check_against_pin(
    pin: str,
    req: Requirement,
    users: Sequence[tuple[UserRequirement, Requirement | None]],
    owner: str,
) -> None:
    """Each of the user's versioned lines, and all of them together, must fit inside the pin."""
    checked = [(item, mine) for item, mine in users if mine is not None and not mine.url]
    if req.url or not req.specifier or not checked:
        return
    for item, mine in checked:
        if not satisfiable(mine.specifier, req.specifier):
            raise _pin_error(f"{item.field} {item.spec!r}", item.field, pin, req, owner)
    if not satisfiable(req.specifier, *(mine.specifier for _, mine in checked)):
        lines = " and ".join(f"{item.field} {item.spec!r}" for item, _ in checked)
        raise _pin_error(lines, checked[-1][0].field, pin, req, owner)


def _pin_error(lines: str, field: str, pin: str, req: Requirement, owner: str) -> SpecError:
    example = witness(req.specifier)
    hint = f" (e.g. '{_name(req)}=={example}')" if example else ""
    return SpecError(
        f"{lines} cannot be satisfied together with the curated pin {pin!r} of {owner}: "
        f"give a version inside it{hint}, or pass environment_definition= to take the "
        "packages over entirely",
        field=field,
    )


# Requirements ---------------------------------------------------------------------------------
def _parse(spec: str) -> Requirement | None:
    try:
        return Requirement(spec.strip())
    except InvalidRequirement:
        return None  # a path or a VCS URL: kept as written, never merged


def _name(req: Requirement) -> str:
    return canonicalize_name(req.name)


def _replaces(pin: Requirement, user: Requirement | None) -> bool:
    """A version or URL replaces the pin, unless it is the pin's own (``NumPy<2,>=1.24``)."""
    if user is None or not (user.specifier or user.url):
        return False
    return (user.specifier, user.url) != (pin.specifier, pin.url)


def _foldable(pin: Requirement, user: Requirement | None) -> bool:
    """An unversioned line folds into the pin unless the pin has another marker."""
    return user is not None and (pin.marker is None or str(user.marker) == str(pin.marker))


def _with_extras(pin: str, req: Requirement, users: Sequence[Requirement | None]) -> str:
    """The pin with the user's extras added; the pin as written when none are new."""
    extras = set(req.extras).union(*(u.extras for u in users if u is not None))
    if extras == req.extras:
        return pin
    url = f" @ {req.url}" if req.url else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}[{','.join(sorted(extras))}]{req.specifier}{url}{marker}"
