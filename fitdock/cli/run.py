"""``fitdock run``: a training job from flags or a YAML job file; ``--dry-run`` prints its plan."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fitdock.errors import FitdockError

RUN_HELP = """Run a training job, from flags or a YAML job file whose keys are the estimator's
arguments (source_directory, entry_script, script_params, process_count_per_node,
max_run_duration_seconds, ...) plus `framework: chainer|pytorch|none`. Flags override
the file. Arguments after `--` go to the script. With more than one process the job
runs through MPI."""

SLURM_FLAGS = ["partition", "account", "qos", "mem", "constraint"]
SLURM_FLAGS += ["gpus_per_node", "cpus_per_task", "max_requeues"]


def add(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fitdock run``."""
    run = subparsers.add_parser("run", help="run a training job", description=RUN_HELP)
    run.add_argument(
        "job_file", nargs="?", type=Path, help="YAML job file with estimator arguments"
    )
    run.add_argument("--framework", choices=["chainer", "pytorch", "none"], help="default: none")
    run.add_argument("--framework-version", help="a version from `fitdock env list`")
    run.add_argument("--source-directory", type=Path, help="folder to snapshot and run from")
    run.add_argument("--entry-script", help="script to run, relative to the source directory")
    run.add_argument(
        "-n", "--process-count-per-node", type=int, help="ranks per node (MPI when > 1)"
    )
    run.add_argument("--node-count", type=int, help="nodes (the local target has one)")
    run.add_argument(
        "--distribution",
        choices=["mpi", "pytorch", "horovod"],
        help="how ranks start when there are several: mpirun (default), torchrun, Horovod",
    )
    run.add_argument("--backend", choices=["gloo", "nccl"], help="torch.distributed backend (gloo)")
    run.add_argument("--max-run", type=float, metavar="SECONDS", help="max_run_duration_seconds")
    run.add_argument(
        "--grace", type=float, metavar="SECONDS", help="termination_grace_seconds (30)"
    )
    run.add_argument("--hang-timeout", type=float, metavar="SECONDS", help="stop a silent job")
    run.add_argument("--max-restarts", type=int, metavar="N", help="restart after a failure (0)")
    run.add_argument("--target", help="compute target: local (default), docker or slurm")
    run.add_argument(
        "--tracking",
        choices=["mlflow", "off"],
        help="mirror the run to MLflow (default: on when MLFLOW_TRACKING_URI is set)",
    )
    run.add_argument("--tracking-uri", metavar="URI", help="the MLflow tracking URI")
    _add_slurm_flags(run)
    run.add_argument(
        "--user-managed", action="store_true", default=None, help="use this interpreter as is"
    )
    run.add_argument("--use-gpu", action="store_true", default=None, help="the GPU environment")
    run.add_argument("--pip", action="append", metavar="PKG", help="extra pip package (repeatable)")
    run.add_argument("--env", action="append", metavar="NAME=VALUE", help="variable for the job")
    run.add_argument("--resume-from", metavar="RUN_OR_DIR", help="a run id or checkpoint folder")
    run.add_argument("--dry-run", action="store_true", help="print the launch plan; run nothing")
    run.add_argument(
        "--detach",
        action="store_true",
        help="print the run id and return at once; a process of its own supervises the run",
    )
    run.add_argument("--quiet", action="store_true", help="do not stream the job's output")
    run.set_defaults(func=cmd_run)


def _add_slurm_flags(run: argparse.ArgumentParser) -> None:
    slurm = run.add_argument_group("slurm target (--target slurm)")
    slurm.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    for flag, text in (
        ("--account", "account to charge"),
        ("--qos", "quality of service"),
        ("--mem", "memory per node, e.g. 16G"),
        ("--constraint", "node features, e.g. a100"),
    ):
        slurm.add_argument(flag, help=text)
    slurm.add_argument("--gpus-per-node", type=int, metavar="N")
    slurm.add_argument("--cpus-per-task", type=int, metavar="N")
    slurm.add_argument("--max-requeues", type=int, metavar="N", help="after time-outs (3)")
    slurm.add_argument(
        "--sbatch-arg",
        action="append",
        metavar="OPTION",
        help="extra sbatch option, as --sbatch-arg=--exclusive (repeatable)",
    )


def cmd_run(ns: argparse.Namespace) -> int:
    """Plan (``--dry-run``) or start the job; 0 when it completed (or was detached), else 1.
    ``--detach``: a supervisor process of its own takes the run and this returns at once;
    else this process supervises it, and Ctrl-C cancels it (exit 130)."""
    from fitdock.execution.submit import submit
    from fitdock.runs.status import RunStatus

    framework, kwargs = _job_arguments(ns)
    estimator = _estimator(framework, kwargs)
    if ns.dry_run:
        print(estimator.plan().dry_run_text())
        return 0
    run = submit(estimator.job_spec, wait=False, detach=ns.detach)
    print(f"run {run.id}", flush=True)
    if ns.detach:
        return 0
    record = run.wait_for_completion(show_output=not ns.quiet, raise_on_error=False)
    print(run.summary())
    return 0 if RunStatus(record["status"]) is RunStatus.COMPLETED else 1


def _job_arguments(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The framework and the estimator's keyword arguments: the job file's, then the flags'."""
    kwargs = _job_file(ns.job_file) if ns.job_file is not None else {}
    framework = ns.framework or kwargs.pop("framework", "none")
    flags = {
        "framework_version": ns.framework_version,
        "source_directory": ns.source_directory,
        "entry_script": ns.entry_script,
        "process_count_per_node": ns.process_count_per_node,
        "node_count": ns.node_count,
        "max_run_duration_seconds": ns.max_run,
        "termination_grace_seconds": ns.grace,
        "hang_timeout_seconds": ns.hang_timeout,
        "max_restarts": ns.max_restarts,
        "compute_target": ns.target,
        "user_managed": ns.user_managed,
        "use_gpu": ns.use_gpu,
        "pip_packages": ns.pip,
        "resume_from": ns.resume_from,
        "tracking": ns.tracking,
        "tracking_uri": ns.tracking_uri,
    }
    kwargs.update({key: value for key, value in flags.items() if value is not None})
    _slurm_target(ns, kwargs)
    if ns.env:
        kwargs["environment_variables"] = {
            **kwargs.get("environment_variables", {}),
            **_pairs(ns.env),
        }
    if ns.script_args:
        kwargs["script_params"] = ns.script_args
    _distribution(ns, kwargs)
    if "source_directory" not in kwargs:
        raise FitdockError("give --source-directory (or source_directory in the job file)")
    return framework, kwargs


def _job_file(path: Path) -> dict[str, Any]:
    """A YAML job file's arguments; its ``source_directory`` is relative to the file."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FitdockError(f"cannot read job file {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise FitdockError(f"job file {path} must be a mapping of estimator arguments")
    kwargs: dict[str, Any] = dict(loaded)
    if "source_directory" in kwargs:
        kwargs["source_directory"] = str(path.parent / str(kwargs["source_directory"]))
    return kwargs


def _distribution(ns: argparse.Namespace, kwargs: dict[str, Any]) -> None:
    """``--distribution`` (and ``--backend``), or MPI when there is more than one process."""
    try:
        processes = int(kwargs.get("process_count_per_node", 1)) * int(kwargs.get("node_count", 1))
    except (TypeError, ValueError):  # not counts: the estimator refuses them, naming the field
        processes = 1
    if ns.distribution is not None:
        kwargs["distributed_training"] = {"kind": ns.distribution}
        if ns.distribution == "pytorch":
            kwargs["distributed_training"]["communication_backend"] = ns.backend or "gloo"
    elif processes > 1 and not {"distributed_training", "distributed_backend"} & set(kwargs):
        kwargs["distributed_backend"] = "mpi"


def _slurm_target(ns: argparse.Namespace, kwargs: dict[str, Any]) -> None:
    """``--target slurm`` and the slurm flags become ``compute_target={"kind": "slurm", ...}``
    (merged over a job file's)."""
    given = {name: getattr(ns, name) for name in SLURM_FLAGS if getattr(ns, name) is not None}
    if ns.sbatch_arg:
        given["extra_sbatch_args"] = ns.sbatch_arg
    target = kwargs.get("compute_target")
    if target == "slurm":
        target = {"kind": "slurm"}
    if given and not (isinstance(target, dict) and target.get("kind") == "slurm"):
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise FitdockError(f"{flags} apply to the slurm target only: add --target slurm")
    if isinstance(target, dict):
        kwargs["compute_target"] = {**target, **given}


def _pairs(items: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` items as a mapping."""
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise FitdockError(f"--env takes NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


def _estimator(framework: str, kwargs: dict[str, Any]) -> Any:
    """The estimator class of ``framework``, built from ``kwargs`` (the distribution as a spec)."""
    import warnings

    from fitdock.estimators.frameworks import Chainer, Estimator, PyTorch
    from fitdock.specs.distribution import Horovod, Mpi, PyTorchConfiguration

    cls = {"chainer": Chainer, "pytorch": PyTorch, "none": Estimator}[framework]
    if kwargs.get("distributed_backend") == "mpi":
        del kwargs["distributed_backend"]
        kwargs["distributed_training"] = Mpi()
    elif isinstance(kwargs.get("distributed_training"), dict):
        config = dict(kwargs["distributed_training"])
        kind = config.pop("kind", "mpi")
        kinds = {"mpi": Mpi, "pytorch": PyTorchConfiguration, "horovod": Horovod}
        if kind not in kinds:
            raise FitdockError(f"distributed_training kind {kind!r}: use one of {', '.join(kinds)}")
        kwargs["distributed_training"] = kinds[kind](**config)
    source = kwargs.pop("source_directory")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return cls(source, **kwargs)
