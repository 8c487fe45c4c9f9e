"""The in-script view of a run: ``Run.get_context()`` inside a training script.

Stdlib only, and light, because every rank imports it. Inside a fitdock run the launcher
sets ``FITDOCK_*`` variables; outside one the context is *offline*: what is logged goes to
stdout (tags and properties stay in memory), and the directories default to ``./outputs``
and ``./checkpoints``, so the same script runs under plain ``python`` too (Azure's
``allow_offline``).

What a script logs goes to files of its own in the run folder (named in ``runs/logbook.py``,
which reads them back; ``runs/layout.py`` lists them with the rest): one JSON line per
call, appended with ``O_APPEND`` (a line longer than 512 bytes also under an ``flock``), so
ranks logging at once never interleave or lose a line. Images go to ``outputs/images/``,
files uploaded under other names than ``outputs/...`` to ``uploads/``. The supervisor owns
``run.json``; the script never writes it: readers merge the script's tags, properties and
declared status into what they show.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from fitdock.runs import logbook
from fitdock.runs.logbook import IMAGE_LOG, IMAGES, METRICS, STATUS_LOG, TABLES, TAGS

METRICS_FILE = METRICS  # the name this module gave it before logbook.py
_LOCK_ABOVE = 512  # bytes: a longer line is written under an flock


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def _plain(value: Any) -> Any:
    """JSON for what is not: numpy scalars and arrays, paths; else its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def append_line(path: Path, record: dict[str, Any], *, lock: bool = True) -> None:
    """Append ``record`` as one JSON line. One ``write`` with ``O_APPEND``: lines from
    several ranks never interleave; a long one is also written under an ``flock``, so a
    partial write finished by a second ``write`` cannot be split by another rank's line."""
    data = (json.dumps(record, default=_plain) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if lock and len(data) > _LOCK_ABOVE:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def check_name(name: Any, what: str = "metric") -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} name must be a non-empty string, got {name!r}")
    return name


class RunReference:
    """Another run, by id: ``ctx.parent`` (a step's pipeline run). Azure gives a ``Run``;
    in the script fitdock gives its ``id`` (open it with ``fitdock.Run(id)`` outside)."""

    __slots__ = ("id",)

    def __init__(self, run_id: str) -> None:
        self.id = run_id

    def __repr__(self) -> str:
        return f"RunReference(id={self.id!r})"


class ExperimentReference:
    """The run's experiment, by name (``ctx.experiment.name``; ``str()`` gives the name)."""

    __slots__ = ("name",)

    def __init__(self, name: str | None) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name or ""

    def __repr__(self) -> str:
        return f"ExperimentReference(name={self.name!r})"


class RunContext:
    """What a training script sees of its run (Azure's in-script ``Run``)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.id: str | None = env.get("FITDOCK_RUN_ID") or None
        self.offline = self.id is None
        self.rank = _env_int(("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"), 0)
        self.world_size = _env_int(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"), 1)
        self.local_rank = _env_int(("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"), 0)
        self.output_dir = Path(env.get("FITDOCK_OUTPUT_DIR") or "outputs")
        self.log_dir = Path(env.get("FITDOCK_LOG_DIR") or "logs")
        self.checkpoint_dir = Path(env.get("FITDOCK_CHECKPOINT_DIR") or "checkpoints")
        resume = env.get("FITDOCK_RESUME_DIR")
        self.resume_dir: Path | None = Path(resume) if resume else None
        run_dir = env.get("FITDOCK_RUN_DIR")
        self.run_dir: Path | None = Path(run_dir) if run_dir else None
        self._metrics_path = self.run_dir / METRICS if self.run_dir else None
        self._tags: dict[str, str] = {}  # offline, and what this process set
        self._properties: dict[str, str] = {}
        self._declared: str | None = None  # "Completed" or "Failed", from complete()/fail()
        if self.offline:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ metrics
    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Record one value of metric ``name``; values keep their logging order."""
        record = {
            "name": check_name(name),
            "value": value,
            "step": step,
            "rank": self.rank,
            "time": time.time(),
        }
        if description:
            record["description"] = description
        if self._metrics_path is None:
            sys.stdout.write(
                f"[metric] {name}={value}" + (f" step={step}" if step is not None else "") + "\n"
            )
            return
        append_line(self._metrics_path, record, lock=False)  # short: one write is enough

    def log_list(self, name: str, value: list[Any], description: str = "") -> None:
        """Record a list of values of one metric (read back as a list, even of one)."""
        check_name(name)
        if self._metrics_path is None:
            sys.stdout.write(f"[metric] {name}={list(value)}\n")
            return
        now = time.time()
        for item in value:
            record = {"name": name, "value": item, "step": None, "rank": self.rank, "time": now}
            append_line(self._metrics_path, {**record, "kind": "list"}, lock=False)

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        """Add one row to table ``name``: ``log_row("curve", x=1, y=0.5)``; the columns are
        the keywords (a column missing from a row reads as ``None`` there)."""
        check_name(name)
        if not kwargs:
            raise ValueError(f"log_row({name!r}) needs at least one column=value")
        self._table_line(name, "row", {"row": kwargs}, description)

    def log_table(self, name: str, value: dict[str, Any], description: str = "") -> None:
        """Add rows to table ``name`` from a dict of columns of equal length:
        ``log_table("pr", {"precision": [...], "recall": [...]})``."""
        check_name(name)
        if not isinstance(value, dict) or not value:
            raise ValueError(f"log_table({name!r}) takes a dict of columns, got {value!r}")
        columns = {str(key): list(column) for key, column in value.items()}
        lengths = {key: len(column) for key, column in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"log_table({name!r}): columns of different lengths: {lengths}")
        self._table_line(name, "table", {"columns": columns}, description)

    def _table_line(
        self, name: str, kind: str, body: dict[str, Any], description: str | None
    ) -> None:
        if self.run_dir is None:
            sys.stdout.write(f"[{kind}] {name}: {json.dumps(body, default=_plain)}\n")
            return
        line = {"name": name, "kind": kind, **body, "rank": self.rank, "time": time.time()}
        if description:
            line["description"] = description
        append_line(self.run_dir / TABLES, line)

    def log_image(
        self, name: str, path: str | os.PathLike[str] | None = None, plot: Any = None,
        description: str = "",
    ) -> Path:  # fmt: skip
        """Keep an image: the PNG at ``path`` is copied, or the matplotlib figure ``plot`` is
        saved (``plot.savefig``), into ``outputs/images/``; returns where it went."""
        check_name(name, "image")
        if (path is None) == (plot is None):
            raise ValueError(f"log_image({name!r}) takes a path or a plot, not both or neither")
        folder = self.output_dir / IMAGES
        folder.mkdir(parents=True, exist_ok=True)
        target, handle = _claim(folder, name, ".png")
        try:
            with handle:
                if path is not None:
                    import shutil

                    with open(path, "rb") as source:
                        shutil.copyfileobj(source, handle)
                else:
                    plot.savefig(handle, format="png")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        if self.run_dir is None:
            sys.stdout.write(f"[image] {name}: {target}\n")
            return target
        where = _relative(target, self.run_dir)
        line = {"name": name, "path": where, "description": description, "rank": self.rank}
        append_line(self.run_dir / IMAGE_LOG, {**line, "time": time.time()})
        return target

    # ------------------------------------------------------------------ tags, properties
    def tag(self, key: str, value: Any = None) -> None:
        """Set tag ``key`` (Azure's tags are strings; no value is ``""``)."""
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        given = {check_name(k, "tag"): "" if v is None else str(v) for k, v in tags.items()}
        self._tags.update(given)
        if self.run_dir is not None and given:
            append_line(self.run_dir / TAGS, {"kind": "tags", "values": given, "rank": self.rank})

    def get_tags(self) -> dict[str, str]:
        """The run's tags: those of its record and those any rank set."""
        if self.run_dir is None:
            return dict(self._tags)
        return logbook.merged_tags(logbook.read_record(self.run_dir), self.run_dir)

    def add_properties(self, properties: dict[str, Any]) -> None:
        """Add properties; like Azure's they cannot change once set (``ValueError``)."""
        given = {check_name(k, "property"): str(v) for k, v in properties.items()}
        known = self.get_properties()
        changed = {k: (known[k], v) for k, v in given.items() if known.get(k, v) != v}
        if changed:
            raise ValueError(f"properties cannot change once set: {changed} (old, new)")
        self._properties.update(given)
        if self.run_dir is not None and given:
            line = {"kind": "properties", "values": given, "rank": self.rank}
            append_line(self.run_dir / TAGS, line)

    def get_properties(self) -> dict[str, str]:
        if self.run_dir is None:
            return dict(self._properties)
        return logbook.read_properties(self.run_dir)

    # ------------------------------------------------------------------ files
    def upload_file(self, name: str, path_or_stream: str | os.PathLike[str] | IO[bytes]) -> Path:
        """Store a file in the run as ``name`` (``outputs/...``, or any other name, kept in
        ``uploads/``); a name already taken is refused, as Azure does."""
        if self.run_dir is None:
            sys.stdout.write(f"[upload] {name} <- {path_or_stream}\n")
            return Path(str(path_or_stream))
        import shutil

        target = logbook.artifact_path(self.run_dir, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(target, "xb") as handle:
                if isinstance(path_or_stream, (str, os.PathLike)):
                    with open(path_or_stream, "rb") as source:
                        shutil.copyfileobj(source, handle)
                else:
                    data = path_or_stream.read()
                    handle.write(data.encode() if isinstance(data, str) else data)
        except FileExistsError:
            raise FileExistsError(f"run {self.id} already has a file {name!r}") from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    def upload_folder(self, name: str, path: str | os.PathLike[str]) -> list[Path]:
        """Store every file under ``path`` as ``name/<its path under path>``."""
        folder = Path(path)
        if not folder.is_dir():
            raise NotADirectoryError(f"upload_folder({name!r}): {folder} is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return [self.upload_file(f"{name}/{p.relative_to(folder).as_posix()}", p) for p in files]

    # ------------------------------------------------------------------ status, details
    def get_status(self) -> str:
        """``"Running"`` while the script runs (or what it declared with complete()/fail())."""
        if self._declared is not None or self.run_dir is None:
            return self._declared or "Running"
        return str(logbook.read_record(self.run_dir).get("status") or "Running")

    def get_details(self) -> dict[str, Any]:
        """Azure's shape: ``runId``, ``status``, ``startTimeUtc``, ``properties``,
        ``runDefinition`` (``script``, ``arguments``), ``logFiles``, and ``record``."""
        if self.run_dir is None:
            return {"runId": None, "status": self.get_status(), "target": "offline",
                    "properties": self.get_properties(), "tags": self.get_tags()}  # fmt: skip
        shown = logbook.as_readers_see(logbook.read_record(self.run_dir), self.run_dir)
        found = logbook.azure_details(shown, self.run_dir)
        found["status"] = self.get_status()
        return found

    def complete(self) -> None:
        """Say the work is done (``get_status()`` is then ``"Completed"``); the run ends
        when the script does, with the status its exit gives."""
        self._declare("Completed", None, None)

    def fail(self, error_details: Any = None, error_code: str | None = None) -> None:
        """Mark the run Failed, with ``error_details`` (a message or an exception); readers
        see it Failed even if the script then exits 0."""
        if isinstance(error_details, BaseException):
            error_details = f"{type(error_details).__name__}: {error_details}"
        self._declare("Failed", None if error_details is None else str(error_details), error_code)

    def _declare(self, status: str, details: str | None, code: str | None) -> None:
        self._declared = status
        if self.run_dir is None:
            sys.stdout.write(f"[status] {status}" + (f": {details}" if details else "") + "\n")
            return
        line = {"status": status, "details": details, "code": code, "rank": self.rank}
        append_line(self.run_dir / STATUS_LOG, {**line, "time": time.time()})

    # ------------------------------------------------------------------ the run
    @property
    def parent(self) -> RunReference | None:
        """The run this one is a step of (a pipeline's), or ``None``."""
        if self.run_dir is None:
            return None
        parent_id = logbook.read_record(self.run_dir).get("parent_id")
        return RunReference(parent_id) if parent_id else None

    @property
    def experiment(self) -> ExperimentReference:
        """The run's experiment: its name (the run's name in fitdock's record)."""
        if self.run_dir is None:
            return ExperimentReference(None)
        return ExperimentReference(logbook.read_record(self.run_dir).get("name"))

    def heartbeat(self) -> None:
        """Say "still alive" without logging a metric (read by hang detection)."""
        if self._metrics_path is not None:
            (self._metrics_path.parent / "heartbeat").touch()

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        where = "offline" if self.offline else self.id
        return f"RunContext({where}, rank={self.rank}/{self.world_size})"


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` where it lies inside, else absolute."""
    path, folder = path.resolve(), folder.resolve()
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


def _claim(folder: Path, name: str, suffix: str) -> tuple[Path, IO[bytes]]:
    """A new file ``<name><suffix>`` in ``folder``, or ``<name>-2<suffix>``, ... (created
    with ``O_EXCL``: two ranks never get the same one)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "image"
    for n in range(1, 100_000):
        target = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            return target, open(target, "xb")
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for image {name!r} in {folder}")
