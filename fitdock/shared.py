"""Helpers that environments/, runs/, distributions/ and execution/ share: fitdock's home
folder, and (from ``jobside.common``, which the job side shares too) the clock and
atomic JSON writes."""

from __future__ import annotations

import os
from pathlib import Path

from fitdock.jobside.common import now_iso, read_json, write_json_atomic

__all__ = ["fitdock_home", "now_iso", "read_json", "write_json_atomic"]


def fitdock_home() -> Path:
    """``$FITDOCK_HOME``, else ``~/.fitdock``: runs, environments, caches."""
    return Path(os.environ.get("FITDOCK_HOME") or Path.home() / ".fitdock").expanduser()
