"""``fitdock runs list|show|logs|metrics|plot|compare|cancel|gc``: the runs under
``$FITDOCK_HOME``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitdock.cli import runs_mlflow
from fitdock.cli.table import columns

if TYPE_CHECKING:
    from fitdock.runs.listing import Filters
    from fitdock.runs.store import RunDir

Scanned = list[tuple[Path, dict[str, Any]]]
LIVE = {"Queued", "Preparing", "Running"}  # a supervisor owns these: is it still alive?

LIST_HELP = """One line per run, newest last: status, target, ranks, start, duration, and with
--metric the last value of that metric (read from the end of the metrics file of the runs
shown only, so listing stays fast with thousands of runs)."""
PLOT_HELP = """Metric curves against step: one line per run, and per rank when a run's ranks
logged separately. In the terminal (plotext), or as a PNG with --out (matplotlib). Needs
the plot extra: pip install 'fitdock[plot]'."""
COMPARE_HELP = """What differs between runs: name, status, target, ranks, duration,
environment hash, git commit, each script parameter, and for each metric its final value
and its best: the lowest (min) for a name containing loss, error or rmse, else the highest
(max). Rows that are the same for every run are hidden unless --all."""
GC_HELP = """Remove what killed submissions and dead supervisors left, and nothing else: run
folders that never got a record (a submission killed while it snapshotted), half-written
record files, the lock of a run whose supervisor died (marked Failed first), and the
space reserve of a run that ended. A shared snapshot still mounted after its supervisor
died is unmounted and flattened into a plain folder, and the snapshot store
($FITDOCK_HOME/cache/snapshots) loses the trees that no run uses. Runs with a live
supervisor are not touched; finished runs keep everything they wrote."""


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock runs`` and its actions."""
    runs = subparsers.add_parser(
        "runs", help="list and inspect runs", description="Runs under $FITDOCK_HOME."
    )
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    _add_list(actions)
    _add_plot(actions)
    _add_compare(actions)
    runs_mlflow.add(actions)
    gc = actions.add_parser("gc", help="remove what killed submissions left", description=GC_HELP)
    gc.add_argument("--dry-run", action="store_true", help="print what would go, remove nothing")
    gc.set_defaults(func=cmd_gc)
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
                "-f",
                "--follow",
                action="store_true",
                help="follow until the run ends, under a status line",
            )


def _add_list(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = actions.add_parser(
        "list", help="one line per run, newest last", description=LIST_HELP
    )
    listing.add_argument("--limit", type=int, default=20, help="show the newest N (20; 0: all)")
    listing.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="only runs in this state: Completed, Failed, Running, ... (repeatable)",
    )
    listing.add_argument(
        "--since", metavar="WHEN", help="runs created since an ISO date or time, or an age: 2h, 3d"
    )
    listing.add_argument("--name", metavar="TEXT", help="runs whose name or id contains TEXT")
    listing.add_argument(
        "--metric", action="append", metavar="NAME", help="add the last value of metric NAME"
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(func=cmd_list)


def _add_plot(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plot = actions.add_parser("plot", help="metric curves against step", description=PLOT_HELP)
    plot.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    plot.add_argument(
        "--metric", action="append", metavar="NAME", help="plot this metric (repeatable; all)"
    )
    plot.add_argument("--out", metavar="FILE.png", help="write a PNG instead of drawing here")
    plot.set_defaults(func=cmd_plot)


def _add_compare(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compare = actions.add_parser(
        "compare", help="a table of what differs between runs", description=COMPARE_HELP
    )
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    compare.add_argument("--all", action="store_true", help="show the rows that are the same too")
    compare.set_defaults(func=cmd_compare)


def cmd_list(ns: argparse.Namespace) -> int:
    from fitdock.runs import listing

    filters = listing.Filters(
        statuses=frozenset(listing.parse_status(s) for s in ns.status or ()),
        since=listing.parse_since(ns.since) if ns.since else None,
        name=ns.name,
    )
    shown = _newest(listing.scan(), filters, ns.limit)
    metrics = list(dict.fromkeys(ns.metric or ()))
    items = [_list_item(path, record, metrics) for path, record in shown]
    if ns.json:
        print(json.dumps(items, indent=2))
        return 0
    header = ("ID", "STATUS", "TARGET", "RANKS", "STARTED", "DURATION", *metrics)
    rows = [
        (
            item["id"],
            item["status"],
            item["target"] or "-",
            str(item["ranks"] or "-"),
            _local_time(item["started_at"]),
            listing.format_duration(item["duration_seconds"]),
            *(_cell(item["metrics"][name]) for name in metrics),
        )
        for item in items
    ]
    print(columns(header, rows))
    return 0


def _newest(scanned: Scanned, filters: Filters, limit: int) -> Scanned:
    """The newest ``limit`` runs that pass ``filters``, oldest first. Only a live-looking
    record is checked for a lost supervisor (``checked_record``), and only as far back as
    the listing reaches."""
    from fitdock.runs import listing
    from fitdock.runs.status import RunStatus

    shown: Scanned = []
    for path, record in reversed(scanned):
        if limit > 0 and len(shown) >= limit:
            break
        if record.get("status") in LIVE:
            from fitdock.execution.current import checked_record  # 0.2 s: only when needed
            from fitdock.runs.store import RunDir

            try:
                record = checked_record(RunDir(path)).as_json()
            except (OSError, ValueError):
                record = {**record, "status": RunStatus.FAILED.value}
        if listing.matches(record, filters):
            shown.append((path, record))
    return shown[::-1]


def _list_item(path: Path, record: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    from fitdock.runs import listing

    item = {
        "id": record.get("id", path.name),
        "name": record.get("name"),
        "status": record.get("status"),
        "target": record.get("target"),
        "ranks": record.get("world_size"),
        "created_at": record.get("created_at"),
        "started_at": record.get("started_at"),
        "ended_at": record.get("ended_at"),
        "duration_seconds": listing.duration_seconds(record),
        "parent_id": record.get("parent_id"),
    }
    if metrics:
        item["metrics"] = {name: listing.last_value(path, name) for name in metrics}
    return item


def _local_time(text: str | None) -> str:
    from fitdock.runs.listing import parse_time

    when = parse_time(text)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else "-"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def cmd_plot(ns: argparse.Namespace) -> int:
    from fitdock.runs.plot import plot_runs

    if ns.out:
        plot_runs(ns.run_ids, ns.metric, out=ns.out)
        print(f"wrote {ns.out}")
        return 0
    print(plot_runs(ns.run_ids, ns.metric, terminal=True, color=sys.stdout.isatty()))
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from fitdock.execution.current import checked_record
    from fitdock.runs.compare import RunFacts, compare
    from fitdock.runs.listing import metric_values
    from fitdock.runs.store import RunDir

    facts = []
    for run_id in dict.fromkeys(ns.run_ids):
        run = RunDir.find(run_id)
        facts.append(RunFacts(checked_record(run).as_json(), metric_values(run.path)))
    rows = compare(facts, show_all=ns.all)
    if not rows:
        print("no differences (--all shows every row)")
        return 0
    header = ("", *(fact.id for fact in facts))
    print(columns(header, [(row.name, *row.values) for row in rows]))
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    from fitdock.execution.run import Run

    run = Run(ns.run_id)
    print(json.dumps(run.record, indent=2, sort_keys=True) if ns.json else run.summary())
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    from fitdock.execution.run import Run
    from fitdock.execution.status_line import StatusLine
    from fitdock.runs.follow import LogFollower
    from fitdock.runs.store import RunDir

    run = Run(ns.run_id)
    if not ns.follow:
        LogFollower(run.log_dir).pump(final=True)
        return 0
    with StatusLine(RunDir.find(run.id)) as follower:  # the logs, under a status line
        while not run.status.is_terminal:
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


def cmd_gc(ns: argparse.Namespace) -> int:
    from fitdock.runs import shared_snapshot
    from fitdock.runs.store import runs_root

    root = runs_root()
    for snapshot in shared_snapshot.release_orphans(root, dry_run=ns.dry_run):
        print(f"{'would unmount' if ns.dry_run else 'unmounted'} {snapshot}")
    found = [] if not root.is_dir() else _garbage(sorted(root.iterdir()))
    for path in found:
        print(f"{'would remove' if ns.dry_run else 'removed'} {path}")
        if not ns.dry_run:
            _remove(path)
    trees = shared_snapshot.collect(root, dry_run=ns.dry_run)
    for path in trees:
        print(f"{'would remove' if ns.dry_run else 'removed'} {path}")
    count = len(found) + len(trees)
    print(f"{count} {'to remove' if ns.dry_run else 'removed'}")
    return 0


def _garbage(folders: list[Path]) -> list[Path]:
    """What ``gc`` removes, looked at under each run's lock (so never a live run's)."""
    from fitdock.runs.layout import RECORD, RESERVE
    from fitdock.runs.store import RunDir, SupervisorLock

    found: list[Path] = []
    for folder in folders:
        if not folder.is_dir() or folder.is_symlink():
            continue
        run = RunDir(folder)
        has_record = (folder / RECORD).is_file()
        if has_record and not run.lock_path.exists():
            continue  # a lost run already collected
        lost = _lost(run) if has_record else False
        if has_record and lost is None:
            continue  # live (or asked of its scheduler), or unreadable: not ours to touch
        with SupervisorLock(run.lock_path, blocking=False) as held:
            if not held:
                continue
            if not has_record:
                found.append(folder)  # a submission that died before its first record
                continue
            found += sorted(folder.glob(f".{RECORD}.*.tmp"))  # a writer killed mid-write
            found += [p for p in (folder / RESERVE,) if p.exists()]
        if lost:
            found.append(run.lock_path)
    return found


def _lost(run: RunDir) -> bool | None:
    """Whether an ended run lost its supervisor (``checked_record`` marks one that just
    did); None while it lives, or when its record cannot be read."""
    from fitdock.execution.current import checked_record
    from fitdock.runs.record import ErrorReason

    try:
        record = checked_record(run)
    except (OSError, ValueError):
        return None
    if not record.status.is_terminal:
        return None
    return record.error is not None and record.error.reason is ErrorReason.LOST_SUPERVISOR


def _remove(path: Path) -> None:
    from fitdock.jobside.common import remove_tree

    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
    else:
        path.unlink(missing_ok=True)
