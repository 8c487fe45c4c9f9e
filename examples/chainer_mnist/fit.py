"""Run train.py as a fitdock job: 2 MPI ranks (ChainerMN) on this machine.

python examples/chainer_mnist/fit.py
"""

from __future__ import annotations

from pathlib import Path

from fitdock import Chainer, Mpi


def main() -> None:
    """Fit the example with the current interpreter (user_managed=True) and print a summary."""
    est = Chainer(
        source_directory=Path(__file__).resolve().parent,
        entry_script="train.py",
        script_params={"--epochs": 3},
        process_count_per_node=2,
        distributed_training=Mpi(),
        user_managed=True,
        max_run_duration_seconds=600,
    )
    run = est.fit(show_output=True)
    print(run.summary())


if __name__ == "__main__":
    main()
