"""The job side of Execute Python Script: the run's entry (``fitdock_script.py`` calls
``main``), in the script's own environment.

Outside the sandbox (the run's process): choose the isolation, make a fresh working folder,
extract the bundle there, start the inner side isolated (with a memory watch when asked),
pass SIGTERM on, then copy the outputs and the PNGs the script saved into the run's
``outputs/`` and delete the working folder, whatever happened.

Inside (``--inner``): read the inputs as DataFrames, load the script, check that
``azureml_main`` exists and takes no more inputs than it is given, call it, convert and
write its outputs; on an exception write Azure's message and the user's own frames to
``error.json`` in the working folder.

The serve workers (:mod:`fitdock.script.worker`) load and call a script the same way,
through the small public surface here: :func:`needed_paths`, :func:`entry_point`,
:func:`arity`, :class:`Refused` and :func:`azure_error`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

OUT = ".fitdock-out"  # in the working folder: what the inner side hands back
ERROR = "error.json"
SANDBOX = "sandbox.json"  # in the run's outputs: which isolation the script had
IMAGES = "images"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fitdock_script.py")
    parser.add_argument("--script", required=True)
    parser.add_argument("--input", action="append", default=[])
    parser.add_argument("--bundle")
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--memory-mb", type=int)
    parser.add_argument("--csv", action="store_true")
    # N=FOLDER: also put output N in FOLDER as data.parquet (a pipeline's PipelineData)
    parser.add_argument("--output-to", action="append", default=[])
    parser.add_argument("--inner", help=argparse.SUPPRESS)  # the working folder, inside
    ns = parser.parse_args(argv)
    if ns.inner:
        code = inner(ns, Path(ns.inner))
        # Everything is written: skip the interpreter's teardown, where pyarrow's thread
        # pools now and then abort the process (apache/arrow#34314: "terminate called
        # without an active exception", exit 134) after a run that succeeded.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(outer(ns))


# ------------------------------------------------------------------ outside the sandbox
def outer(ns: argparse.Namespace) -> int:
    from fitdock.errors import FitdockError
    from fitdock.script.bundle import extract_bundle
    from fitdock.script.sandbox import MemoryWatch, choose, wrap

    outputs = Path(os.environ.get("FITDOCK_OUTPUT_DIR", "outputs"))
    outputs.mkdir(parents=True, exist_ok=True)
    try:
        isolation, warnings = choose(ns.sandbox)
    except FitdockError as exc:
        print(f"fitdock script: {exc}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"fitdock script: warning: {warning}", file=sys.stderr, flush=True)
    said = {"isolation": isolation.value, "warnings": warnings, "memory_mb": ns.memory_mb}
    (outputs / SANDBOX).write_text(json.dumps(said))
    workdir = Path(tempfile.mkdtemp(prefix="fitdock-script-"))
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: Any) -> None:
        if child is not None and child.poll() is None:
            child.kill()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        if ns.bundle:
            extract_bundle(Path(ns.bundle), workdir)
        shipped = _pngs(workdir)  # the bundle's own PNGs are not images the script saved
        argv = [sys.executable, "-c", "from fitdock.script.runner import main; main()"]
        argv += [*_forwarded(ns), "--inner", str(workdir)]
        # Agg: figures are files; caches in the working folder (the home is read-only)
        cache = str(workdir / ".cache")
        env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": cache, "XDG_CACHE_HOME": cache}
        readable = needed_paths(Path(ns.script), [Path(p) for p in ns.input])
        wrapped = wrap(argv, isolation, workdir, readable=readable)
        child = subprocess.Popen(wrapped, cwd=workdir, env=env)
        watch = MemoryWatch(child.pid, ns.memory_mb) if ns.memory_mb else None
        if watch is not None:
            watch.start()
        code = child.wait()
        if watch is not None:
            watch.stop()
            if watch.exceeded:
                message = (
                    f"the script used more than memory_mb={ns.memory_mb} MB (peak "
                    f"{watch.peak_mb:.0f} MB) and was stopped"
                )
                (outputs / ERROR).write_text(json.dumps({"memory": message}))
                print(f"fitdock script: {message}", file=sys.stderr)
                return 137
        _hand_back(workdir, outputs, shipped)
        _deliver(ns.output_to, outputs)
        return code if code >= 0 else 128 - code  # killed by a signal: 128 + its number
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def needed_paths(script: Path, inputs: list[Path]) -> list[Path]:
    """What the inner side reads: its interpreter's environment, fitdock, the script's
    folder and the inputs (bound back where the sandbox's private /tmp would hide them)."""
    import fitdock

    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(fitdock.__file__).parent.parent]
    paths += [script.resolve().parent, *(path.resolve() for path in inputs)]
    return [*paths, *(Path(p) for p in sys.path if p and Path(p).is_dir())]


def _forwarded(ns: argparse.Namespace) -> list[str]:
    argv = ["--script", str(Path(ns.script).resolve())]  # the inner side runs elsewhere
    for path in ns.input:
        argv += ["--input", str(Path(path).resolve())]
    return argv + (["--csv"] if ns.csv else [])


def _deliver(pairs: list[str], outputs: Path) -> None:
    """Output N into each folder named for it (``--output-to N=FOLDER``)."""
    for pair in pairs:
        number, _, folder = pair.partition("=")
        made = outputs / f"output{number}.parquet"
        if made.is_file():
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(made, Path(folder) / "data.parquet")


def _pngs(workdir: Path) -> dict[Path, tuple[int, int]]:
    """The PNGs in the working folder (not the runner's own folders): (size, mtime) each."""
    skip = (workdir / OUT, workdir / ".cache")
    found = {}
    for path in workdir.rglob("*.png"):
        if not any(folder in path.parents for folder in skip) and path.is_file():
            info = path.stat()
            found[path] = (info.st_size, info.st_mtime_ns)
    return found


def _hand_back(workdir: Path, outputs: Path, shipped: dict[Path, tuple[int, int]]) -> None:
    """The inner side's outputs and error, and every PNG saved in the working folder (those
    of ``shipped``, the bundle's, only when the script rewrote them)."""
    made = workdir / OUT
    if made.is_dir():
        for path in made.iterdir():
            shutil.copyfile(path, outputs / path.name)
    pngs = sorted(path for path, seen in _pngs(workdir).items() if shipped.get(path) != seen)
    if pngs:
        (outputs / IMAGES).mkdir(exist_ok=True)
        for number, path in enumerate(pngs):
            name = path.relative_to(workdir).as_posix().replace("/", "_")
            shutil.copyfile(path, outputs / IMAGES / f"{number:02d}_{name}")


# ------------------------------------------------------------------ inside the sandbox
def inner(ns: argparse.Namespace, workdir: Path) -> int:
    from fitdock.errors import ScriptError
    from fitdock.script import convert

    out = workdir / OUT
    out.mkdir(exist_ok=True)
    bundle = workdir / "Script Bundle"
    if bundle.is_dir():
        sys.path.insert(0, str(bundle))
    sys.path.insert(0, str(workdir))
    script = Path(ns.script)
    namespace: dict[str, Any] = {"__name__": "__fitdock_script__", "__file__": str(script)}
    try:
        code = compile(script.read_text(), str(script), "exec")
        frames = [convert.read_input(_table(Path(path))) for path in ns.input]
        exec(code, namespace)
        entry = entry_point(namespace, len(frames))
        result = entry(*frames[: arity(entry)])
        for number, frame in enumerate(convert.to_frames(result), start=1):
            convert.write_output(convert.normalize(frame), out, number, csv=ns.csv)
    except Refused as exc:
        _write_error(out, {"message": str(exc), "exception": "ValueError", "line": None})
        return 1
    except ScriptError as exc:  # what it returned cannot be a DataFrame
        _write_error(out, {"message": str(exc), "exception": exc.exception, "line": None})
        return 1
    except Exception as exc:
        _write_error(out, azure_error(exc, str(script)))
        return 1
    return 0


def _table(path: Path) -> Path:
    """An input as a file: a folder (a pipeline's data) gives its one table."""
    if not path.is_dir():
        return path
    from fitdock.script.convert import INPUT_SUFFIXES

    tables = sorted(p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES)
    if len(tables) != 1:
        raise Refused(f"input folder {path} holds {len(tables)} tables; one was expected")
    return tables[0]


class Refused(Exception):
    """The script cannot be called: no azureml_main, or it needs more inputs."""


def entry_point(namespace: dict[str, Any], inputs: int) -> Any:
    """The script's ``azureml_main`` (from the namespace it ran in), callable with
    ``inputs`` DataFrames; :class:`Refused` when there is none or it needs more."""
    entry = namespace.get("azureml_main")
    if not callable(entry):
        raise Refused("the script defines no function azureml_main(dataframe1, dataframe2)")
    required = [
        p
        for p in inspect.signature(entry).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) > inputs:
        raise Refused(
            f"azureml_main needs {len(required)} input(s) "
            f"({', '.join(p.name for p in required)}) but {inputs} were given"
        )
    return entry


def arity(entry: Any) -> int:
    """How many inputs ``entry`` takes (2 with ``*args``): it is called with that many."""
    params = inspect.signature(entry).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def azure_error(exc: BaseException, script: str) -> dict[str, Any]:
    """Azure's message (ending with a period, as Azure's does), the exception's name, the
    line in ``script`` and the traceback with the user's frames only."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == script]
    line = frames[-1].lineno if frames else None
    what = f"{type(exc).__name__}: {exc}"
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    where = f"at line {line} " if line else ""
    return {
        "message": f"Got exception when invoking script {where}in function azureml_main: '{what}'.",
        "exception": type(exc).__name__,
        "line": line,
        "traceback": text,
    }


def _write_error(out: Path, error: dict[str, Any]) -> None:
    (out / ERROR).write_text(json.dumps(error))
    print(error["message"], file=sys.stderr)
    if error.get("traceback"):
        print(error["traceback"], file=sys.stderr, end="")
