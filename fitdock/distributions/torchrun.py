"""torchrun as a distribution: one torchrun per node, c10d rendezvous on the first node."""

from __future__ import annotations

from fitdock.specs.distribution import PyTorchConfiguration


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
    local_addr: str | None = None,
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
            # Say which node hosts the c10d store: torchrun guesses it from hostnames, which
            # need not resolve between hosts.
            argv += [
                "--node-rank",
                str(node_rank),
                f"--rdzv-conf=is_host={str(node_rank == 0).lower()}",
            ]
        if local_addr is not None:
            argv += ["--local-addr", local_addr]
    return [*argv, "--max-restarts", "0", "--no-python", *command]


def torchrun_env(config: PyTorchConfiguration) -> dict[str, str]:
    return {"FITDOCK_DIST_BACKEND": config.communication_backend}
