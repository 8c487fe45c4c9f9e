"""Build Hello.zip (``make_bundle.py``) in a temporary folder and run ``hello.py`` with it.

python run_hello.py          # the curated environment
python run_hello.py --here   # this interpreter, as it is (nothing to build)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd
from common import HERE, environment, parse_args
from make_bundle import build

from fitdock.script.api import execute_python_script

NAMES = ["World", "fitdock"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    with tempfile.TemporaryDirectory(prefix="hello-bundle-") as tmp:
        bundle = build(Path(tmp))
        result = execute_python_script(
            HERE / "hello.py",
            pd.DataFrame({"name": NAMES}),
            script_bundle=bundle,
            environment=environment(args),
        )
    (greetings,) = result.dataframes
    print(greetings.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
