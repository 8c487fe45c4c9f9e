"""From a ``JobSpec`` to a supervised run: check, create the run, plan, launch."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

from fitdock._version import __version__
from fitdock.distributions import mpijob
from fitdock.errors import RunNotFoundError, SpecError
from fitdock.execution import detached
from fitdock.execution.detached import PassedLock
from fitdock.execution.gpu import RANKS_HERE, warn_if_no_gpu
from fitdock.execution.run import Run
from fitdock.execution.status_line import Phase, StatusLine
from fitdock.execution.supervisor import Supervisor
from fitdock.jobside.common import copy_read_only, remove_tree
from fitdock.process import capture
from fitdock.runs.layout import CHECKPOINTS, DATA, MODEL, RECORD
from fitdock.runs.record import Placement, ResumeInfo, RunRecord, SourceInfo, SupervisorInfo
from fitdock.runs.shared_snapshot import place_snapshot, unmount_run
from fitdock.runs.snapshot import SnapshotSummary
from fitdock.runs.status import RunStatus
from fitdock.runs.store import RunDir, new_run_id, runs_root
from fitdock.runs.workdir import link_run_folders, make_run_folder
from fitdock.shared import now_iso, pause_at
from fitdock.specs.distribution import Horovod, Mpi
from fitdock.specs.job import JobSpec
from fitdock.targets.plan import LaunchPlan
from fitdock.targets.registry import target_for


def resolve_resume(resume_from: str | None) -> Path | None:
    """The checkpoint folder that ``resume_from`` names: a folder, a run folder, or a run id."""
    if resume_from is None:
        return None
    path = Path(resume_from).expanduser()
    if path.is_dir():
        return (path / CHECKPOINTS).resolve() if (path / RECORD).is_file() else path.resolve()
    try:
        return RunDir.find(resume_from).checkpoints
    except RunNotFoundError:
        raise SpecError(
            f"resume_from={resume_from!r} is neither a folder nor a run id under {runs_root()}",
            field="resume_from",
        ) from None


def dry_run(spec: JobSpec) -> LaunchPlan:
    """The plan ``submit`` would run; creates nothing."""
    target = target_for(spec)
    source = resolve_resume(spec.resume_from)
    run = RunDir(runs_root() / new_run_id(spec.name))
    return target.plan(spec, run, run.resume if source else None)


def submit(
    spec: JobSpec,
    wait: bool = True,
    show_output: bool = False,
    *,
    detach: bool = False,
    run_id: str | None = None,
    parent_id: str | None = None,
    output_folders: tuple[str, ...] = (),
    tags: dict[str, str] | None = None,
) -> Run:
    """Check, create the run, plan, and start its supervisor. A pipeline gives the run's
    id (chosen before, so that later steps know where its outputs will be), its own id
    as ``parent_id``, and the folders under ``outputs/`` that its data lands in.
    ``tags`` (``Experiment.submit``'s) are in the record from its first write.
    ``detach``: the run is supervised by a process of its own, which outlives this one
    (``detached.py``); else by a thread of this process, which waits for it before exiting."""
    # Before the record exists the status line is told the phase by hand (resolving, snapshot);
    # once the run is followed, the record says it.
    line = StatusLine(label=f"job {spec.name}") if show_output else None
    try:
        _say(line, Phase.RESOLVING, "")
        target = target_for(spec)
        target.check(spec)
        if spec.use_gpu and target.name in RANKS_HERE:
            warn_if_no_gpu()  # else the job runs on the CPU without a word
        source = resolve_resume(spec.resume_from)
        pause_at("validation")  # a test hook (fitdock.shared.pause_at); inert otherwise
        run = RunDir(runs_root() / (run_id or new_run_id(spec.name)))
        make_run_folder(run)  # StorageError on a read-only or full home
    except BaseException:
        if line is not None:
            line.close()
        raise
    lock = PassedLock(run.lock_path)  # a SupervisorLock that can be handed to a process
    lock.acquire()
    try:
        _say(line, Phase.SNAPSHOT, str(spec.source_directory))
        summary = place_snapshot(
            spec.source_directory,
            run,
            spec.snapshot.max_size_mb,
            spec.snapshot.max_files,
            local_mounts=target.ranks_see_local_mounts,
        )
        for folder in (
            run.logs,
            run.outputs / MODEL,
            run.outputs / DATA,
            run.checkpoints,
            run.inputs,
            *(run.outputs / name for name in output_folders),
        ):
            folder.mkdir(parents=True, exist_ok=True)
        shipped = link_run_folders(run)
        if isinstance(spec.distribution, (Mpi, Horovod)):
            mpijob.install_guard(run)
        for name, path in spec.inputs.items():
            (run.inputs / name).symlink_to(path)
        resume_dir = None
        if source is not None:
            copy_read_only(source, run.resume)
            resume_dir = run.resume
        plan = target.plan(spec, run, resume_dir)
        record = _initial_record(spec, run, plan, summary, source, resume_dir, shipped)
        record.parent_id = parent_id
        record.tags = dict(tags or {})
        pause_at("record")
        run.write(record)
    except BaseException:
        _discard(run, lock)
        raise
    finally:
        if line is not None:
            line.close()
    if detach:
        try:
            detached.start(run, detached.Handoff(spec, target, plan, resume_dir), lock)
        except BaseException:
            _discard(run, lock)
            raise
        handle = Run(run.id)
    else:
        supervisor = Supervisor(run, spec, lock, target, plan, resume_dir, show_output)
        thread = threading.Thread(target=supervisor.run, name=f"fitdock-{run.id}")
        handle = Run(run.id, supervisor=supervisor)
        thread.start()
    if show_output:
        print(f"fitdock: run {run.id}: snapshot of {spec.source_directory}: {summary}", flush=True)
        for folder in shipped:
            print(f"fitdock: run {run.id}: {folder}", flush=True)
    if wait:
        handle.wait_for_completion(show_output=show_output, raise_on_error=False)
    return handle


def _discard(run: RunDir, lock: PassedLock) -> None:
    """Remove a run that could not start: its overlay first (a removal through the mount
    would only whiteout the files, and leave the mount)."""
    with contextlib.suppress(OSError):
        unmount_run(run)
    lock.release()
    remove_tree(run.path)


def _say(line: StatusLine | None, phase: Phase, detail: str) -> None:
    if line is not None:
        line.phase(phase, detail)


def _initial_record(  # type: ignore[no-untyped-def]
    spec: JobSpec, run: RunDir, plan: LaunchPlan, summary, source, resume_dir, shipped
) -> RunRecord:
    resume = None
    if resume_dir is not None:
        resume = ResumeInfo(from_=spec.resume_from, source_dir=str(source), dir=str(resume_dir))
    return RunRecord(
        id=run.id,
        name=spec.name,
        status=RunStatus.PREPARING,
        created_at=now_iso(),
        fitdock_version=__version__,
        target=plan.target,
        spec=spec.model_dump(mode="json"),
        environment_hash=spec.environment.hash(),
        argv=plan.argv,
        commands=plan.commands,
        env=plan.env,
        cwd=plan.cwd,
        world_size=plan.world_size,
        source=SourceInfo(
            directory=str(spec.source_directory),
            git_commit=_git_commit(spec.source_directory),
            files=summary.files,
            bytes=summary.bytes,
            shipped={f.name: {"files": f.files, "bytes": f.bytes} for f in shipped},
            placement=_placement(summary),
            shared=summary.shared,
            share_error=summary.share_error,
        ),
        resume=resume,
        checkpoint_dir=str(run.checkpoints),
        supervisor=SupervisorInfo(pid=os.getpid(), host=socket.gethostname()),
    )


def _placement(summary: SnapshotSummary) -> Placement:
    if summary.shared:
        return Placement.SHARED
    return Placement.CLONE if summary.cloned else Placement.COPY


def _git_commit(source: Path) -> str | None:
    if not any((folder / ".git").exists() for folder in (source, *source.parents)):
        return None
    code, out = capture(["git", "-C", str(source), "rev-parse", "HEAD"], timeout=10)
    return out.strip() if code == 0 else None
