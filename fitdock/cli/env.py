"""``fitdock env list|show|build|lock|prune``: the catalogue, virtualenvs, locks.
``prune --leftovers`` removes only what killed builds left.

:func:`load_environment` (a catalogue name or a file) also serves ``fitdock images``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fitdock.cli.table import columns
from fitdock.errors import FitdockError

REF_HELP = "a catalogue name (`fitdock env list`) or an Environment YAML/JSON file"


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock env`` and its actions."""
    env = subparsers.add_parser(
        "env",
        help="environments: catalogue, virtualenvs, locks",
        description="The curated catalogue, virtualenvs built per environment hash, locks.",
    )
    actions = env.add_subparsers(dest="env_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the catalogue; --cached: the built virtualenvs")
    listing.add_argument("--cached", action="store_true", help="list built virtualenvs instead")
    listing.set_defaults(func=cmd_list)
    show = actions.add_parser("show", help="one environment in full, as YAML")
    show.add_argument("ref", help=REF_HELP)
    show.set_defaults(func=cmd_show)
    build = actions.add_parser("build", help="build an environment's virtualenv (once per hash)")
    build.add_argument("ref", help=REF_HELP)
    build.add_argument("--lock", type=Path, help="install exactly this lock file")
    build.set_defaults(func=cmd_build)
    lock = actions.add_parser("lock", help="write a pinned pip lock (uv pip compile)")
    lock.add_argument("ref", help=REF_HELP)
    lock.add_argument("-o", "--output", type=Path, help="the lock file (default: NAME.lock.txt)")
    lock.set_defaults(func=cmd_lock)
    prune = actions.add_parser(
        "prune", help="remove built virtualenvs, and what killed builds left"
    )
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="only those unused as long")
    prune.add_argument(
        "--leftovers",
        action="store_true",
        help="only what killed builds left (half-built folders, stale lock files)",
    )
    prune.set_defaults(func=cmd_prune)


def load_environment(ref: str) -> Any:
    """A catalogue row's environment, or an ``Environment`` from a YAML/JSON file."""
    import yaml
    from pydantic import ValidationError

    from fitdock.environments.catalogue import load_catalogue
    from fitdock.environments.spec import Environment

    path = Path(ref)
    if not path.is_file():
        return load_catalogue().get(ref).to_environment()
    try:
        return Environment.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        raise FitdockError(f"{path} is not an Environment: {exc}") from exc


def cmd_list(ns: argparse.Namespace) -> int:
    if ns.cached:
        from fitdock.environments.venv import list_cached

        cached = [
            (e.hash[:16], e.name or "-", e.python_version or "-", f"{e.size / 1e6:.0f} MB",
             e.last_used.strftime("%Y-%m-%d %H:%M"), str(e.path))
            for e in list_cached()
        ]  # fmt: skip
        print(columns(("HASH", "NAME", "PYTHON", "SIZE", "LAST USED", "PATH"), cached))
        return 0
    from fitdock.environments.catalogue import load_catalogue

    rows: list[tuple[str, ...]] = []
    for row in load_catalogue().rows:
        buildable = "yes" if row.buildable else f"no, use {row.replaced_by}"
        device = "gpu" if row.gpu else "cpu"
        rows.append(
            (row.name, row.framework, row.framework_version, device, row.python_version,
             row.platform.cuda or "-", buildable)
        )  # fmt: skip
    print(columns(("NAME", "FRAMEWORK", "VERSION", "DEVICE", "PYTHON", "CUDA", "BUILDABLE"), rows))
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    import yaml

    from fitdock.environments.catalogue import load_catalogue

    env = load_environment(ns.ref)
    doc: dict[str, Any] = {"hash": env.hash()}
    if not Path(ns.ref).is_file():
        row = load_catalogue().get(ns.ref)
        doc.update(buildable=row.buildable, replaced_by=row.replaced_by)
    doc.update(env.model_dump(mode="json"))
    print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


def cmd_build(ns: argparse.Namespace) -> int:
    from fitdock.environments.venv import ensure_venv

    built = ensure_venv(load_environment(ns.ref), lock=ns.lock)
    state = "built" if built.built else "cached"
    print(f"{state}: {built.path} ({built.seconds:.2f} s, {len(built.packages)} packages)")
    return 0


def cmd_lock(ns: argparse.Namespace) -> int:
    from fitdock.environments.lock import lock_pip

    env = load_environment(ns.ref)
    out = ns.output or Path(f"{env.name}.lock.txt")
    print(f"wrote {lock_pip(env, out)}")
    return 0


def cmd_prune(ns: argparse.Namespace) -> int:
    from fitdock.environments.venv import prune

    removed = prune(older_than_days=ns.older_than, leftovers_only=ns.leftovers)
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} removed")
    return 0
