"""``fitdock runs list|show|logs|metrics|cancel``: the runs under ``$FITDOCK_HOME``."""

from __future__ import annotations

import argparse
import json
import time

from fitdock.cli.table import columns


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock runs`` and its actions."""
    runs = subparsers.add_parser(
        "runs", help="list and inspect runs", description="Runs under $FITDOCK_HOME."
    )
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="one line per run, newest last")
    listing.add_argument("--limit", type=int, default=20, help="show the newest N (20)")
    listing.set_defaults(func=cmd_list)
    for name, func, text in (
        ("show", cmd_show, "a run's summary (--json: the whole record)"),
        ("logs", cmd_logs, "a run's logs, tagged by rank"),
        ("metrics", cmd_metrics, "a run's metrics as JSON"),
        ("cancel", cmd_cancel, "stop a running run (SIGTERM, grace, SIGKILL)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("run_id")
        action.set_defaults(func=func)
        if name == "show":
            action.add_argument("--json", action="store_true", help="print run.json")
        if name == "logs":
            action.add_argument(
                "-f", "--follow", action="store_true", help="follow until the run ends"
            )


def cmd_list(ns: argparse.Namespace) -> int:
    from fitdock.execution.run import Run

    rows = []
    for run in Run.list()[-ns.limit :]:
        record = run.record
        rows.append(
            (
                run.id,
                record["status"],
                str(record.get("world_size")),
                record.get("started_at") or "-",
                record.get("ended_at") or "-",
            )
        )
    print(columns(("ID", "STATUS", "RANKS", "STARTED", "ENDED"), rows))
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    from fitdock.execution.run import Run

    run = Run(ns.run_id)
    print(json.dumps(run.record, indent=2, sort_keys=True) if ns.json else run.summary())
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    from fitdock.execution.run import Run
    from fitdock.runs.follow import LogFollower

    run = Run(ns.run_id)
    follower = LogFollower(run.log_dir)
    while ns.follow and not run.status.is_terminal:
        follower.pump()
        time.sleep(0.2)
    follower.pump(final=True)
    return 0


def cmd_metrics(ns: argparse.Namespace) -> int:
    from fitdock.execution.run import Run

    print(json.dumps(Run(ns.run_id).get_metrics(), indent=2))
    return 0


def cmd_cancel(ns: argparse.Namespace) -> int:
    from fitdock.execution.run import Run

    run = Run(ns.run_id)
    if run.status.is_terminal:
        print(f"run {run.id} already ended: {run.status.value}")
        return 0
    run.cancel()
    print(f"cancel requested for run {run.id}")
    return 0
