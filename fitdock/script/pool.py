"""The pool of warm workers behind ``fitdock script serve`` (asyncio, in the server): start
``size`` workers (:class:`fitdock.script.handle.Worker`) over one staged copy of the
script, hand each request to an idle one within the time limit, replace a worker that ran
over it (killed with its process group) or died, and stop them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

from fitdock.script import runner
from fitdock.script.handle import Worker, WorkerSpec
from fitdock.script.protocol import Answer, Outcome, Rows

RESTART_TRIES = 3


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
        self._readable = runner.needed_paths(self._staging / self.spec.name, [])
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
