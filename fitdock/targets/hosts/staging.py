"""Staging a run to hosts without a shared filesystem, through their launch agent.

Before an attempt each host receives the snapshot (and the resume copy and the
links to inputs) at the run's own path, with empty ``logs/``, ``outputs/`` and
``checkpoints/`` folders for the ranks to write to (the snapshot's ``outputs`` and
``logs`` links, which ``tarfile`` keeps as links, point at the first two); after it,
each host's logs, outputs, checkpoints and metrics come back and are merged into the
run here. Archives are made and read with ``tarfile``; the remote side runs ``tar``
through the agent.
"""

from __future__ import annotations

import shlex
import tarfile
import tempfile
from pathlib import Path

from fitdock.errors import StagingError
from fitdock.process import transfer
from fitdock.runs.layout import (
    CHECKPOINTS,
    GUARD,
    HEARTBEAT,
    INPUTS,
    LOGS,
    OUTPUTS,
    RESUME,
    SCRIPT_FILES,
    SNAPSHOT,
)
from fitdock.runs.store import RunDir
from fitdock.specs.compute import Hosts

OUTBOUND = (SNAPSHOT, RESUME, INPUTS, GUARD)  # guard: the MPI world-size guard
EMPTY = (LOGS, OUTPUTS, CHECKPOINTS)  # sent as folders without their files
INBOUND = (LOGS, OUTPUTS, CHECKPOINTS, HEARTBEAT, *SCRIPT_FILES)  # metrics, tables, tags, ...


def stage_in(hosts: Hosts, names: list[str], run: RunDir) -> None:
    with tempfile.TemporaryDirectory(prefix="fitdock-stage-") as scratch:
        archive = Path(scratch) / "out.tar"
        with tarfile.open(archive, "w") as tar:
            for name in OUTBOUND:
                if (run.path / name).exists():
                    tar.add(run.path / name, arcname=name)
            for name in EMPTY:
                if (run.path / name).is_dir():
                    tar.add(run.path / name, arcname=name, recursive=False)
        target = shlex.quote(str(run.path))
        remote = f"mkdir -p {target} && tar -C {target} -xf -"
        for host in names:
            _run([*hosts.agent_argv(), host, remote], host, "send the snapshot to", stdin=archive)


def stage_out(hosts: Hosts, names: list[str], run: RunDir) -> None:
    """Bring each host's files back; a host's files never overwrite newer ones here."""
    target = shlex.quote(str(run.path))
    wanted = " ".join(shlex.quote(name) for name in INBOUND)
    remote = f"cd {target} && tar -cf - $(ls -d {wanted} 2>/dev/null)"
    with tempfile.TemporaryDirectory(prefix="fitdock-stage-") as scratch:
        for host in names:
            archive = Path(scratch) / f"{host}.tar"
            agent = [*hosts.agent_argv(), host, remote]
            _run(agent, host, "fetch the results from", stdout=archive)
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if _newer(m, run.path / m.name)]
                tar.extractall(run.path, members=members, filter="data")


def _newer(member: tarfile.TarInfo, here: Path) -> bool:
    try:
        return member.isdir() or member.mtime >= here.stat().st_mtime
    except FileNotFoundError:
        return True


def _run(
    argv: list[str], host: str, what: str, stdin: Path | None = None, stdout: Path | None = None
) -> None:
    code, stderr = transfer(argv, stdin=stdin, stdout=stdout)
    if code != 0:
        raise StagingError(f"could not {what} host {host} (exit {code}): {stderr.strip()[-500:]}")
