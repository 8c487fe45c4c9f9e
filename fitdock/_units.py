"""Human-readable quantities (stdlib only: imported by the in-script run API)."""

from __future__ import annotations


def human_size(size: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units, like the snapshot limits)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"
