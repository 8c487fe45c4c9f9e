"""torchrun as a distribution: one torchrun per node, c10d rendezvous on the first node."""

from __future__ import annotations

from fitdock.estimators.distribution import PyTorchConfiguration


def torchrun_argv(
    python: str,
    config: PyTorchConfiguration,
    nodes: int,
    per_node: int,
    command: list[str],
    *,
    run_id: str,
    endpoint: str | None = None,
    node_rank: int | None = None,
) -> list[str]:
    """``python -m torch.distributed.run ... --no-python command``.

    With one node and no ``endpoint`` the rendezvous is ``--standalone`` (a free local
    port). ``--no-python`` lets fitdock's rank wrapper run before the script;
    ``--max-restarts 0`` leaves restarts to fitdock, which resumes from checkpoints.
    """
    argv = [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nodes),
        "--nproc-per-node",
        str(per_node),
    ]
    if endpoint is None:
        argv.append("--standalone")
    else:
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id]
        if node_rank is not None:
            argv += ["--node-rank", str(node_rank)]
    return [*argv, "--max-restarts", "0", "--no-python", *command]


def torchrun_env(config: PyTorchConfiguration) -> dict[str, str]:
    return {"FITDOCK_DIST_BACKEND": config.communication_backend}
