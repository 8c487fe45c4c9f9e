"""``fitdock script run|serve``: Azure ML Studio's Execute Python Script module.

``run`` calls :func:`fitdock.script.api.execute_python_script` once and prints each output
DataFrame (shape and first rows), the images and the run id; ``--output-dir`` copies them
out. ``serve`` starts :func:`fitdock.script.serve.serve`, a scoring service calling the
script per request; its token comes from ``--token``, ``--token-file`` or the variable
``FITDOCK_SERVE_TOKEN``. pandas and the server are imported when a handler runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

from fitdock.errors import FitdockError, RunFailedError, SandboxError, ScriptError, SpecError
from fitdock.script.protocol import TOKEN_VARIABLE

SCRIPT_HELP = """Azure ML Studio's Execute Python Script module: a script defining
azureml_main(dataframe1=None, dataframe2=None) gets up to two DataFrames (fresh 0..n-1
index) and returns up to two; a zip bundle is extracted to "Script Bundle" and put on
sys.path; PNGs it saves come back as images. It runs as a fitdock run, in the curated
"script-1-cpu" environment (pandas 3, pyarrow, matplotlib, scikit-learn; built once and
cached), sandboxed with bubblewrap where the machine has it."""

SCRIPT_EPILOG = """examples:
  fitdock script run clean.py --input data.csv
  fitdock script run join.py --input left.parquet --input right.tsv --output-dir out/
  fitdock script serve score.py --bundle model.zip --port 8080 --workers 4
"""

RUN_HELP = """Run SCRIPT.py once over the --input files (CSV, TSV or Parquet: the first is
dataframe1, the second dataframe2), then print each output DataFrame's shape and first
rows, the images the script saved and the run id (`fitdock runs show RUN_ID`). The
script's own stdout is shown; its stderr goes to stderr. A script that raises prints
Azure's message ("Got exception when invoking script at line N in function azureml_main:
...") and the script's traceback. Exit status: 0 when the script completed, 1 when it
failed, ran out of time or memory, 2 for bad input."""

RUN_EPILOG = """examples:
  fitdock script run clean.py --input data.csv
  fitdock script run join.py --input left.parquet --input right.tsv --output-dir out/ --csv
  fitdock script run hello.py --bundle Hello.zip --timeout 60 --memory-mb 2048
  fitdock script run plot.py --input data.csv --sandbox strict   # bubblewrap, or exit 2
  fitdock script run quick.py --input data.csv --user-managed     # in this interpreter
"""

SERVE_HELP = """Serve SCRIPT.py as a scoring web service (Azure's published experiment):
POST /score with {"dataframe1": [row, ...], "dataframe2": [...]} (or Azure classic's
{"Inputs": {"input1": [...]}}) calls azureml_main and answers {"Results": {"output1":
[row, ...], ...}}; GET /health shows the workers. Requests run in --workers warm worker
processes, each sandboxed and limited to --timeout seconds (504 past it). It listens on
127.0.0.1; a --host other than loopback needs a token, which every request then sends as
"Authorization: Bearer TOKEN". Give the token in the variable FITDOCK_SERVE_TOKEN or in
--token-file (mode 600): --token works too, but other local users see it (ps). Needs the
serve extra: pip install 'fitdock[serve]'."""

SERVE_EPILOG = """examples:
  fitdock script serve score.py
  fitdock script serve score.py --bundle model.zip --port 9000 --workers 4 --timeout 30
  curl -s localhost:8080/score -H 'Content-Type: application/json' \\
      -d '{"dataframe1": [{"a": 1}, {"a": 2}]}'
  (umask 077; openssl rand -hex 16 > ~/.score-token)    # a token only you may read
  fitdock script serve score.py --host 0.0.0.0 --token-file ~/.score-token
"""

SANDBOX_HELP = (
    "auto: the strongest isolation here (bubblewrap; else a network namespace), warning "
    "about what is missing (default); strict: bubblewrap or refuse; off: unisolated"
)


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock script`` and its actions."""
    group = subparsers.add_parser(
        "script", help="run azureml_main scripts (Execute Python Script)",
        description=SCRIPT_HELP, epilog=SCRIPT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = group.add_subparsers(dest="script_command", required=True, metavar="ACTION")
    _add_run(actions)
    _add_serve(actions)


def _add_run(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = actions.add_parser(
        "run", help="run a script once over CSV/TSV/Parquet inputs", description=RUN_HELP,
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    run.add_argument("script", type=Path, metavar="SCRIPT.py", help="defines azureml_main")
    run.add_argument(
        "--input", action="append", default=[], type=Path, metavar="FILE",
        help="a .csv, .tsv/.tab or .parquet/.pq table; the first is dataframe1, the second "
        "dataframe2 (repeat for two)",
    )  # fmt: skip
    run.add_argument(
        "--bundle", type=Path, metavar="ZIP", help='a zip extracted to "Script Bundle", on sys.path'
    )
    run.add_argument(
        "--output-dir", type=Path, metavar="DIR",
        help="copy the outputs (output1.parquet, output2.parquet; .csv too with --csv) and "
        "the images (DIR/images/) here",
    )  # fmt: skip
    _add_common(run, timeout=600)
    run.add_argument(
        "--memory-mb", type=int, metavar="N", help="stop the script past N MB resident memory"
    )
    run.add_argument("--csv", action="store_true", help="write each output as CSV too")
    run.add_argument(
        "--user-managed", action="store_true",
        help="run in this interpreter as is (it needs pandas and pyarrow) instead of the "
        "curated script-1-cpu environment",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)


def _add_serve(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = actions.add_parser(
        "serve", help="serve a script as a scoring web service", description=SERVE_HELP,
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    serve.add_argument("script", type=Path, metavar="SCRIPT.py", help="defines azureml_main")
    serve.add_argument(
        "--bundle", type=Path, metavar="ZIP", help='a zip extracted to "Script Bundle", on sys.path'
    )
    serve.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (127.0.0.1); one other than loopback needs a token",
    )  # fmt: skip
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    serve.add_argument(
        "--workers", type=int, default=2, metavar="N", help="processes calling the script (2)"
    )
    token = serve.add_mutually_exclusive_group()
    token.add_argument(
        "--token", metavar="TOKEN",
        help='require "Authorization: Bearer TOKEN" on requests (default: the variable '
        f"{TOKEN_VARIABLE}); other local users see --token (ps): prefer the variable or "
        "--token-file",
    )  # fmt: skip
    token.add_argument(
        "--token-file", type=Path, metavar="PATH",
        help="the token is the first line of PATH, a file only you may read (mode 600)",
    )  # fmt: skip
    _add_common(serve, timeout=30)
    serve.set_defaults(func=cmd_serve)


def _add_common(parser: argparse.ArgumentParser, *, timeout: float) -> None:
    parser.add_argument(
        "--sandbox", choices=["auto", "strict", "off"], default="auto", help=SANDBOX_HELP
    )
    parser.add_argument(
        "--timeout", type=float, default=timeout, metavar="S",
        help=f"stop a call running longer than S seconds ({timeout:g})",
    )  # fmt: skip


# ---------------------------------------------------------------------------------- run
def cmd_run(ns: argparse.Namespace) -> int:
    """Run the script once; print its outputs (exit 1 when it failed)."""
    from fitdock.script.api import execute_python_script, this_interpreter

    if len(ns.input) > 2:
        raise SpecError(
            f"at most two --input files (dataframe1, dataframe2), not {len(ns.input)}",
            field="inputs",
        )
    inputs = [*ns.input, None, None][:2]
    try:
        result = execute_python_script(
            ns.script, inputs[0], inputs[1], ns.bundle, sandbox=ns.sandbox,
            timeout_seconds=ns.timeout, memory_mb=ns.memory_mb, csv=ns.csv,
            environment=this_interpreter() if ns.user_managed else None,
        )  # fmt: skip
    except ScriptError as exc:
        _print_script_error(exc)
        return 1
    except SandboxError as exc:
        if exc.missing:  # the sandbox asked for is not here: bad input, exit 2
            raise
        print(f"fitdock script: {exc}", file=sys.stderr)  # it stopped the script
        return 1
    except RunFailedError as exc:
        print(f"fitdock script: {exc}", file=sys.stderr)
        return 1
    _show(result)
    if ns.output_dir is not None:
        copied = copy_outputs(result, ns.output_dir)
        print(f"copied {len(copied)} file(s) to {ns.output_dir}")
    return 0


def _print_script_error(exc: ScriptError) -> None:
    print(f"fitdock script: {exc}", file=sys.stderr)
    if exc.traceback:
        print(exc.traceback, file=sys.stderr, end="" if exc.traceback.endswith("\n") else "\n")


def _show(result: Any) -> None:
    if result.stderr:
        print(result.stderr, file=sys.stderr, end="" if result.stderr.endswith("\n") else "\n")
    if result.stdout:
        print("script output:")
        for line in result.stdout.rstrip("\n").splitlines():
            print(f"  {line}")
    if not result.dataframes:
        print("no output DataFrames (azureml_main returned None)")
    for number, frame in enumerate(result.dataframes, start=1):
        rows, cols = frame.shape
        print(f"Result Dataset {number}: {rows} row(s) x {cols} column(s)")
        if cols:
            print(frame.head().to_string())
    if result.images:
        print("images:")
        for path in result.images:
            print(f"  {path}")
    if result.run is not None:
        print(f"run {result.run.id}")


def copy_outputs(result: Any, folder: Path) -> list[Path]:
    """Copy the run's output files (Parquet, CSV) and images into ``folder``; the copies."""
    if result.run is None:
        return []
    outputs = Path(result.run.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for number in (1, 2):
        for suffix in (".parquet", ".csv"):
            path = outputs / f"output{number}{suffix}"
            if path.is_file():
                copied.append(Path(shutil.copy2(path, folder / path.name)))
    if result.images:
        (folder / "images").mkdir(exist_ok=True)
        for path in result.images:
            copied.append(Path(shutil.copy2(path, folder / "images" / path.name)))
    return copied


# ---------------------------------------------------------------------------------- serve
def cmd_serve(ns: argparse.Namespace) -> int:
    """Serve the script until interrupted."""
    try:
        from fitdock.script.serve import serve
    except ImportError as exc:
        raise FitdockError(
            f"fitdock script serve needs the serve extra ({exc}); pip install 'fitdock[serve]'"
        ) from exc
    try:
        serve(
            ns.script, bundle=ns.bundle, host=ns.host, port=ns.port, workers=ns.workers,
            token=_serve_token(ns), timeout=ns.timeout, sandbox=ns.sandbox,
        )  # fmt: skip
    except ScriptError as exc:  # the script cannot load: nothing listens
        _print_script_error(exc)
        return 1
    return 0


def _serve_token(ns: argparse.Namespace) -> str | None:
    """The token: ``--token``, else the first line of ``--token-file``, else the variable
    FITDOCK_SERVE_TOKEN; None for none."""
    if ns.token is not None:
        return str(ns.token)
    if ns.token_file is not None:
        return _read_token_file(ns.token_file)
    token = os.environ.get(TOKEN_VARIABLE)
    if token is not None and not token.strip():
        raise SpecError(f"{TOKEN_VARIABLE} is set but empty: unset it for no token", field="token")
    return token.strip() if token is not None else None


def _read_token_file(path: Path) -> str:
    """The first line of ``path``, stripped; refused when others may read the file."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"--token-file {path} is not a regular file", field="token")
        if info.st_mode & 0o077:
            mode = oct(stat.S_IMODE(info.st_mode))[2:]
            raise SpecError(
                f"--token-file {path}: others may read or change the token (mode {mode}): run "
                f"`chmod 600 {path}`",
                field="token",
            )
        with path.open(encoding="utf-8") as handle:
            token = handle.readline().strip()
    except OSError as exc:
        raise SpecError(
            f"cannot read --token-file {path}: {exc.strerror or exc}", field="token"
        ) from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"--token-file {path} is not text (UTF-8)", field="token") from exc
    if not token:
        raise SpecError(f"--token-file {path}: its first line is empty", field="token")
    return token
