"""Run ``scatter_matrix.py`` on ``data/iris_like.csv``; print the correlations it returns
and the paths of the PNGs it saved (in the run's ``outputs/images/``).

    python run_scatter_matrix.py          # the curated environment
    python run_scatter_matrix.py --here   # this interpreter (it needs matplotlib)
"""

from __future__ import annotations

import sys

from common import DATA, HERE, environment, parse_args

from fitdock.script.api import execute_python_script


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    result = execute_python_script(HERE / "scatter_matrix.py", DATA, environment=environment(args))
    (correlations,) = result.dataframes
    print(correlations.round(2).to_string(index=False))
    for image in result.images:
        print(f"image: {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
