"""Run train.py as a fitdock job: 2 Horovod ranks.

python examples/pytorch_horovod/fit.py                       # mpirun, MPI controller
python examples/pytorch_horovod/fit.py --controller gloo     # horovodrun --gloo
python examples/pytorch_horovod/fit.py --epochs 5 --resume-from <run id of an earlier run>

``Horovod()`` starts the ranks with the mpirun of the MPI that Horovod was built against
(Debian's Open MPI with scripts/build-horovod.sh), even when another MPI comes first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fitdock import Horovod, PyTorch


def parse_args() -> argparse.Namespace:
    """Command line of fit.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--controller", choices=["mpi", "gloo"], default="mpi")
    parser.add_argument("--resume-from", default=None, help="run id (or run folder)")
    return parser.parse_args()


def main() -> None:
    """Fit the example with the current interpreter (user_managed=True) and print a summary."""
    args = parse_args()
    est = PyTorch(
        source_directory=Path(__file__).resolve().parent,
        entry_script="train.py",
        script_params={"--epochs": args.epochs},
        process_count_per_node=args.ranks,
        distributed_training=Horovod(
            controller=args.controller,
            launcher="horovodrun" if args.controller == "gloo" else "mpirun",
        ),
        user_managed=True,
        resume_from=args.resume_from,
        max_run_duration_seconds=600,
    )
    run = est.fit(show_output=True)
    print(run.summary())


if __name__ == "__main__":
    main()
