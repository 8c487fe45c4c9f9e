"""Follow a run's log files as they grow and print them tagged by rank."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TextIO

_RANK_LOG = re.compile(r"^rank_(\d+)\.(stdout|stderr)\.log$")


def tag_for(name: str) -> str | None:
    if name == "launcher.log":
        return "[launcher] "
    match = _RANK_LOG.match(name)
    if match is None:
        return None
    rank, stream = match.groups()
    return f"[rank {rank}] " if stream == "stdout" else f"[rank {rank}:stderr] "


class LogFollower:
    """``pump()`` prints the complete lines written since the last call."""

    def __init__(self, logs: Path, out: TextIO | None = None) -> None:
        self.logs = logs
        self.out = out or sys.stdout
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self._inodes: dict[Path, int] = {}

    def pump(self, final: bool = False) -> None:
        if not self.logs.is_dir():
            return
        for path in sorted(self.logs.iterdir()):
            tag = tag_for(path.name)
            if tag is not None:
                self._pump_file(path, tag, final)
        self.out.flush()

    def _pump_file(self, path: Path, tag: str, final: bool) -> None:
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # moved to attempt-<n>/ as a new attempt starts
            return
        with handle:
            inode = os.fstat(handle.fileno()).st_ino
            if self._inodes.setdefault(path, inode) != inode:  # a new attempt's file
                self._inodes[path] = inode
                self._offsets.pop(path, None)
                self._partial.pop(path, None)
            offset = self._offsets.get(path, 0)
            handle.seek(offset)
            data = handle.read()
        if not data and not (final and self._partial.get(path)):
            return
        self._offsets[path] = offset + len(data)
        text = self._partial.pop(path, b"") + data
        *lines, rest = text.split(b"\n")
        if rest and final:
            lines.append(rest)
        elif rest:
            self._partial[path] = rest
        for line in lines:
            self.out.write(tag + line.decode(errors="replace") + "\n")


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
