"""Run train.py as a fitdock job: 2 MPI ranks (ChainerMN).

python examples/chainer_mnist/fit.py                          # on this machine, this interpreter
python examples/chainer_mnist/fit.py --docker                 # in the curated Chainer image
python examples/chainer_mnist/fit.py --hosts hosts.txt        # 2 ranks on each of 2 hosts (ssh)
python examples/chainer_mnist/fit.py --slurm debug            # a Slurm batch job (srun, PMIx)
python examples/chainer_mnist/fit.py --resume-from RUN_ID     # continue an earlier run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fitdock import Chainer, Hosts, Mpi, Slurm


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--docker", action="store_true", help="build and run the Chainer image")
    parser.add_argument("--hosts", type=Path, help="a hostfile (node1:2 per line); shared FS")
    parser.add_argument(
        "--slurm",
        metavar="PARTITION",
        nargs="?",
        const="",
        help="submit to Slurm (this partition, or the cluster's default); shared FS",
    )
    parser.add_argument("--resume-from", help="a run id or checkpoint folder")
    return parser.parse_args()


def main() -> None:
    """Fit the example and print the run's summary."""
    args = parse_args()
    where: dict[str, object] = {"user_managed": True}  # this interpreter, as it is
    if args.docker:
        where = {"use_docker": True}
    elif args.hosts:
        where = {
            "user_managed": True,
            "compute_target": Hosts(hostfile=args.hosts),
            "node_count": 2,
        }
    elif args.slurm is not None:
        where = {"user_managed": True, "compute_target": Slurm(partition=args.slurm or None)}
    est = Chainer(
        source_directory=Path(__file__).resolve().parent,
        entry_script="train.py",
        script_params={"--epochs": args.epochs},
        process_count_per_node=2,
        distributed_training=Mpi(),
        max_run_duration_seconds=600,
        resume_from=args.resume_from,
        **where,  # type: ignore[arg-type]
    )
    run = est.fit(show_output=True)
    print(run.summary())


if __name__ == "__main__":
    main()
