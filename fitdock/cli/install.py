"""``fitdock install EXTRA...``: install one of fitdock's extras into this interpreter with pip,
including the ones that ``pip install 'fitdock[EXTRA]'`` cannot install on a fresh machine.

Chainer 7.8.1 is a source distribution whose build imports ``pkg_resources``, which
setuptools 82 removed; pip builds it in an isolated environment with the newest setuptools,
so a plain install fails unless the user points ``PIP_BUILD_CONSTRAINT`` (pip >= 25.3) or
``PIP_CONSTRAINT`` (older pips, replacing their own constraints) at a pins file. Instead this
installs the extra's requirements first (they carry Chainer's pins: setuptools < 82, NumPy
< 2), then builds Chainer against them without isolation, in two pip commands that work with
every pip and leave the user's pip settings alone. The plan is data: ``--dry-run`` prints it.
The requirements come from fitdock's own metadata (``setup.cfg``'s extras), never a copy.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fitdock.errors import FitdockError, SpecError

# Source distributions that must be built against the pins already installed (their
# build requirements, installed in the first step when the extra does not name them).
BUILT_IN_PLACE = {"chainer": ("setuptools>=77.0.3,<82",)}

HELP = """Install fitdock's extras (e.g. chainer, mpi, docker, torch) into this interpreter
with pip. Unlike `pip install 'fitdock[chainer]'`, this also works on a fresh machine and an
empty pip cache: Chainer 7.8.1's source build needs setuptools < 82, so its pins are
installed first and Chainer is built against them (pip --no-build-isolation). pip's output
goes to a log under $FITDOCK_HOME/logs; --dry-run prints the pip commands instead."""

EPILOG = """examples:
  fitdock install chainer
  fitdock install chainer --dry-run     # the pip commands, to run by hand
  fitdock install mpi docker
"""


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock install``."""
    install = subparsers.add_parser(
        "install",
        help="install fitdock's extras (chainer, mpi, ...) so that they work here",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    install.add_argument("extras", nargs="+", metavar="EXTRA", help="an extra of fitdock")
    install.add_argument(
        "--python", default=sys.executable, help="the interpreter to install into (default: this)"
    )
    install.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    install.set_defaults(func=cmd_install)


def extras() -> dict[str, list[str]]:
    """fitdock's extras and their requirements, from its installed metadata."""
    from packaging.requirements import Requirement

    try:
        meta = metadata.metadata("fitdock")
    except metadata.PackageNotFoundError as exc:
        raise FitdockError("fitdock's metadata is missing: reinstall fitdock") from exc
    requires = [Requirement(line) for line in meta.get_all("Requires-Dist") or []]
    found: dict[str, list[str]] = {}
    for extra in meta.get_all("Provides-Extra") or []:
        wanted = [r for r in requires if r.marker and r.marker.evaluate({"extra": extra})]
        found[extra] = [str(r).split(";")[0].strip() for r in wanted]
    return found


@dataclass(frozen=True)
class Plan:
    """The pip commands, in order."""

    commands: list[list[str]]

    def render(self) -> str:
        return "\n".join(shlex.join(command) for command in self.commands)


def plan(names: list[str], python: str, known: dict[str, list[str]]) -> Plan:
    """The pip commands that install the extras ``names`` into ``python`` (pure)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    unknown = [name for name in names if name not in known]
    if unknown:
        raise SpecError(
            f"{', '.join(map(repr, unknown))}: not an extra of fitdock; known: "
            f"{', '.join(sorted(known))}",
            field="extras",
        )
    wanted = list(dict.fromkeys(req for name in names for req in known[name]))
    in_place = [r for r in wanted if canonicalize_name(Requirement(r).name) in BUILT_IN_PLACE]
    first = [r for r in wanted if r not in in_place]
    named = {canonicalize_name(Requirement(r).name) for r in first}
    for req in in_place:
        for pin in BUILT_IN_PLACE[canonicalize_name(Requirement(req).name)]:
            if canonicalize_name(Requirement(pin).name) not in named:
                first.append(pin)
    pip = [python, "-m", "pip", "install"]
    commands = [[*pip, *first]] if first else []
    if in_place:
        commands.append([*pip, "--no-build-isolation", *in_place, *first])
    return Plan(commands)


def cmd_install(ns: argparse.Namespace) -> int:
    from fitdock.process import stream
    from fitdock.shared import fitdock_home

    chosen = plan(ns.extras, ns.python, extras())
    if ns.dry_run:
        print(chosen.render())
        return 0
    log = (
        fitdock_home()
        / "logs"
        / f"install-{'-'.join(ns.extras)}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    for command in chosen.commands:
        print(f"fitdock: $ {shlex.join(command)}", flush=True)
        start = time.monotonic()
        code = stream(command, logs=[log])
        if code != 0:
            print(_tail(log), file=sys.stderr)
            print(f"fitdock: pip failed (exit {code}); its whole output: {log}", file=sys.stderr)
            return 1
        print(f"fitdock: done in {time.monotonic() - start:.1f} s", flush=True)
    print(f"fitdock: installed {', '.join(ns.extras)} into {ns.python}; pip's output: {log}")
    return 0


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
