"""Run train.py as a fitdock job: two DDP ranks on this machine's CPU, started by torchrun.

python examples/pytorch_ddp/fit.py
"""

from __future__ import annotations

from pathlib import Path

from fitdock import PyTorch, PyTorchConfiguration


def main() -> None:
    """Fit the example on 2 gloo ranks with the current interpreter and print a summary."""
    est = PyTorch(
        source_directory=Path(__file__).resolve().parent,
        entry_script="train.py",
        script_params={"--epochs": 3},
        distributed_training=PyTorchConfiguration(communication_backend="gloo", process_count=2),
        user_managed=True,
        max_run_duration_seconds=600,
    )
    run = est.fit(show_output=True)
    print(run.summary())
    throughput = run.output_dir / "throughput.json"
    if throughput.is_file():
        print(throughput.read_text(), end="")


if __name__ == "__main__":
    main()
