"""The ``PythonScriptStep`` of ``pipeline.py``: a small table as ``table.csv`` in the
``PipelineData`` folder given as ``--out`` (x = 1..rows, y = 2x). Standard library only.

    python steps/make_table.py --out /tmp/table --rows 10
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="the PipelineData folder")
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x", "y"])
        writer.writerows([x, 2 * x] for x in range(1, args.rows + 1))
    print(f"wrote {args.rows} rows to {args.out / 'table.csv'}")


if __name__ == "__main__":
    main()
