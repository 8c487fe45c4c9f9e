"""The ``fitdock`` command: run jobs, look at runs, list curated environments.

One module per command group, each with ``add(subparsers)`` registering its parser
and handlers: :mod:`~fitdock.cli.run`, :mod:`~fitdock.cli.runs`, :mod:`~fitdock.cli.env`,
:mod:`~fitdock.cli.images`, :mod:`~fitdock.cli.pipeline`, :mod:`~fitdock.cli.script`,
:mod:`~fitdock.cli.doctor` and :mod:`~fitdock.cli.install`;
:mod:`~fitdock.cli.table` prints their tables. Handlers import what they use when they
run, so ``fitdock --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from fitdock.cli import doctor, env, images, install, pipeline, run, runs, script
from fitdock.errors import FitdockError

__all__ = ["main"]

EPILOG = """examples:
  fitdock run --framework chainer --source-directory examples/chainer_mnist \\
      --entry-script train.py -n 2 --user-managed -- --epochs 3
  fitdock run job.yml --dry-run
  fitdock runs list
  fitdock runs logs RUN_ID --follow
  fitdock env show chainer-7.8.1-cpu
  fitdock env build chainer-7.8.1-cpu && fitdock env list --cached
  fitdock images build chainer-7.8.1-cpu --base local/debian:bookworm
  fitdock pipeline run examples/pipeline_azure/pipeline.py && fitdock pipeline list
  fitdock script run clean.py --input data.csv --output-dir out/
  fitdock doctor --require docker,slurm
  fitdock install chainer
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitdock",
        description="Estimator-style training jobs on your own machines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (run, runs, env, images, pipeline, script, doctor, install):
        group.add(subparsers)
    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's tab completion and exit, when the shell asks (argcomplete sets
    _ARGCOMPLETE; `eval "$(register-python-argcomplete fitdock)"` registers it)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv: list[str] | None = None) -> int:
    """Run the ``fitdock`` command with ``argv`` (default: ``sys.argv[1:]``); the exit code.

    0: done; 1: the run did not complete; 2: bad input (a :class:`FitdockError`, or
    argparse's usage error); 130: interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv:  # everything after `--` belongs to the script, never to fitdock
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
    parser = _parser()
    _complete(parser)
    ns = parser.parse_args(argv)
    ns.script_args = script_args
    try:
        return int(ns.func(ns))
    except FitdockError as exc:
        print(f"fitdock: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fitdock: interrupted", file=sys.stderr)
        return 130
