"""Run ``feature_importance.py`` on ``data/iris_like.csv`` and print the importances.

    python run_feature_importance.py          # the curated environment (scikit-learn)
    python run_feature_importance.py --here   # this interpreter: it needs scikit-learn

The first run without ``--here`` builds the curated environment from PyPI (a minute or
two); later runs reuse it.
"""

from __future__ import annotations

import sys

from common import DATA, HERE, environment, parse_args

from fitdock.errors import ScriptError
from fitdock.script.api import execute_python_script


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    try:
        result = execute_python_script(
            HERE / "feature_importance.py", DATA, environment=environment(args)
        )
    except ScriptError as exc:  # e.g. --here in an interpreter without scikit-learn
        print(f"the script failed: {exc}", file=sys.stderr)
        if args.here and exc.exception == "ModuleNotFoundError":
            print(
                "run it without --here: the curated environment has scikit-learn", file=sys.stderr
            )
        return 1
    (importances,) = result.dataframes
    print(result.stdout, end="")
    print(importances.to_string(index=False))
    print(f"sum of importances: {importances['importance'].sum():.6f}")
    print(f"run: {result.run.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
