"""The one table helper of the ``fitdock`` command: left-aligned columns, two spaces apart."""

from __future__ import annotations

from collections.abc import Sequence


def columns(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """``header`` and ``rows`` as text, each column as wide as its widest cell, no trailing
    spaces."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )
