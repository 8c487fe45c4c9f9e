"""The script step of ``pipeline.py`` (a ``PythonScriptStep``, Azure's kind of step):
fresh labelled rows as a CSV file, written into the ``PipelineData`` folder given as
``--out``. The ``@step`` function ``score_holdout`` receives that folder's local path.

    python make_holdout.py --out /tmp/holdout --rows 50 --seed 7
"""

from __future__ import annotations

import argparse
from pathlib import Path

import model  # beside this script: the step's source directory is the example folder
import numpy as np

FILE = "holdout.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="the PipelineData folder")
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    x, y = model.make_data(args.rows, args.seed)
    columns = [f"x{i}" for i in range(x.shape[1])] + ["y"]
    args.out.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([x, y])
    np.savetxt(args.out / FILE, table, delimiter=",", header=",".join(columns), comments="")
    print(f"wrote {args.rows} rows to {args.out / FILE}")


if __name__ == "__main__":
    main()
