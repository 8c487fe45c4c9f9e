"""The warm workers of ``fitdock script serve``: processes that load an ``azureml_main``
script once and then call it per request, each inside the sandbox.

Inside (:func:`main`, run as ``python -c "from fitdock.script.worker import main; main()"
--script PATH --workdir DIR`` under :func:`fitdock.script.sandbox.wrap`, in ``DIR``): load
the script the way ``runner.inner`` does (its ``Script Bundle`` and ``DIR`` on
``sys.path``), answer one ``ready`` line, then read one request per line on stdin and
answer one line on stdout per request. The script never sees the protocol: its fd 0 is
``/dev/null`` and its fd 1 is the worker's stderr; the worker talks on private copies.

Outside (:class:`WorkerPool`, asyncio, in the server): start ``size`` workers, each in a
fresh working folder (the bundle extracted there, the folder deleted when the worker
stops), hand each request to an idle one with a time limit, and replace a worker that
ran over it (killed with its process group) or died. The lines::

    server -> worker   {"id": 7, "inputs": [rows, ...]}       rows: a list of JSON objects
    worker -> server   0 ready {"required": 1, "arity": 2}    once, after loading
                       0 failed {"message": ..., ...}         once, when loading failed
                       7 ok {"Results": {"output1": rows, "output2": rows}}
                       7 error {"message": ..., "exception": ..., "line": ...}

An ``ok`` body is the HTTP response as it is sent. Missing values (NaN, NA, NaT) and
infinities become ``null``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import enum
import inspect
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fitdock.errors import ScriptError
from fitdock.script import runner
from fitdock.script.bundle import BUNDLE_FOLDER, extract_bundle
from fitdock.script.sandbox import Isolation, wrap

READY, FAILED, OK, ERROR = b"ready", b"failed", b"ok", b"error"
LINE_LIMIT = 256 * 1024 * 1024  # the longest answer line the server reads
STOP_GRACE_S = 2.0  # a worker told to stop (stdin closed) is killed after this
RESTART_TRIES = 3
_ENTRY = "from fitdock.script.worker import main; main()"

Rows = list[dict[str, Any]]


# ------------------------------------------------------------------ inside the sandbox
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fitdock-script-worker")
    parser.add_argument("--script", required=True)
    parser.add_argument("--workdir", required=True)
    ns = parser.parse_args(argv)
    raise SystemExit(serve_lines(Path(ns.script), Path(ns.workdir)))


def serve_lines(script: Path, workdir: Path) -> int:
    """Load ``script`` and answer requests until stdin closes; the exit code."""
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the script reads nothing of the protocol
    os.close(null)
    os.dup2(2, 1)  # and what it prints goes to the log, not into an answer
    try:
        entry, info = _load(script, workdir)
    except Exception as exc:
        error = _error(exc, script)
        _answer(writer, 0, FAILED, json.dumps(error).encode())
        return 1
    _answer(writer, 0, READY, json.dumps(info).encode())
    for line in reader:
        request = json.loads(line)
        status, body = call(entry, info["arity"], request["inputs"], script)
        sys.stdout.flush()
        _answer(writer, request["id"], status, body)
    return 0


def _answer(writer: BinaryIO, number: int, status: bytes, body: bytes) -> None:
    writer.write(b"%d %s %s\n" % (number, status, body))
    writer.flush()


def _load(script: Path, workdir: Path) -> tuple[Callable[..., Any], dict[str, int]]:
    """The script's ``azureml_main`` (compiled and run once, as ``runner.inner`` does) and
    how many inputs it needs and takes."""
    import pandas  # noqa: F401  (warm: every request needs it)

    bundle = workdir / BUNDLE_FOLDER
    if bundle.is_dir():
        sys.path.insert(0, str(bundle))
    sys.path.insert(0, str(workdir))
    namespace: dict[str, Any] = {"__name__": "__fitdock_script__", "__file__": str(script)}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    entry = runner._entry(namespace, 2)
    return entry, {"required": required_inputs(entry), "arity": runner._arity(entry)}


def required_inputs(entry: Callable[..., Any]) -> int:
    """How many positional parameters of ``entry`` have no default."""
    params = inspect.signature(entry).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.default is p.empty and p.kind in kinds)


def call(
    entry: Callable[..., Any], arity: int, inputs: list[Rows], script: Path
) -> tuple[bytes, bytes]:
    """One request: the inputs as DataFrames (fresh index), ``azureml_main`` over them,
    its outputs converted and normalized; ``(OK, response body)`` or ``(ERROR, error)``."""
    import pandas as pd

    from fitdock.script import convert

    try:
        frames = [convert.fresh_index(pd.DataFrame.from_records(rows)) for rows in inputs]
    except Exception as exc:
        return ERROR, _dump({"message": f"the rows cannot be made a DataFrame: {exc}"})
    try:
        result = entry(*frames[:arity])
        tables = [convert.normalize(frame) for frame in convert.to_frames(result)]
    except (Exception, SystemExit) as exc:
        error = _error(exc, script)
        print(error["message"], file=sys.stderr)
        print(error.get("traceback", ""), file=sys.stderr, end="", flush=True)
        return ERROR, _dump(error)
    try:
        outputs = [records(table) for table in tables] + [[], []]
        return OK, _dump({"Results": {"output1": outputs[0], "output2": outputs[1]}})
    except Exception as exc:  # e.g. a float inf in a column of objects
        message = f"azureml_main's outputs cannot be sent as JSON: {type(exc).__name__}: {exc}"
        return ERROR, _dump({"message": message})


def _error(exc: BaseException, script: Path) -> dict[str, Any]:
    if isinstance(exc, runner._Refused):
        return {"message": str(exc), "exception": "ValueError", "line": None}
    if isinstance(exc, ScriptError):  # what it returned cannot be a DataFrame
        return {"message": str(exc), "exception": exc.exception, "line": None}
    return runner._azure_error(exc, str(script))


def records(frame: Any) -> Rows:
    """``frame``'s rows as JSON objects; missing values and infinities become ``None``."""
    import numpy as np

    values = frame.to_numpy(dtype=object)
    missing = frame.isna().to_numpy(dtype=bool)
    for number, dtype in enumerate(frame.dtypes):
        if dtype.kind == "f":
            column = frame.iloc[:, number].to_numpy(dtype="float64", na_value=np.nan)
            missing[:, number] |= np.isinf(column)
    values[missing] = None
    columns = list(frame.columns)
    return [dict(zip(columns, row, strict=True)) for row in values.tolist()]


def _dump(value: Any) -> bytes:
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_native
    ).encode()


def _native(value: Any) -> Any:
    item = getattr(value, "item", None)  # a NumPy scalar
    return item() if callable(item) else str(value)


# ------------------------------------------------------------------ outside the sandbox
class Outcome(str, enum.Enum):
    """How one call ended."""

    OK = "ok"  # the script's outputs
    SCRIPT_ERROR = "script_error"  # azureml_main raised, or returned what is not a table
    TIMED_OUT = "timed_out"  # over the time limit: its worker was killed and is replaced
    WORKER_LOST = "worker_lost"  # its worker died or broke the protocol: replaced
    BUSY = "busy"  # no worker became free within the time limit


@dataclass
class Answer:
    outcome: Outcome
    body: bytes = b""  # OK: the response body; SCRIPT_ERROR: the error as JSON
    message: str = ""  # the other outcomes: what happened


@dataclass
class WorkerSpec:
    """What every worker of a pool runs: the script (its file name and text, copied when
    the pool starts, so that an edit while serving never mixes versions), the bundle and
    the isolation."""

    name: str
    text: str
    bundle: Path | None
    isolation: Isolation
    python: str = sys.executable
    start_timeout: float = 120.0


@dataclass(eq=False)
class Worker:
    """One worker process and its working folder."""

    number: int
    process: asyncio.subprocess.Process
    workdir: Path
    relay: asyncio.Task[None] | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    info: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls, spec: WorkerSpec, script: Path, readable: Sequence[Path], number: int
    ) -> Worker:
        """A worker that has loaded ``script``; :class:`ScriptError` when it cannot."""
        workdir = Path(tempfile.mkdtemp(prefix="fitdock-serve-"))
        try:
            if spec.bundle is not None:
                await asyncio.to_thread(extract_bundle, spec.bundle, workdir)
            argv = [spec.python, "-c", _ENTRY, "--script", str(script)]
            argv += ["--workdir", str(workdir)]
            cache = str(workdir / ".cache")
            env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": cache}
            env["XDG_CACHE_HOME"] = cache
            process = await asyncio.create_subprocess_exec(
                *wrap(argv, spec.isolation, workdir, readable=readable),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        worker = cls(number, process, workdir)
        worker.relay = asyncio.create_task(worker._relay())
        try:
            await worker._ready(spec.start_timeout)
        except BaseException:
            await worker.stop(kill=True)
            raise
        return worker

    async def _ready(self, limit: float) -> None:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), limit)
        except asyncio.TimeoutError:
            raise ScriptError(f"the worker did not load the script within {limit:g} s") from None
        parsed = _parse(line)
        if parsed is not None and parsed[1] == READY:
            self.info = json.loads(parsed[2])
            return
        if parsed is not None and parsed[1] == FAILED:
            error = json.loads(parsed[2])
            raise ScriptError(
                error["message"],
                line=error.get("line"),
                exception=error.get("exception"),
                traceback=error.get("traceback", ""),
            )
        code = await self.process.wait()
        if self.relay is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.relay), 1.0)
        said = "\n".join(self.tail)
        raise ScriptError(
            f"the worker process exited with code {code} before loading the script"
            + (f"; it said:\n{said}" if said else "")
        )

    async def _relay(self) -> None:
        """The worker's stderr (the script's prints, its tracebacks) to ours, prefixed."""
        assert self.process.stderr is not None
        prefix = f"[worker {self.number}] ".encode()
        while line := await self.process.stderr.readline():
            self.tail.append(line.decode(errors="replace").rstrip("\n"))
            sys.stderr.buffer.write(prefix + line)
            sys.stderr.flush()

    async def call(self, inputs: list[Rows], timeout: float) -> Answer:
        """One request; TIMED_OUT and WORKER_LOST leave the worker to be replaced."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.calls += 1
        number = self.calls
        line = json.dumps({"id": number, "inputs": inputs}).encode() + b"\n"
        try:
            self.process.stdin.write(line)
            answer = await asyncio.wait_for(self._exchange(), timeout)
        except asyncio.TimeoutError:
            return Answer(
                Outcome.TIMED_OUT,
                message=f"azureml_main did not return within the time limit of {timeout:g} s; "
                "its worker was stopped and is being replaced",
            )
        except (ConnectionError, ValueError) as exc:  # a closed pipe; an answer too long
            return Answer(Outcome.WORKER_LOST, message=self._lost(f"({exc})"))
        if not answer:  # it closed stdout: it is exiting
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_S)
        parsed = _parse(answer)
        if parsed is None or parsed[0] != number or parsed[1] not in (OK, ERROR):
            return Answer(Outcome.WORKER_LOST, message=self._lost(""))
        return Answer(Outcome.OK if parsed[1] == OK else Outcome.SCRIPT_ERROR, parsed[2])

    async def _exchange(self) -> bytes:
        assert self.process.stdin is not None and self.process.stdout is not None
        await self.process.stdin.drain()
        return await self.process.stdout.readline()

    def _lost(self, detail: str) -> str:
        code = self.process.returncode
        how = f"exited with code {code}" if code is not None else "broke the protocol"
        return (
            f"the worker running azureml_main {how} during the request{detail}; "
            "it is being replaced"
        )

    async def stop(self, *, kill: bool = False) -> None:
        """End the worker (stdin closed, then SIGKILL to its process group after a grace,
        or at once with ``kill``) and delete its working folder."""
        if not kill and self.process.stdin is not None:
            self.process.stdin.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_S)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: pgid == pid
        await self.process.wait()
        if self.relay is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self.relay, 1.0)
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)


def _parse(line: bytes) -> tuple[int, bytes, bytes] | None:
    parts = line.rstrip(b"\n").split(b" ", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1], parts[2]


class WorkerPool:
    """``size`` warm workers; :meth:`call` hands a request to an idle one."""

    def __init__(self, spec: WorkerSpec, size: int, timeout: float) -> None:
        self.spec = spec
        self.size = size
        self.timeout = timeout
        self.required = 0  # inputs azureml_main needs (known once started)
        self.workers: set[Worker] = set()
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._restarts: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self._numbers = 0
        self._staging: Path | None = None  # the script's copy, which every worker loads
        self._readable: list[Path] = []

    @property
    def idle(self) -> int:
        return self._idle.qsize()

    async def start(self) -> None:
        """Start every worker (once); :class:`ScriptError` when the script cannot load."""
        if self._started:
            return
        self._started = True
        self._staging = Path(tempfile.mkdtemp(prefix="fitdock-serve-script-"))
        (self._staging / self.spec.name).write_text(self.spec.text)
        self._readable = runner._needed(
            argparse.Namespace(script=str(self._staging / self.spec.name), input=[])
        )
        started = await asyncio.gather(
            *(self._start_one() for _ in range(self.size)), return_exceptions=True
        )
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        self.required = next(iter(self.workers)).info["required"]

    async def _start_one(self) -> Worker:
        self._numbers += 1
        assert self._staging is not None
        script = self._staging / self.spec.name
        worker = await Worker.start(self.spec, script, self._readable, self._numbers)
        self.workers.add(worker)
        self._idle.put_nowait(worker)
        return worker

    async def stop(self) -> None:
        """Stop every worker and pending restart."""
        self._closed = True
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        workers, self.workers = list(self.workers), set()
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        self._idle = asyncio.Queue()
        if self._staging is not None:
            await asyncio.to_thread(shutil.rmtree, self._staging, True)

    async def call(self, inputs: list[Rows]) -> Answer:
        worker = await self._acquire()
        if worker is None:
            return Answer(
                Outcome.BUSY,
                message=f"no worker became free within {self.timeout:g} s "
                f"({self.size} worker(s), all busy); try again later",
            )
        answer: Answer | None = None
        try:
            answer = await worker.call(inputs, self.timeout)
        finally:  # cancelled, or left mid-request: the worker cannot be trusted again
            if answer is not None and answer.outcome in (Outcome.OK, Outcome.SCRIPT_ERROR):
                self._idle.put_nowait(worker)
            else:
                self._replace(worker)
        return answer

    async def _acquire(self) -> Worker | None:
        """An idle, live worker; None when none is free within the time limit."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            getter = asyncio.ensure_future(self._idle.get())
            await asyncio.wait({getter}, timeout=max(left, 0.0))
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
            if not getter.done() or getter.cancelled():
                return None
            worker = getter.result()
            if worker.process.returncode is None:
                return worker
            self._replace(worker)  # it died while idle: the request goes to another

    def _replace(self, worker: Worker) -> None:
        self.workers.discard(worker)
        if self._closed:
            return
        task = asyncio.create_task(self._restart(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, old: Worker) -> None:
        await old.stop(kill=True)
        for attempt in range(1, RESTART_TRIES + 1):
            try:
                await self._start_one()
                return
            except Exception as exc:
                print(
                    f"fitdock script serve: a new worker failed to start (try {attempt} of "
                    f"{RESTART_TRIES}): {exc}",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(1.0)
