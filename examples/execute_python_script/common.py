"""What the run scripts of this folder share: ``--here`` and the environment it picks.

Without ``--here`` a script runs in the curated "script-1-cpu" environment (a uv venv with
pandas, pyarrow, matplotlib and scikit-learn, built from PyPI the first time and cached);
with it, in the interpreter running the example, as it is (quick: nothing is built).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fitdock.environments.spec import Environment
from fitdock.script.api import this_interpreter

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "iris_like.csv"


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--here",
        action="store_true",
        help="run in this interpreter instead of the curated script environment",
    )
    return parser.parse_args(argv)


def environment(args: argparse.Namespace) -> Environment | None:
    """``this_interpreter()`` with ``--here``; None (the curated environment) without."""
    return this_interpreter() if args.here else None
