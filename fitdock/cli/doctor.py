"""``fitdock doctor``: one table of what this machine offers fitdock, and what each missing
piece would enable.

The probes are :mod:`fitdock.execution.doctor`'s, plus the sandbox's own (bubblewrap, from
:mod:`fitdock.script.sandbox`, the module that uses it). ``--require NAME,...`` exits 1 when a
named row is not ok; ``--json`` prints the rows as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from textwrap import wrap
from typing import TYPE_CHECKING

from fitdock.cli.table import columns

if TYPE_CHECKING:
    from fitdock.execution.doctor import Check, Probe

FOUND_WIDTH, ENABLES_WIDTH = 58, 40  # wrapped there: the table fits 120 columns

HELP = """One table of what this machine offers fitdock: Python and fitdock, the interpreters
virtualenvs can be built with, uv, the free space of $FITDOCK_HOME, the MPIs found (and the
one Mpi() would use), mpi4py's library, Horovod, torch with CUDA and NCCL, CuPy, Chainer,
NVIDIA GPUs, Docker and its GPU runtime, Slurm, bubblewrap and MLflow; for each row that is
not ok, what it would enable and how to get it. Packages are those of this interpreter.
Every probe has a time-out; they run side by side (a few seconds, mostly importing torch).
Exit status: 0; 1 when a row named by --require is not ok; 2 for an unknown name."""

EPILOG = """examples:
  fitdock doctor
  fitdock doctor --require docker,slurm     # exit 1 unless both are ok
  fitdock doctor --json | jq '.checks[] | select(.status != "ok") | .name'
"""


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock doctor``."""
    doctor = subparsers.add_parser(
        "doctor",
        help="what this machine offers fitdock, and what is missing",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="NAME,...",
        help="exit 1 unless these rows are ok (e.g. docker,slurm,gpu); repeatable",
    )
    doctor.add_argument("--json", action="store_true", help="print the rows as JSON")
    doctor.set_defaults(func=cmd_doctor)


def probes() -> list[Probe]:
    """The execution layer's probes and the sandbox's."""
    from fitdock.execution import doctor

    return [*doctor.PROBES, doctor.Probe(("bubblewrap",), _bubblewrap)]


def _bubblewrap() -> list[Check]:
    from fitdock.execution.doctor import Status, check, first_line
    from fitdock.process import tool
    from fitdock.script import sandbox

    isolation, warnings = sandbox.choose("auto")
    if isolation is sandbox.Isolation.BUBBLEWRAP:
        _, out, _ = tool(["bwrap", "--version"], timeout=10)
        return [check("bubblewrap", Status.OK, first_line(out) or "bwrap works")]
    status = Status.MISSING if "not installed" in warnings[0] else Status.PARTIAL
    return [check("bubblewrap", status, warnings[0].split(": the script")[0])]


def cmd_doctor(ns: argparse.Namespace) -> int:
    from fitdock.execution import doctor

    required = [name.strip() for item in ns.require for name in item.split(",") if name.strip()]
    chosen = probes()
    doctor.check_names(required, chosen)
    start = time.monotonic()
    rows = doctor.run(chosen)
    unmet = doctor.unmet(rows, required)
    if ns.json:
        report = {
            "checks": [row.as_dict() for row in rows],
            "required": required,
            "unmet": unmet,
            "seconds": round(time.monotonic() - start, 2),
        }
        print(json.dumps(report, indent=2))
        return 1 if unmet else 0
    lines: list[tuple[str, ...]] = []
    for row in rows:
        found, enables = _cell(row.found, FOUND_WIDTH), _cell(row.enables, ENABLES_WIDTH)
        for i in range(max(len(found), len(enables))):
            cells = (found[i] if i < len(found) else "", enables[i] if i < len(enables) else "")
            lines.append((row.name, row.status.value, *cells) if i == 0 else ("", "", *cells))
    print(columns(("CHECK", "STATUS", "FOUND", "ENABLES"), lines))
    missing = [row for row in rows if row.status is not doctor.Status.OK and row.fix]
    if missing:
        print("\nTo get what is missing:")
        for row in missing:
            print(f"  {row.name}: {row.fix}")
    print(f"\n{len(rows)} checks in {time.monotonic() - start:.1f} s")
    if unmet:
        print(f"fitdock doctor: required but not ok: {', '.join(unmet)}", file=sys.stderr)
    return 1 if unmet else 0


def _cell(text: str, width: int) -> list[str]:
    """``text`` wrapped at ``width`` (paths and options kept whole)."""
    return wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]
