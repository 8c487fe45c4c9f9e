"""``Run``: a handle on one run's record, logs, metrics and files.

``Run(run_id)`` opens a run of this machine's ``$FITDOCK_HOME``; ``fit()``
returns one. Inside a training script, ``Run.get_context()`` gives the
script's own view (``RunContext``). What the script logged (metrics, tables,
images, tags, properties, uploaded files) is read through ``runs/logbook.py``,
which also gives Azure's shapes of ``get_metrics()`` and ``get_details()``.
"""

from __future__ import annotations

import builtins
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock._units import human_size
from fitdock.errors import NotAvailableError, RunFailedError
from fitdock.runs import logbook
from fitdock.runs.context import RunContext
from fitdock.runs.status import RunStatus

if TYPE_CHECKING:
    from fitdock.execution.status_line import StatusLine
    from fitdock.execution.supervisor import Supervisor
    from fitdock.runs.models import Model

POLL_SECONDS = 0.1
NOT_BY_DEFAULT = ("logs/", "checkpoints/")  # download_files() without a prefix leaves these


class Run:
    """A run on this machine."""

    def __init__(
        self, run_id: str, *, home: Path | None = None, supervisor: Supervisor | None = None
    ) -> None:
        from fitdock.runs.store import RunDir  # not at import: every rank imports Run

        self._dir = RunDir.find(run_id, home)
        self._supervisor = supervisor

    # ------------------------------------------------------------------ class API
    @classmethod
    def get_context(
        cls, allow_offline: bool = True, used_for_context_manager: bool = False
    ) -> RunContext:
        """The current run, seen from inside a training script; outside a fitdock run an
        offline context (``allow_offline``), else ``NotAvailableError``. (Azure's
        ``used_for_context_manager`` is accepted and changes nothing.)"""
        if not allow_offline and not os.environ.get("FITDOCK_RUN_ID"):
            raise NotAvailableError(
                "Run.get_context(allow_offline=False) outside a fitdock run: run the script "
                "with fit() or `fitdock run`, or allow the offline context"
            )
        return RunContext()

    @classmethod
    def list(cls, home: Path | None = None) -> list[Run]:
        from fitdock.runs.store import list_runs

        return [cls(d.id, home=home) for d in list_runs(home)]

    # ------------------------------------------------------------------ record
    @property
    def id(self) -> str:
        return self._dir.id

    @property
    def record(self) -> dict[str, Any]:
        """The run record (``run.json``, see ``runs/record.py``) as JSON, checked for a lost
        supervisor (a scheduled run's is asked of its scheduler instead), with the tags the
        script set merged in, and Failed where the script called ``fail()``."""
        from fitdock.execution.current import checked_record

        return logbook.as_readers_see(checked_record(self._dir).as_json(), self._dir.path)

    def get_status(self) -> str:
        """Azure's status string (``"Completed"``, ``"Failed"``, ``"Running"``, ...)."""
        return self.status.value

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.record["status"])

    @property
    def error(self) -> dict[str, Any] | None:
        """Why the run did not complete: reason, message, and for a failed rank its
        rank, host, exit code or signal and stderr tail."""
        return self.record.get("error")

    def get_details(self) -> dict[str, Any]:
        """Azure's shape (``runId``, ``status``, ``startTimeUtc``, ``endTimeUtc``,
        ``properties``, ``runDefinition`` with ``script`` and ``arguments``, ``logFiles``
        (name -> path), ``error`` when it failed), with fitdock's ``record``."""
        return logbook.azure_details(self.record, self._dir.path)

    def get_tags(self) -> dict[str, str]:
        """The record's tags and those the script set (``tag``, ``set_tags``)."""
        return dict(self.record["tags"])

    def get_properties(self) -> dict[str, str]:
        """The properties the script added (``add_properties``)."""
        return logbook.read_properties(self._dir.path)

    def get_children(self, recursive: bool = False) -> builtins.list[Run]:
        """The runs whose parent this is, oldest first (``recursive``: theirs too). A
        pipeline's steps are children of its ``PipelineRun`` id: ``PipelineRun.get_steps()``
        gives them from the pipeline's side, with their names; ``Run.children_of(id)`` from
        any id."""
        return self.children_of(self.id, recursive=recursive, home=self._dir.path.parent.parent)

    @classmethod
    def children_of(
        cls, parent_id: str, recursive: bool = False, home: Path | None = None
    ) -> builtins.list[Run]:
        """The runs whose record names ``parent_id`` as their parent (a run, or a pipeline
        run), oldest first; with ``recursive`` their children follow each."""
        from fitdock.runs.store import list_runs

        found = []
        for run_dir in list_runs(home):
            if logbook.read_record(run_dir.path).get("parent_id") == parent_id:
                child = cls(run_dir.id, home=home)
                found.append(child)
                if recursive:
                    found += cls.children_of(child.id, recursive=True, home=home)
        return found

    def get_portal_url(self) -> str:
        """Where the run can be seen: its MLflow page when it was mirrored to an MLflow
        server (http/https), else its folder as a ``file://`` URL."""
        tracking = self._tracking()
        uri, experiment, mlflow_run = (tracking.get(k) for k in ("uri", "experiment_id", "run_id"))
        if str(uri).startswith(("http://", "https://")) and experiment and mlflow_run:
            return f"{str(uri).rstrip('/')}/#/experiments/{experiment}/runs/{mlflow_run}"
        return self._dir.path.resolve().as_uri()

    run_dir = property(lambda self: self._dir.path)
    output_dir = property(lambda self: self._dir.outputs)
    log_dir = property(lambda self: self._dir.logs)
    checkpoint_dir = property(lambda self: self._dir.checkpoints)
    snapshot_dir = property(lambda self: self._dir.snapshot)

    def plot(
        self, metrics: Any = None, out: Any = None, *, others: Any = (), terminal: bool = False
    ) -> Any:
        """Metric curves against step (``fitdock runs plot``): a matplotlib Figure, saved as
        PNG to ``out``; ``others``: more runs (or their ids) on the same axes."""
        from fitdock.runs.plot import plot_runs

        ids = [self.id, *(o if isinstance(o, str) else o.id for o in others)]
        return plot_runs(ids, metrics, out, terminal=terminal, home=self._dir.path.parent.parent)

    def _tracking(self) -> dict[str, Any]:
        """Where the run was mirrored (the record's ``tracking``; empty when it was not)."""
        return logbook.read_record(self._dir.path).get("tracking") or {}

    def _register_in_mlflow(
        self, name: str, path: str, tags: dict[str, Any] | None, description: str | None
    ) -> dict[str, str] | None:
        """The model's version in MLflow's registry when the run was mirrored there (a
        failure there is a warning: the local registry still gets the version)."""
        tracking = self._tracking()
        if not tracking.get("run_id") or tracking.get("uri") is None:
            return None
        from fitdock.execution.tracking_session import GiveUp, Refused, register_version

        uri, mlflow_run = str(tracking["uri"]), str(tracking["run_id"])
        texts = {str(k): str(v) for k, v in (tags or {}).items()}
        try:
            version = register_version(uri, mlflow_run, name, path, texts, description)
        except (GiveUp, Refused, ImportError) as exc:
            warnings.warn(
                f"model {name!r} registered here but not in MLflow at {uri}: {exc}", stacklevel=3
            )
            return None
        return {"uri": uri, "name": name, "version": version}

    # ------------------------------------------------------------------ waiting
    def wait_for_completion(
        self, show_output: bool = False, raise_on_error: bool = True
    ) -> dict[str, Any]:
        """Block until the run ends; with ``show_output`` print its logs, tagged by rank.
        Like Azure, raises ``RunFailedError`` for a run that did not complete unless
        ``raise_on_error=False``. Ctrl-C cancels a run this process supervises; a detached
        one (``fit(wait=False)``) goes on, and ``cancel()`` stops it."""
        follower: StatusLine | None = None
        if show_output:  # the logs under a live status line (plain lines off a terminal)
            from fitdock.execution.status_line import StatusLine  # lazily: ranks import Run

            follower = StatusLine(self._dir)
        try:
            while not self._ended():
                if follower is not None:
                    follower.pump()
        except KeyboardInterrupt:
            if self._supervisor is not None:
                if follower is not None:
                    follower.stopping("interrupted")
                self._supervisor.cancel()
                self._supervisor.done.wait()
            raise
        finally:
            if follower is not None:
                follower.pump(final=True)
        record = self.record
        if raise_on_error and record["status"] != RunStatus.COMPLETED.value:
            raise RunFailedError(self.id, RunStatus(record["status"]), record.get("error"))
        return record

    def _ended(self) -> bool:
        if self._supervisor is not None:
            return self._supervisor.done.wait(POLL_SECONDS)
        # Supervised elsewhere (detached, say): ended when the record is and its supervisor
        # has let go (it writes the MLflow mirror's outcome after the end state).
        if self.status.is_terminal and not self._dir.supervisor_alive():
            return True
        time.sleep(POLL_SECONDS)
        return False

    def cancel(self) -> None:
        """Stop the run: SIGTERM to its processes, the grace period, then SIGKILL (on the
        slurm target, ``scancel``)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            return
        from fitdock.execution.current import checked_record
        from fitdock.targets.registry import get_target

        record = checked_record(self._dir)
        if record.status.is_terminal:
            return
        self._dir.cancel_path.touch()  # a live supervisor elsewhere takes it from here
        if not self._dir.supervisor_alive():
            with self._dir.edit() as record:
                record.cancel_requested = True
            get_target(record.target).cancel(self._dir, record)

    # ------------------------------------------------------------------ results
    def get_metrics(
        self, name: str | None = None, rank: int | None = None, as_lists: bool = False
    ) -> dict[str, Any]:
        """Metric name -> what was logged, in logging order (all ranks, or one ``rank``), as
        Azure gives it: a metric logged once is its value, several times (or by
        ``log_list``) a list; a table (``log_row``, ``log_table``) a dict of columns; an
        image the path of its file in the run folder. ``as_lists=True``: every metric and
        image as a list (the form fitdock gave before)."""
        return logbook.metrics(self._dir.path, name, rank, as_lists)

    def get_file_names(self) -> builtins.list[str]:
        """Files of the run: outputs/, logs/, checkpoints/ relative to the run folder, and
        the files the script uploaded under other names, by those names."""
        names = logbook.uploaded_names(self._dir.path)
        for folder in (self._dir.outputs, self._dir.logs, self._dir.checkpoints):
            names += [
                p.relative_to(self._dir.path).as_posix() for p in folder.rglob("*") if p.is_file()
            ]
        return sorted(names)

    def download_file(self, name: str, output_file_path: str | Path | None = None) -> Path:
        """Copy one of ``get_file_names()`` to ``output_file_path`` (default: its name here)."""
        if name not in self.get_file_names():
            raise FileNotFoundError(f"run {self.id} has no file {name!r}; see get_file_names()")
        target = Path(output_file_path or Path(name).name)
        if target.is_dir():
            target = target / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(logbook.artifact_path(self._dir.path, name), target))

    def download_files(
        self,
        prefix: str | None = None,
        output_directory: str | Path | None = None,
        append_prefix: bool = True,
    ) -> builtins.list[Path]:
        """Copy the run's files whose names start with ``prefix`` into ``output_directory``
        (default: here), keeping their names as paths (``append_prefix=False``: without the
        prefix). No prefix: the outputs and the uploaded files (logs/ and checkpoints/ need
        theirs). Returns the copies."""
        names = [n for n in self.get_file_names() if n.startswith(prefix or "")]
        if prefix is None:
            names = [n for n in names if not n.startswith(NOT_BY_DEFAULT)]
        folder = Path(output_directory or ".")
        copies = []
        for name in names:
            relative = name if append_prefix or not prefix else name[len(prefix) :].lstrip("/")
            copies.append(self.download_file(name, folder / relative))
        return copies

    def register_model(
        self,
        model_name: str,
        model_path: str,
        tags: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        description: str | None = None,
        model_framework: str | None = None,
        model_framework_version: str | None = None,
    ) -> Model:
        """Register the run's file or folder ``model_path`` (a name as in
        ``get_file_names()``, e.g. ``outputs/model.pt`` or ``outputs/model``) in the model
        registry as the next version of ``model_name`` (``fitdock.Model``)."""
        from fitdock.runs.models import register

        source = logbook.artifact_path(self._dir.path, model_path)
        if not source.exists():
            raise FileNotFoundError(
                f"run {self.id} has no file or folder {model_path!r}; see get_file_names()"
            )
        extra = {
            "framework": model_framework,
            "framework_version": model_framework_version,
            "mlflow": self._register_in_mlflow(model_name, model_path, tags, description),
        }
        return register(
            model_name, source, run_id=self.id, tags=tags, properties=properties,
            description=description, extra=extra, home=self._dir.path.parent.parent,
        )  # fmt: skip

    def summary(self) -> str:
        """What ``fitdock runs show`` prints: the record, metrics, tables, images, tags,
        properties and where the files are."""
        record = self.record
        lines = [
            f"run {self.id}: {record['status']}",
            f"  ranks: {record.get('world_size')}  target: {record.get('target')}",
            f"  snapshot: {_snapshot_text(record.get('source') or {})}",
            f"  started: {record.get('started_at')}  ended: {record.get('ended_at')}",
        ]
        path = self._dir.path
        metrics = logbook.metrics(path, as_lists=True)
        tables, images = logbook.tables(path), logbook.images(path)
        for metric, values in metrics.items():
            if metric not in tables and metric not in images:
                lines.append(f"  {metric}: {values[-1]} (last of {len(values)})")
        for table, columns in tables.items():
            rows = len(next(iter(columns.values()), []))
            lines.append(f"  table {table}: {rows} rows ({', '.join(columns)})")
        error = record.get("error")
        if error:
            lines.append(f"  error: {error.get('message')}")
        for tag, value in sorted((record.get("tags") or {}).items()):
            lines.append(f"  {tag}: {value}")
        for key, value in sorted(logbook.read_properties(path).items()):
            lines.append(f"  property {key}: {value}")
        lines.append(f"  outputs: {self._dir.outputs}")
        logged = {file: name for name, files in images.items() for file in files}
        if self._dir.images.is_dir():  # log_image's PNGs, and what a script saved there
            for image in sorted(self._dir.images.glob("*.png")):
                name = logged.get(image.relative_to(path).as_posix())
                lines.append(f"  image: {image}" + (f" ({name})" if name else ""))
        uploaded = logbook.uploaded_names(path)
        if uploaded:
            lines.append(f"  uploaded: {len(uploaded)} files in {self._dir.uploads}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, status={self.status.value})"


def _snapshot_text(source: dict[str, Any]) -> str:
    files, size = source.get("files"), source.get("bytes")
    if files is None or size is None:
        return "-"
    commit, shared, refused = (source.get(k) for k in ("git_commit", "shared", "share_error"))
    text = f"{files} files, {human_size(size)}" + (f", git {commit[:12]}" if commit else "")
    if shared:
        text += f", shared (store {shared[:12]})"
    elif refused:
        text += f", copied (not shared: {refused})"
    return text
