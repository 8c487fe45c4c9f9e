"""Run train.py as a fitdock job: one PyTorch process on this machine's CPU.

python examples/pytorch_cpu/fit.py
"""

from __future__ import annotations

from pathlib import Path

from fitdock import PyTorch


def main() -> None:
    """Fit the example with the current interpreter (user_managed=True) and print a summary."""
    est = PyTorch(
        source_directory=Path(__file__).resolve().parent,
        entry_script="train.py",
        script_params={"--epochs": 3},
        user_managed=True,
        max_run_duration_seconds=600,
    )
    run = est.fit(show_output=True)
    print(run.summary())


if __name__ == "__main__":
    main()
