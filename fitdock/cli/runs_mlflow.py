"""``fitdock runs sync-mlflow RUN_ID``: mirror an ended run to MLflow now.

A run's supervisor mirrors it while it runs when ``MLFLOW_TRACKING_URI`` is set; what the
server did not take then (it was down, or slow at the end) is named in the record
(``fitdock runs show --json``: ``tracking``). This sends it, from where the mirror stopped,
or the whole run when it was never mirrored. A pipeline run id syncs the pipeline's MLflow
run and then each of its steps' runs, nested under it.
"""

from __future__ import annotations

import argparse

SYNC_HELP = """Mirror an ended run to MLflow: what its mirror could not send while it ran
(the record's `tracking` names it), or the whole run. A pipeline run id syncs the pipeline's
run and each step's run under it. Exit code 1 while something is still missing. Needs the
mlflow extra: pip install 'fitdock[mlflow]'."""


def add(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``sync-mlflow`` among the ``fitdock runs`` actions."""
    sync = actions.add_parser(
        "sync-mlflow", help="mirror an ended run to MLflow now", description=SYNC_HELP
    )
    sync.add_argument("run_id", help="a run id, or a pipeline run id (with its steps)")
    sync.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow tracking server (default: $MLFLOW_TRACKING_URI, else the one the "
        "run was mirrored to)",
    )
    sync.set_defaults(func=cmd_sync_mlflow)


def cmd_sync_mlflow(ns: argparse.Namespace) -> int:
    from fitdock.errors import RunNotFoundError
    from fitdock.execution import tracking
    from fitdock.runs.store import RunDir

    try:
        run = RunDir.find(ns.run_id)
    except RunNotFoundError:
        return _sync_pipeline(ns.run_id, ns.tracking_uri)
    info = tracking.sync(run, ns.tracking_uri)
    print(f"run {run.id}: {info.describe()}")
    return 1 if info.missing else 0


def _sync_pipeline(pipeline_id: str, uri: str | None) -> int:
    from fitdock.errors import FitdockError
    from fitdock.execution import tracking
    from fitdock.pipelines import record as records
    from fitdock.runs.store import RunDir

    record = records.read(pipeline_id)  # RunNotFoundError when it is no pipeline run either
    if not record.status.is_terminal:
        raise FitdockError(
            f"pipeline run {pipeline_id} is {record.status}: its scheduler mirrors it; "
            "sync it once it has ended"
        )
    steps = [RunDir.find(s.run_id) for s in record.ordered() if s.run_id and not s.reused]
    known = [r.read().tracking for r in steps]
    uri = uri or tracking.tracking_uri() or next((t.uri for t in known if t is not None), None)
    if not uri:
        raise FitdockError("no tracking URI: set MLFLOW_TRACKING_URI or pass --tracking-uri")
    experiment = record.experiment_name or record.name
    parent = tracking.sync_pipeline(pipeline_id, experiment, record.parameters, record.status, uri)
    print(f"pipeline run {pipeline_id}: MLflow run {parent or '- (not mirrored)'} at {uri}")
    code = 0 if parent else 1
    for run in steps:
        info = tracking.sync(run, uri)
        print(f"  run {run.id}: {info.describe()}")
        code = max(code, 1 if info.missing else 0)
    return code
