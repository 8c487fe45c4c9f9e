"""Mirror runs to MLflow from the supervising process: one MLflow run per fitdock run.

Mirroring is on when the job asks for it (``tracking="mlflow"``, ``--tracking mlflow``) or
``MLFLOW_TRACKING_URI`` is set where the run is submitted, and the ``mlflow`` extra is
installed; ``tracking="off"`` or ``FITDOCK_TRACKING=off`` turns it off. ``mlflow`` is imported
by this module and ``tracking_session`` only, and only then: ``import fitdock`` never loads
it. ``tracking_data`` says what a run is to MLflow (values, params, tags, tables).

    Supervisor.run ─ start(run) ─> Mirror (a thread)                    MLflow
                                   open: experiment, run ─────────────> create_run, tags
                                   params, tags ──────────────────────> log_batch
    ranks append metrics.jsonl ──> read on from the offset ───────────> log_batch (1,000 a call)
    end state written ─ finish() ─> the rest, tables, outputs/ ───────> log_batch, log_artifacts
    record.tracking <── TrackingInfo  the final status ───────────────> set_terminated

The training loop only appends lines to a file (``RunContext.log``); no call of its own
reaches the server. A call that fails for a reason worth retrying (unreachable, timed out,
5xx) is tried again after a backoff (``tracking_session``); the run's end waits at most
``FLUSH_SECONDS`` for
what is left, and no longer once the server has failed after the end. The record's
``tracking`` (``TrackingInfo``) names what was not sent; ``sync`` (``fitdock runs
sync-mlflow``) sends it later, from the offset. A pipeline's scheduler opens a parent run
(``pipeline_parent``); the runs of its steps nest under it (``mlflow.parentRunId``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fitdock.errors import FitdockError, NotAvailableError
from fitdock.execution import tracking_session as session
from fitdock.execution.current import checked_record
from fitdock.execution.tracking_data import (
    BATCH,
    MetricReader,
    Value,
    count_values,
    metric_key,
    run_params,
    run_tags,
    table_json,
)
from fitdock.execution.tracking_lanes import Drain
from fitdock.execution.tracking_session import GiveUp, ParentRun, Session, mlflow_status
from fitdock.runs import logbook
from fitdock.runs.layout import OUTPUTS
from fitdock.runs.record import MirrorPart, RunRecord, TrackingInfo
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir
from fitdock.shared import fitdock_home, now_iso
from fitdock.specs.job import JobSpec

POLL_SECONDS = 0.2  # how often a quiet metrics file is looked at
NICE = 19  # the mirror thread's niceness (Linux: per thread): it never takes a rank's CPU
LANES = 4  # requests at once when the run's end finds values left for a server


def tracking_uri(
    environ: Mapping[str, str] | None = None, spec: JobSpec | None = None
) -> str | None:
    """The MLflow tracking URI a run is mirrored to, or None when mirroring is off.

    The job's own choice comes first (``tracking``, ``tracking_uri``), then the variables:
    ``FITDOCK_TRACKING=off``, ``MLFLOW_TRACKING_URI``. ``tracking="mlflow"`` with no URI
    anywhere mirrors to ``$FITDOCK_HOME/mlflow.db`` (``mlflow ui --backend-store-uri``
    that URI shows it).
    """
    env = os.environ if environ is None else environ
    choice = spec.tracking if spec is not None else None
    if choice == "off":
        return None
    if choice is None and env.get("FITDOCK_TRACKING", "").strip().lower() in _OFF:
        return None
    uri = (spec.tracking_uri if spec is not None else None) or env.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return default_uri() if choice == "mlflow" else None


def default_uri() -> str:
    """Where ``tracking="mlflow"`` mirrors when no URI is given: the home folder's sqlite."""
    return f"sqlite:///{fitdock_home() / 'mlflow.db'}"


_OFF = ("off", "0", "false", "no", "none")


class Mirror(Session):
    """One run's mirror: ``start`` in a thread, ``finish`` at the run's end; or ``sync``."""

    def __init__(
        self, run: RunDir, uri: str, info: TrackingInfo | None = None, tries_after_end: int = 1
    ) -> None:
        super().__init__(uri, tries_after_end)
        self.run = run
        known = info if info is not None and info.uri == uri else None
        self.experiment_id = known.experiment_id if known else None
        self.run_id = known.run_id if known else None
        self.reader = MetricReader(run.metrics, known.metrics_offset if known else 0)
        self.sent = self.reader.values  # what lies before the offset was sent
        self.offset = self.reader.offset
        self.pending: list[Value] = []
        self.missing = set(MirrorPart)
        self.todo = (set(known.missing) | {MirrorPart.RUN}) if known else set(MirrorPart)
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> Mirror:
        self.thread = threading.Thread(target=self.yielding, name=f"fitdock-mlflow-{self.run.id}")
        self.thread.daemon = True  # a hung request never keeps the process alive
        self.thread.start()
        return self

    def yielding(self) -> None:
        """``work``, at a niceness that leaves the CPUs to the job's ranks."""
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        self.work()

    def finish(self, timeout: float | None = None) -> TrackingInfo:
        """Send what is left (the run has ended); wait at most ``timeout`` seconds
        (``FLUSH_SECONDS``)."""
        timeout = session.FLUSH_SECONDS if timeout is None else timeout
        if self.thread is not None and self.thread.native_id is not None:
            # The ranks are gone: nothing left to yield to (raising a priority needs
            # CAP_SYS_NICE; without it the thread stays niced)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.thread.native_id, 0)
        self.ending.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                self.abandon.set()
                self.error = f"gave up after {timeout:g} s (last error: {self.error})"
        return self.info()

    def info(self) -> TrackingInfo:
        with self.lock:
            missing = [part for part in MirrorPart if part in self.missing]
            sent, offset = self.sent, self.offset
        if MirrorPart.METRICS in missing:  # count what is left, for the record
            logged = sent + count_values(self.run.metrics, offset)
        else:
            logged = sent
        return TrackingInfo(
            uri=self.uri, experiment_id=self.experiment_id, run_id=self.run_id,
            metrics_logged=logged, metrics_mirrored=sent, metrics_offset=offset,
            skipped=dict(self.reader.skipped), missing=missing,
            error=self.error if missing else None,
        )  # fmt: skip

    # ------------------------------------------------------------------ the thread
    def work(self) -> None:
        try:
            self.step(MirrorPart.RUN, self.open, required=True)
            self.step(MirrorPart.PARAMS, self.log_params)
            self.step(MirrorPart.TAGS, self.log_tags)
            while not self.ending.is_set():
                if not self.send_batch():
                    self.wake.wait(POLL_SECONDS)
                    self.wake.clear()
            self.drain()
            self.done(MirrorPart.METRICS)
            self.step(MirrorPart.TAGS, self.log_tags)  # and those the script set meanwhile
            self.step(MirrorPart.ARTIFACTS, self.log_artifacts)
            self.step(MirrorPart.STATUS, self.log_status)
        except GiveUp:
            pass
        except Exception as exc:  # a fault here must never reach the run
            self.note(exc)

    def step(self, part: MirrorPart, action: Callable[[], None], required: bool = False) -> None:
        """Send one part (one a sync finds sent already is not sent again)."""
        if part not in self.todo:
            self.done(part)
            return
        with self.lock:
            self.missing.add(part)
        if self.call(action):
            self.done(part)
        elif required:
            raise GiveUp

    def done(self, part: MirrorPart) -> None:
        with self.lock:
            self.missing.discard(part)

    def send_batch(self) -> bool:
        """Send the next batch of values; False when there was none."""
        if not self.pending:
            self.pending = self.reader.read(BATCH)
            if not self.pending:
                return False
        if not self.call(self.log_pending):  # refused: these values cannot be mirrored
            for value in self.pending:
                self.reader.skipped[value.key] = self.reader.skipped.get(value.key, 0) + 1
        with self.lock:
            self.sent += len(self.pending)
            self.offset = self.reader.offset
            self.pending = []
        return True

    def drain(self) -> None:
        """After the run's end, the values left: over ``LANES`` requests at once to an
        http(s) server (its workers take them side by side: the backlog of a loop that
        logged faster than the server ingests goes in about twice as fast), one at a
        time to a local store. The offset moves only over the batches sent in order, so
        a sync after a failure sends again from the first batch not sent."""
        lanes = LANES if self.uri.startswith(("http://", "https://")) else 1
        if lanes == 1:
            while self.send_batch():
                pass
            return
        drain = Drain(self)
        threads = [threading.Thread(target=drain.lane, daemon=True) for _ in range(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if drain.given_up:
            raise GiveUp

    # ------------------------------------------------------------------ the calls
    def open(self) -> None:
        self.connect()
        if self.run_id is not None and self.exists(self.run_id):
            return
        record = self.run.read()
        parent = self.parent(record)
        experiment = parent[0] if parent else self.experiment(record.name)
        found = self.find(record.id, [experiment])
        if found is None:
            tags = run_tags(record)
            if parent:
                tags["mlflow.parentRunId"] = parent[1]
            start = _ms(record.started_at or record.created_at)
            found = self.client.create_run(
                experiment, start_time=start, tags=tags, run_name=record.id
            )
        if self.run_id is not None and found.info.run_id != self.run_id:  # it was deleted
            with self.lock:
                self.todo, self.pending = set(MirrorPart), []
                self.reader = MetricReader(self.run.metrics)
                self.sent = self.offset = 0
        self.experiment_id, self.run_id = experiment, found.info.run_id

    def exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage != "deleted"
        except Exception as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def parent(self, record: RunRecord) -> tuple[str, str] | None:
        """The experiment and MLflow run of the pipeline run this run is a step of."""
        if record.parent_id is None:
            return None
        opened = session.registered(record.parent_id)
        if opened is not None:  # opened by this process's scheduler
            opened.ready.wait(session.FLUSH_SECONDS)
            if opened.run_id is not None and opened.experiment_id is not None:
                return opened.experiment_id, opened.run_id
        found = self.find(record.parent_id)
        return (found.info.experiment_id, found.info.run_id) if found is not None else None

    def log_params(self) -> None:
        from mlflow.entities import Param

        params = run_params(self.run.read())
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def log_tags(self) -> None:
        from mlflow.entities import RunTag

        record = self.run.read()
        tags_set = logbook.merged_tags(record.as_json(), self.run.path)
        own = {**logbook.read_properties(self.run.path), **tags_set}
        tags = run_tags(record, own)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_pending(self) -> None:
        self.log_values(self.pending)

    def log_values(self, values: list[Value]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(v.key, v.value, v.timestamp, v.step) for v in values]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifacts(self) -> None:
        """Tables as JSON (``tables/<name>.json``, MLflow's table form), ``outputs/`` (with
        the images of ``log_image``) and the files uploaded under other names."""
        tables = logbook.tables(self.run.path)
        if tables:
            with tempfile.TemporaryDirectory(prefix="fitdock-tables-") as folder:
                for name, columns in tables.items():
                    path = Path(folder) / f"{metric_key(name).replace('/', '_')}.json"
                    path.write_text(json.dumps(table_json(columns), default=str))
                self.client.log_artifacts(self.run_id, folder, "tables")
        uploads = self.run.uploads
        if uploads.is_dir() and any(uploads.iterdir()):
            self.client.log_artifacts(self.run_id, str(uploads))
        outputs = self.run.outputs
        for entry in sorted(outputs.iterdir()) if outputs.is_dir() else []:
            if entry.name.startswith("."):  # e.g. a function step's signed results
                continue
            if entry.is_dir():
                if any(entry.iterdir()):
                    self.client.log_artifacts(self.run_id, str(entry), f"{OUTPUTS}/{entry.name}")
            else:
                self.client.log_artifact(self.run_id, str(entry), OUTPUTS)

    def log_status(self) -> None:
        """The status readers see (Failed where the script called ``fail()``)."""
        record = self.run.read()
        if record.status.is_terminal:
            shown = RunStatus(logbook.as_readers_see(record.as_json(), self.run.path)["status"])
            end = _ms(record.ended_at) if record.ended_at else None
            self.client.set_terminated(self.run_id, mlflow_status(shown), end)


# ---------------------------------------------------------------------- entry points
def start(run: RunDir, spec: JobSpec | None = None) -> Mirror | None:
    """Start mirroring ``run`` when tracking is on (called by its supervisor)."""
    uri = tracking_uri(spec=spec)
    if uri is None:
        return None
    mirror = Mirror(run, uri)
    if importlib.util.find_spec("mlflow") is None:
        mirror.error = f"tracking to {uri} asked for but mlflow is not installed (fitdock[mlflow])"
        print(f"fitdock: run {run.id}: {mirror.error}", file=sys.stderr, flush=True)
        return mirror  # no thread: finish() reports every part as missing
    return mirror.start()


def sync(run: RunDir, uri: str | None = None) -> TrackingInfo:
    """Mirror an ended run now: what its mirror did not send (or all of it); the record's
    ``tracking`` is brought up to date."""
    record = checked_record(run)
    known = record.tracking
    uri = uri or tracking_uri() or (known.uri if known is not None else None)
    if not uri:
        raise FitdockError(
            f"run {run.id}: no tracking URI: set MLFLOW_TRACKING_URI or pass --tracking-uri"
        )
    if not record.status.is_terminal:
        raise FitdockError(
            f"run {run.id} is {record.status}: its supervisor mirrors it; sync it once it ended"
        )
    if importlib.util.find_spec("mlflow") is None:
        raise NotAvailableError("mlflow is not installed: pip install 'fitdock[mlflow]'")
    mirror = Mirror(run, uri, known, tries_after_end=4)
    mirror.ending.set()
    mirror.work()
    info = mirror.info()
    info.synced_at = now_iso()
    with run.edit() as edited:
        edited.tracking = info
    return info


def pipeline_parent(pipeline_id: str, experiment: str, params: dict[str, Any]) -> ParentRun | None:
    """Open the MLflow run of a pipeline run in the background, when tracking is on."""
    uri = tracking_uri()
    if uri is None or importlib.util.find_spec("mlflow") is None:
        return None
    parent = ParentRun(pipeline_id, experiment, params, uri)
    session.register(parent)
    thread = threading.Thread(target=parent.open, name=f"fitdock-mlflow-{pipeline_id}")
    thread.daemon = True
    thread.start()
    return parent


def sync_pipeline(
    pipeline_id: str, experiment: str, params: dict[str, Any], status: RunStatus, uri: str
) -> str | None:
    """Make sure a pipeline run has its MLflow run, with its final status; its id."""
    parent = ParentRun(pipeline_id, experiment, params, uri)
    parent.ending.set()  # a few tries, no waiting for a server that is down
    parent.open()
    if status.is_terminal:
        parent.finish(status)
    return parent.run_id


def _ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)
