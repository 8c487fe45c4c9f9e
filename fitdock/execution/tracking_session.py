"""MLflow sessions for ``execution/tracking.py``: a client whose calls are retried, and
the MLflow run of a pipeline run (``ParentRun``), which its steps' runs nest under.

A call that fails for a reason worth retrying (unreachable, timed out, 5xx) is tried again
after ``backoff`` (0.5 s doubling to 8 s) until the run ends; after the end a call gets
``tries_after_end`` tries, so a server that is down never holds the end of a run. A refusal
(4xx: ``REFUSED``) is never retried. ``mlflow`` is imported only once a session connects.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from fitdock._version import __version__
from fitdock.execution.tracking_data import RUN_TAG, metric_key
from fitdock.runs.status import RunStatus

FLUSH_SECONDS = 10.0  # the longest a run's end waits for its mirror (a server that answers)
# MLflow's HTTP client retries for minutes by default; the mirror retries itself (unless the
# user has set these, in which case theirs hold).
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # set_terminated would print links
}
# MLflow error codes that say "never": the same request would be refused again.
REFUSED = frozenset(
    {
        "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
        "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED",
        "ENDPOINT_NOT_FOUND",
    }
)  # fmt: skip
_MLFLOW_STATUS = {RunStatus.COMPLETED: "FINISHED", RunStatus.CANCELED: "KILLED"}  # else FAILED
_PARENTS: dict[str, ParentRun] = {}  # pipeline run id -> its MLflow run, in this process
_PARENTS_LOCK = threading.Lock()


def backoff(failures: int) -> float:
    """Seconds before trying again after ``failures`` failures in a row: 0.5, 1, 2, 4, 8."""
    return float(min(0.5 * 2 ** max(failures - 1, 0), 8.0))


def retryable(exc: BaseException) -> bool:
    """Worth another try: the server unreachable, slow or failing; not a refusal (4xx)."""
    return not isinstance(exc, Refused) and getattr(exc, "error_code", None) not in REFUSED


def mlflow_status(status: RunStatus) -> str:
    return _MLFLOW_STATUS.get(status, "FAILED")


class Refused(Exception):
    """A refusal found on this side (e.g. the experiment is deleted in MLflow)."""


class GiveUp(Exception):
    """The mirror stops: past its deadline, or the server failed after the run's end."""


class Session:
    """A client, and calls with retries: ``call`` tries again after ``backoff`` until the
    run's end (``ending``); after it, a call gets ``tries_after_end`` tries at most."""

    def __init__(self, uri: str, tries_after_end: int = 1) -> None:
        self.uri = uri
        self.tries_after_end = tries_after_end
        self.ending = threading.Event()
        self.abandon = threading.Event()
        self.wake = threading.Event()
        self.error: str | None = None
        self.client: Any = None

    def connect(self) -> None:
        if self.client is None:
            for name, value in CLIENT_DEFAULTS.items():
                os.environ.setdefault(name, value)
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri)

    def call(self, action: Callable[[], None]) -> bool:
        """True when ``action`` succeeded, False when MLflow refused it; ``GiveUp`` when
        the retries ran out."""
        failures = after_end = 0
        while True:
            if self.abandon.is_set():
                raise GiveUp
            try:
                action()
                return True
            except GiveUp:
                raise
            except Exception as exc:
                self.note(exc)
                if not retryable(exc):
                    return False
                failures += 1
                after_end += self.ending.is_set()
                if after_end >= self.tries_after_end:
                    raise GiveUp from exc
                self.wake.wait(backoff(failures))  # the run's end wakes it: one more try
                self.wake.clear()

    def note(self, exc: BaseException) -> None:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.error = f"{type(exc).__name__}: {text}"[:500]

    def experiment(self, name: str) -> str:
        """The id of the experiment called ``name``, made when there is none."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return str(self.client.create_experiment(name))
            except Exception as exc:  # made meanwhile by another run
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise exc from None
        if found.lifecycle_stage == "deleted":
            raise Refused(f"the MLflow experiment {name!r} is deleted: restore it, or purge it")
        return str(found.experiment_id)

    def find(self, fitdock_id: str, experiment_ids: list[str] | None = None) -> Any:
        """The MLflow run mirroring ``fitdock_id`` (its tag), or None."""
        if experiment_ids is None:
            experiment_ids = [e.experiment_id for e in self.client.search_experiments()]
        if not experiment_ids:
            return None
        runs = self.client.search_runs(
            experiment_ids, filter_string=f"tags.`{RUN_TAG}` = '{fitdock_id}'", max_results=1
        )
        return runs[0] if runs else None


class ParentRun(Session):
    """A pipeline run's MLflow run, opened in a thread; its steps' runs nest under it."""

    def __init__(self, pipeline_id: str, experiment: str, params: dict[str, Any], uri: str) -> None:
        super().__init__(uri, tries_after_end=2)
        self.pipeline_id = pipeline_id
        self.experiment_name = experiment
        self.params = params
        self.ready = threading.Event()
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def open(self) -> None:
        def create() -> None:
            self.connect()
            experiment = self.experiment(self.experiment_name)
            found = self.find(self.pipeline_id, [experiment])
            if found is None:
                tags = {RUN_TAG: self.pipeline_id, "fitdock.kind": "pipeline"}
                tags["fitdock.version"] = __version__
                found = self.client.create_run(experiment, tags=tags, run_name=self.pipeline_id)
                self._log_params(found.info.run_id)
            self.experiment_id, self.run_id = experiment, found.info.run_id

        try:
            with contextlib.suppress(GiveUp):
                self.call(create)
        finally:
            self.ready.set()

    def _log_params(self, run_id: str) -> None:
        from mlflow.entities import Param

        params = [Param(metric_key(str(k)), str(v)[:6000]) for k, v in self.params.items()]
        self.client.log_batch(run_id, params=params)

    def finish(self, status: RunStatus, timeout: float | None = None) -> None:
        """Set the parent's final status (bounded like a run's end); forget it here."""
        timeout = FLUSH_SECONDS if timeout is None else timeout
        with _PARENTS_LOCK:
            _PARENTS.pop(self.pipeline_id, None)
        self.ending.set()
        self.wake.set()
        if not self.ready.wait(timeout) or self.run_id is None:
            return
        run_id = self.run_id

        def close() -> None:
            with contextlib.suppress(GiveUp):
                self.call(lambda: self.client.set_terminated(run_id, mlflow_status(status)))

        closing = threading.Thread(target=close, name=f"fitdock-mlflow-{self.pipeline_id}")
        closing.daemon = True
        closing.start()
        closing.join(timeout)


def register(parent: ParentRun) -> None:
    """Let the runs of this pipeline's steps find its MLflow run (in this process)."""
    with _PARENTS_LOCK:
        _PARENTS[parent.pipeline_id] = parent


def registered(pipeline_id: str) -> ParentRun | None:
    with _PARENTS_LOCK:
        return _PARENTS.get(pipeline_id)


def register_version(
    uri: str, run_id: str, name: str, path: str, tags: dict[str, str], description: str | None
) -> str:
    """Register ``path`` (an artifact of the MLflow run ``run_id``, e.g. ``outputs/model.pt``)
    as the next version of ``name`` in MLflow's model registry; its version number.
    A few tries, then ``GiveUp``; ``Refused`` when MLflow refuses it."""
    session = Session(uri, tries_after_end=3)
    session.ending.set()
    session.connect()
    client = session.client
    created: list[Any] = []

    def create_model() -> None:
        try:
            client.create_registered_model(name)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise

    def create_version() -> None:
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
        created.append(client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=description
        ))  # fmt: skip

    if not (session.call(create_model) and session.call(create_version)):
        raise Refused(session.error or f"MLflow refused model {name!r}")
    return str(created[0].version)
