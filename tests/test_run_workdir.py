"""``./outputs`` and ``./logs`` in the job's working directory are the run's own folders, as on
Azure ML: on the local target, for MPI ranks, in Docker, and on hosts without a shared
filesystem (staged there and back); a source's own outputs/ folder; a file in the way."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from helpers import run_dirs, write_script
from netns import namespace_hosts, netns_unavailable, require

from fitdock import Estimator, Hosts, Mpi, RunStatus
from fitdock.errors import SpecError
from fitdock.runs.store import runs_root

RELATIVE = """
import os
from fitdock import Run
ctx = Run.get_context()
with open("./outputs/model.npz", "wb") as f:
    f.write(b"\\x93NUMPY weights")
with open("logs/train.log", "w") as f:
    f.write("epoch 1\\n")
with open(Run.get_context().output_dir / "b.txt", "w") as f:
    f.write("by the context")
with open("outputs/seen.txt", "w") as f:
    f.write(os.path.realpath("outputs") + "\\n" + os.path.realpath(ctx.output_dir) + "\\n"
            + os.path.realpath("logs") + "\\n" + os.path.realpath(ctx.log_dir))
"""

PER_RANK = """
from fitdock import Run
rank = Run.get_context().rank
with open(f"outputs/rank_{rank}.txt", "w") as f:
    f.write(f"rank {rank}")
"""


def estimator(src: Path, **kwargs: object) -> Estimator:
    return Estimator(src, entry_script="train.py", user_managed=True, **kwargs)  # type: ignore[arg-type]


def check_links(snapshot: Path) -> None:
    for name in ("outputs", "logs"):
        assert (snapshot / name).is_symlink()
        assert os.readlink(snapshot / name) == f"../{name}"


def test_relative_outputs_and_logs_are_the_runs(tmp_path: Path) -> None:
    run = estimator(write_script(tmp_path / "src", RELATIVE)).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    check_links(run.snapshot_dir)
    seen = (run.output_dir / "seen.txt").read_text().splitlines()
    assert seen == [str(run.output_dir.resolve())] * 2 + [str(run.log_dir.resolve())] * 2
    files = run.get_file_names()
    for name in ("outputs/model.npz", "outputs/b.txt", "logs/train.log"):
        assert name in files
    assert len(files) == len(set(files))
    assert not [name for name in files if name.startswith("snapshot/")]
    down = run.download_file("outputs/model.npz", tmp_path / "down")
    assert down.read_bytes() == b"\x93NUMPY weights"
    assert run.download_file("logs/train.log", tmp_path / "down").read_text() == "epoch 1\n"
    assert run.record["source"]["shipped"] == {}


@pytest.mark.mpi
def test_each_mpi_rank_writes_to_the_runs_outputs(tmp_path: Path) -> None:
    src = write_script(tmp_path / "src", PER_RANK)
    run = estimator(src, process_count_per_node=2, distributed_training=Mpi()).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    files = run.get_file_names()
    assert {"outputs/rank_0.txt", "outputs/rank_1.txt"} <= set(files)
    assert (run.output_dir / "rank_1.txt").read_text() == "rank 1"


def test_a_shipped_outputs_folder_moves_into_the_runs_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_script(tmp_path / "src", 'print(open("outputs/sub/vocab.txt").read())')
    (src / "outputs" / "sub").mkdir(parents=True)
    (src / "outputs" / "sub" / "vocab.txt").write_text("a b c")
    (src / "outputs" / "ignored.tmp").write_text("not shipped")
    (src / ".fitdockignore").write_text("*.tmp\n")
    run = estimator(src).fit(show_output=True)
    assert run.status is RunStatus.COMPLETED, run.error
    check_links(run.snapshot_dir)
    assert "outputs/sub/vocab.txt" in run.get_file_names()
    assert "outputs/ignored.tmp" not in run.get_file_names()
    assert (run.log_dir / "rank_0.stdout.log").read_text() == "a b c\n"
    assert run.record["source"]["shipped"] == {"outputs": {"files": 1, "bytes": 5}}
    assert run.record["source"]["files"] == 3  # train.py, .fitdockignore, the shipped file
    out = capsys.readouterr().out
    assert "outputs/ shipped with the source (1 files, 5 B) moved to the run's outputs/" in out
    assert (src / "outputs" / "sub" / "vocab.txt").read_text() == "a b c"  # source untouched


@pytest.mark.parametrize("name", ["outputs", "logs"])
def test_a_file_named_outputs_or_logs_is_refused_and_leaves_no_run(
    tmp_path: Path, fitdock_home: Path, name: str
) -> None:
    src = write_script(tmp_path / "src", "print('never runs')")
    (src / name).write_text("a file in the way")
    with pytest.raises(SpecError, match=f"file named '{name}'.*rename.*fitdockignore") as caught:
        estimator(src).fit()
    assert caught.value.field == "source_directory"
    assert run_dirs(fitdock_home) == []
    (src / ".fitdockignore").write_text(f"/{name}\n")
    assert estimator(src).fit().status is RunStatus.COMPLETED


def test_a_shipped_file_where_fitdock_makes_a_folder_is_refused(
    tmp_path: Path, fitdock_home: Path
) -> None:
    src = write_script(tmp_path / "src", "print('never runs')")
    (src / "outputs").mkdir()
    (src / "outputs" / "model").write_text("SM_MODEL_DIR is outputs/model, a folder")
    with pytest.raises(SpecError, match="outputs/model") as caught:
        estimator(src).fit()
    assert caught.value.field == "source_directory"
    assert run_dirs(fitdock_home) == []


# ---------------------------------------------------------------------------------------------
# Docker: the run folder is mounted at its own path, so the relative links resolve inside
# ---------------------------------------------------------------------------------------------
@pytest.mark.docker
@pytest.mark.timeout(900)  # builds the image of tests/test_docker_runs.py when it is cold
def test_relative_outputs_in_a_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FITDOCK_BASE_IMAGE", "local/debian:bookworm")
    src = write_script(tmp_path / "src", PER_RANK.replace("rank_{rank}", "x_{rank}"))
    # the environment of tests/test_docker_runs.py: one image serves both
    est = Estimator(
        src,
        entry_script="train.py",
        pip_packages=["numpy<2", "mpi4py", "mpich"],
        use_docker=True,
        termination_grace_seconds=2,
        process_count_per_node=2,
        distributed_training=Mpi(),
        max_run_duration_seconds=300,
    )
    run = est.fit()
    assert run.status is RunStatus.COMPLETED, run.error
    assert {"outputs/x_0.txt", "outputs/x_1.txt"} <= set(run.get_file_names())


# ---------------------------------------------------------------------------------------------
# Hosts without a shared filesystem: each fake host sees its own folder over the runs root
# ---------------------------------------------------------------------------------------------
PRIVATE_AGENT = """#!/bin/sh
# A host without the shared filesystem: the netns agent, with this host's own folder
# bind-mounted over the runs root in a private mount namespace.
for arg; do case $arg in -*) ;; *) host=$arg; break ;; esac; done
exec unshare --mount --propagation private -- /bin/sh -c \
    'mkdir -p "$1" && mount --bind "$1" "$2" && shift 2 && exec "$@"' \
    private-agent {private}/"$host" {runs} {agent} "$@"
"""

ON_HOSTS = """
import os
from fitdock import Run
rank = Run.get_context().rank
with open(f"outputs/x_{rank}.txt", "w") as f:
    f.write(os.environ["SM_CURRENT_HOST"])
with open(f"logs/note_{rank}.txt", "w") as f:
    f.write("noted")
"""


@pytest.mark.netns
@pytest.mark.mpi
def test_relative_outputs_come_back_from_hosts_without_a_shared_filesystem(
    tmp_path: Path,
) -> None:
    require(netns_unavailable())
    if not os.access("/usr/bin/mpirun", os.X_OK):
        require("/usr/bin/mpirun is not installed (scripts/install-system.sh installs it)")
    runs, private = runs_root(), tmp_path / "hosts"
    runs.mkdir(parents=True)
    agent = tmp_path / "private-agent"
    with namespace_hosts(2, resolve_hostnames=False) as net:
        agent.write_text(
            PRIVATE_AGENT.format(
                private=shlex.quote(str(private)),
                runs=shlex.quote(str(runs)),
                agent=shlex.quote(str(net.agent)),
            )
        )
        agent.chmod(0o755)
        target = Hosts(
            [f"{h.address}:1" for h in net.hosts], agent=(str(agent),), network=net.subnet,
            shared_filesystem=False,
        )  # fmt: skip
        src = write_script(tmp_path / "src", ON_HOSTS)
        run = Estimator(
            src, entry_script="train.py", compute_target=target, node_count=2,
            distributed_training=Mpi(mpirun="/usr/bin/mpirun"), user_managed=True,
            max_run_duration_seconds=120,
        ).fit()  # fmt: skip
        assert run.status is RunStatus.COMPLETED, run.error
        hostnames = {h.hostname for h in net.hosts}
    files = run.get_file_names()
    for rank in (0, 1):
        assert {f"outputs/x_{rank}.txt", f"logs/note_{rank}.txt"} <= set(files)
    assert {(run.output_dir / f"x_{r}.txt").read_text() for r in (0, 1)} == hostnames
    for host in net.hosts:  # each host had its own copy: real folders, the links staged
        there = private / host.address / run.id
        check_links(there / "snapshot")
        assert (there / "outputs").is_dir() and not (there / "outputs").is_symlink()
        assert len(list((there / "outputs").glob("x_*.txt"))) == 1
        exits = [json.loads(p.read_text()) for p in (there / "logs").glob("rank_*.exit.json")]
        assert [e["exit_code"] for e in exits] == [0]
