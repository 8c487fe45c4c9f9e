"""Every file and folder of a run, by name: ``$FITDOCK_HOME/runs/<run id>/``.

    run.json          the record (runs/record.py), written atomically
    snapshot/         the source directory as submitted: the job's working directory, where
                      outputs -> ../outputs and logs -> ../logs link to the run's own. A
                      shared snapshot (runs/shared_snapshot.py) is an overlay mount here
                      while the run lives, and after it a plain folder: what the run
                      changed, and links into the store tree for the rest
    .snapshot/        a shared snapshot's overlay layers while the run lives: upper/ (what
                      the job wrote) and work/ (the overlay's own); gone once flattened
    logs/             rank_<r>.stdout.log, .stderr.log, .exit.json (the rank wrapper's),
                      rank_<r>.world.json (the world-size guard's), launcher.log,
                      env-build.log / image-build.log, attempt-<n>/ (earlier attempts)
    outputs/          what the script writes to FITDOCK_OUTPUT_DIR (model/, data/ for SM_*)
    checkpoints/      what the script writes to FITDOCK_CHECKPOINT_DIR
    resume/           a read-only copy of the checkpoint this attempt resumes from
    inputs/           links to the named inputs
    guard/            sitecustomize.py: the world-size guard of MPI and Horovod ranks
    metrics.jsonl     one JSON line per logged value (log, log_list)
    tables.jsonl      one JSON line per log_row / log_table call
    tags.jsonl        one JSON line per tag / set_tags / add_properties call (readers merge
                      them with run.json's tags: the job never writes run.json)
    images.jsonl      one JSON line per log_image call; the PNG is in outputs/images/
    status.jsonl      what the script declared with complete() / fail()
    uploads/          upload_file / upload_folder under names outside outputs/, logs/, ...
    heartbeat         touched by ``RunContext.heartbeat()`` (the hang watchdog reads it)
    supervisor.lock   held by the supervising process while the run is live
    .space-reserve    bytes set aside while the run is live, so that the record saying a
                      full disk ended it can still be written (runs/record.py write_record)
    cancel            present when a cancel was requested
    hosts-agent       hosts target, MPICH: the ssh agent with its options as one program
    slurm/            slurm target: job.sbatch, the job-side programs, batch.log, and
                      attempt-<n>.json / attempt-<n>.exit.json written by each attempt

The names the job side writes too come from ``jobside.common`` (which cannot import this),
those the script writes through ``Run.get_context()`` from ``runs/logbook.py`` (which every
rank imports, so it imports nothing of fitdock; ``SCRIPT_FILES`` lists them).

Beside the runs, ``$FITDOCK_HOME/cache/hashes.sqlite`` is the stat cache of content hashes
(``runs/contenthash.py``), ``$FITDOCK_HOME/cache/snapshots/<key>/`` the shared snapshot
store (``tree/``, one copy per source content, and ``manifest.json``, its files' stats
when it was made; ``<key>.lock`` beside it), and ``$FITDOCK_HOME/models/<name>/<version>/``
a registered model: ``model.json`` and its files under ``files/`` (``runs/models.py``).
"""

from __future__ import annotations

from pathlib import Path

from fitdock.jobside.common import (
    ATTEMPT_LOGS,
    CHECKPOINTS,
    LAUNCHER_LOG,
    LOGS,
    RANK_EXIT,
    RANK_WORLD,
    RESUME,
    SLURM,
)
from fitdock.runs.logbook import (
    IMAGE_LOG,
    IMAGES,
    METRICS,
    RECORD,
    SCRIPT_FILES,
    STATUS_LOG,
    TABLES,
    TAGS,
    UPLOADS,
)

SNAPSHOT = "snapshot"
OUTPUTS = "outputs"
INPUTS = "inputs"
GUARD = "guard"
HEARTBEAT = "heartbeat"
LOCK = "supervisor.lock"
RESERVE = ".space-reserve"
HOSTS_AGENT = "hosts-agent"
CANCEL = "cancel"
MODEL, DATA = "model", "data"  # outputs/model (SM_MODEL_DIR), outputs/data
ENV_BUILD_LOG = "env-build.log"
IMAGE_BUILD_LOG = "image-build.log"
RANK_STDOUT = "rank_{rank}.stdout.log"
RANK_STDERR = "rank_{rank}.stderr.log"
WORKDIR_LINKS = (OUTPUTS, LOGS)  # snapshot/<name> -> ../<name>
CACHE = "cache"  # $FITDOCK_HOME/cache/
HASHES = "hashes.sqlite"  # $FITDOCK_HOME/cache/hashes.sqlite: content hashes by stat
SNAPSHOT_LAYERS = ".snapshot"  # <run>/.snapshot/: a shared snapshot's overlay layers
UPPER, WORK = "upper", "work"  # <run>/.snapshot/upper, .../work
SNAPSHOTS = "snapshots"  # $FITDOCK_HOME/cache/snapshots/<key>/: the shared snapshot store
STORE_TREE = "tree"  # .../<key>/tree/: the files, read-only by convention
STORE_MANIFEST = "manifest.json"  # .../<key>/manifest.json: their stats when made
MODELS = "models"  # $FITDOCK_HOME/models/<name>/<version>/: the model registry
MODEL_RECORD = "model.json"  # .../<version>/model.json: version, run, tags, properties, time
MODEL_FILES = "files"  # .../<version>/files/: the model's files

__all__ = [
    "ATTEMPT_LOGS",
    "CACHE",
    "CANCEL",
    "CHECKPOINTS",
    "DATA",
    "ENV_BUILD_LOG",
    "GUARD",
    "HASHES",
    "HEARTBEAT",
    "IMAGES",
    "IMAGE_BUILD_LOG",
    "IMAGE_LOG",
    "INPUTS",
    "LAUNCHER_LOG",
    "LOCK",
    "LOGS",
    "METRICS",
    "MODEL",
    "MODELS",
    "MODEL_FILES",
    "MODEL_RECORD",
    "OUTPUTS",
    "RANK_EXIT",
    "RANK_STDERR",
    "RANK_STDOUT",
    "RANK_WORLD",
    "RECORD",
    "RESUME",
    "SCRIPT_FILES",
    "SLURM",
    "SNAPSHOT",
    "SNAPSHOTS",
    "SNAPSHOT_LAYERS",
    "STATUS_LOG",
    "STORE_MANIFEST",
    "STORE_TREE",
    "TABLES",
    "TAGS",
    "UPLOADS",
    "UPPER",
    "WORK",
    "WORKDIR_LINKS",
    "RunPaths",
]


class RunPaths:
    """The paths of one run (no I/O)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    snapshot = property(lambda self: self.path / SNAPSHOT)
    snapshot_upper = property(lambda self: self.path / SNAPSHOT_LAYERS / UPPER)
    snapshot_work = property(lambda self: self.path / SNAPSHOT_LAYERS / WORK)
    logs = property(lambda self: self.path / LOGS)
    outputs = property(lambda self: self.path / OUTPUTS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    resume = property(lambda self: self.path / RESUME)
    inputs = property(lambda self: self.path / INPUTS)
    guard = property(lambda self: self.path / GUARD)
    slurm = property(lambda self: self.path / SLURM)
    metrics = property(lambda self: self.path / METRICS)
    tables = property(lambda self: self.path / TABLES)
    tags = property(lambda self: self.path / TAGS)
    image_log = property(lambda self: self.path / IMAGE_LOG)
    images = property(lambda self: self.path / OUTPUTS / IMAGES)
    status_log = property(lambda self: self.path / STATUS_LOG)
    uploads = property(lambda self: self.path / UPLOADS)
    heartbeat = property(lambda self: self.path / HEARTBEAT)
    record_path = property(lambda self: self.path / RECORD)
    cancel_path = property(lambda self: self.path / CANCEL)
    lock_path = property(lambda self: self.path / LOCK)
    launcher_log = property(lambda self: self.logs / LAUNCHER_LOG)

    def rank_log(self, rank: int, stream: str) -> Path:
        """``logs/rank_<r>.stdout.log`` or ``.stderr.log``."""
        name = RANK_STDOUT if stream == "stdout" else RANK_STDERR
        return self.logs / name.format(rank=rank)

    def attempt_logs(self, attempt: int) -> Path:
        return self.logs / ATTEMPT_LOGS.format(n=attempt)
