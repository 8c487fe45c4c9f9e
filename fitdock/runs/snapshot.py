"""Snapshot a source directory into a run, honoring ``.gitignore`` and ``.fitdockignore``.

Ignore files are read in every folder. In a folder, ``.fitdockignore`` lines
come after ``.gitignore`` lines, so ``!data/small.csv`` there brings back a file
git ignores. ``.git/`` is never copied.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pathspec

from fitdock._units import human_size
from fitdock.errors import SnapshotError

IGNORE_FILES = (".gitignore", ".fitdockignore")
ALWAYS_IGNORED = {".git", "__pycache__", ".fitdock"}


@dataclass(frozen=True)
class SnapshotSummary:
    files: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.files} files, {human_size(self.bytes)}"


def _spec_for(folder: Path) -> pathspec.PathSpec | None:
    lines: list[str] = []
    for name in IGNORE_FILES:
        path = folder / name
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _ignored(specs: list[tuple[Path, pathspec.PathSpec]], path: Path, is_dir: bool) -> bool:
    """As git decides: the innermost ignore file with a matching line wins, so a ``!`` line
    in a subfolder brings back a file that a folder above ignores."""
    for base, rules in reversed(specs):
        rel = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        verdict = rules.check_file(rel).include
        if verdict is not None:
            return verdict
    return False


def collect(source: Path) -> list[tuple[Path, int]]:
    """Files to snapshot, as (path relative to source, size)."""
    found: list[tuple[Path, int]] = []
    specs: list[tuple[Path, pathspec.PathSpec]] = []  # (folder, spec) from outer to inner
    for folder, dirs, files in os.walk(source):
        here = Path(folder)
        specs = [(base, spec) for base, spec in specs if here == base or base in here.parents]
        spec = _spec_for(here)
        if spec is not None:
            specs.append((here, spec))

        dirs[:] = sorted(
            d for d in dirs if d not in ALWAYS_IGNORED and not _ignored(specs, here / d, True)
        )
        for name in sorted(files):
            path = here / name
            if _ignored(specs, path, False) or not path.is_file():
                continue
            found.append((path.relative_to(source), path.stat().st_size))
    return found


def snapshot(source: Path, target: Path, max_size_mb: float, max_files: int) -> SnapshotSummary:
    """Copy ``source`` into ``target`` (which must not exist), checking the limits first."""
    files = collect(source)
    total = sum(size for _, size in files)
    if len(files) > max_files:
        raise SnapshotError(
            f"source_directory {source} holds {len(files)} files, over the limit of {max_files}: "
            "list data and build folders in a .fitdockignore (or .gitignore), or raise "
            "max_snapshot_files"
        )
    if total > max_size_mb * 1e6:
        raise SnapshotError(
            f"source_directory {source} holds {total / 1e6:.1f} MB, over the limit of "
            f"{max_size_mb:g} MB: list large files in a .fitdockignore (or .gitignore), pass data "
            "as inputs, or raise max_snapshot_size_mb"
        )
    target.mkdir(parents=True)
    for rel, _ in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest)
    return SnapshotSummary(files=len(files), bytes=total)
