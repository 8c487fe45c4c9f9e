"""One warm worker of ``fitdock script serve`` seen from the server (asyncio): start the
worker process (:mod:`fitdock.script.worker`) sandboxed in a fresh working folder with the
bundle extracted there, wait for its ``ready`` line, send it one request at a time with a
time limit, relay what it prints, and stop it (its process group killed, its folder
deleted). Replacing a worker is :mod:`fitdock.script.pool`'s job; the lines exchanged are
:mod:`fitdock.script.protocol`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fitdock.errors import ScriptError
from fitdock.script.bundle import extract_bundle
from fitdock.script.protocol import (
    ERROR,
    FAILED,
    OK,
    READY,
    TOKEN_VARIABLE,
    Answer,
    Outcome,
    Rows,
    parse_answer,
    request_line,
)
from fitdock.script.sandbox import Isolation, wrap

LINE_LIMIT = 256 * 1024 * 1024  # the longest answer line the server reads
STOP_GRACE_S = 2.0  # a worker told to stop (stdin closed) is killed after this
_ENTRY = "from fitdock.script.worker import main; main()"


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


def worker_environment(workdir: Path) -> dict[str, str]:
    """The worker's variables: ours without the server's token, matplotlib on Agg, and the
    caches in its working folder (the home is read-only in the sandbox)."""
    env = {name: value for name, value in os.environ.items() if name != TOKEN_VARIABLE}
    cache = str(workdir / ".cache")
    return {**env, "MPLBACKEND": "Agg", "MPLCONFIGDIR": cache, "XDG_CACHE_HOME": cache}


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
            process = await asyncio.create_subprocess_exec(
                *wrap(argv, spec.isolation, workdir, readable=readable),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=worker_environment(workdir),
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
        parsed = parse_answer(line)
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
        line = request_line(number, inputs)
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
        parsed = parse_answer(answer)
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
