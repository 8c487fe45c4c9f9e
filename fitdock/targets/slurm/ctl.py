"""Talking to Slurm: submit (``sbatch``), look (``scontrol show job``), cancel (``scancel``).

No accounting database is needed: ``scontrol`` knows a job until ``MinJobAge`` after it
ended (300 s by default); after that the run's own records (``slurm/attempt-*.json``) tell.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from fitdock.errors import LauncherNotFoundError, SlurmError
from fitdock.process import tool
from fitdock.runs.status import RunStatus

TIMEOUT = 30.0  # a busy slurmctld can take seconds to answer

# Slurm job states (``JobState=``) and what a run shows while the job is in them.
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})
LIVE_STATES = frozenset(
    {"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"}
)
FINAL_STATES = {
    "COMPLETED": RunStatus.COMPLETED,
    "FAILED": RunStatus.FAILED,
    "CANCELLED": RunStatus.CANCELED,
    "TIMEOUT": RunStatus.TIMED_OUT,
    "DEADLINE": RunStatus.TIMED_OUT,
    "NODE_FAIL": RunStatus.FAILED,
    "BOOT_FAIL": RunStatus.FAILED,
    "OUT_OF_MEMORY": RunStatus.FAILED,
    "PREEMPTED": RunStatus.FAILED,
    "SPECIAL_EXIT": RunStatus.FAILED,
    "REVOKED": RunStatus.CANCELED,
}
_FIELD = re.compile(r"(?:^|\s)([A-Za-z:/]+)=(\S*)")


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # the base state: RUNNING, not "RUNNING+..." nor "REQUEUED" flags
    reason: str
    restarts: int
    exit_code: str
    nodes: str

    @property
    def status(self) -> RunStatus:
        """The run status this job state shows (final states are final)."""
        if self.state in FINAL_STATES:
            return FINAL_STATES[self.state]
        if self.state in LIVE_STATES:
            return RunStatus.RUNNING
        return RunStatus.QUEUED

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


def parse_show_job(text: str) -> JobInfo | None:
    """``scontrol show job -o ID`` (one line of ``Key=Value`` words) as a ``JobInfo``."""
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobId" in fields and "JobState" in fields:
            return JobInfo(
                job_id=fields["JobId"],
                state=fields["JobState"].split("+")[0],
                reason=fields.get("Reason", "None"),
                restarts=int(fields.get("Restarts", "0") or 0),
                exit_code=fields.get("ExitCode", ""),
                nodes=fields.get("NodeList", ""),
            )
    return None


def _command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LauncherNotFoundError(
            f"{name} is not on PATH: the slurm target needs Slurm's client commands "
            "(sbatch, scontrol, scancel) on this machine, set up to reach the cluster"
        )
    return path


def submit(script: str, env: Mapping[str, str]) -> str:
    """``sbatch --parsable SCRIPT``; the job id."""
    code, out, err = tool([_command("sbatch"), "--parsable", script], timeout=TIMEOUT, env=env)
    if code != 0:
        raise SlurmError(f"sbatch refused the job: {(err or out).strip()}")
    return out.strip().split(";")[0]


def show_job(job_id: str) -> JobInfo | None:
    """The job as slurmctld knows it; None once it has forgotten the job (or never knew it)."""
    code, out, err = tool([_command("scontrol"), "show", "job", "-o", job_id], timeout=TIMEOUT)
    if code != 0:
        if "Invalid job id" in err:
            return None
        raise SlurmError(f"scontrol show job {job_id} failed: {(err or out).strip()}")
    return parse_show_job(out)


def cancel(job_id: str) -> None:
    """``scancel``: Slurm sends SIGTERM to every process of the job, then SIGKILL after
    ``KillWait``; the job script passes the SIGTERM on to the ranks."""
    code, out, err = tool([_command("scancel"), job_id], timeout=TIMEOUT)
    if code != 0 and "already completing or completed" not in err:
        raise SlurmError(f"scancel {job_id} failed: {(err or out).strip()}")
