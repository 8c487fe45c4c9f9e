"""Strings that reach a child process arrive literally (issue 15): script arguments,
environment variables, the entry script's name, the source folder's and inputs' paths
with spaces and quotes, through a real local run, MPI ranks, Docker and Slurm. Each
payload would create a marker file if any shell ever evaluated it; the script writes what
it received (argv, variables) as JSON, compared byte for byte; no marker appears.
Host names and Docker arguments are checked at the plan (what the agent's remote shell
and ``docker run`` get)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fitdock import Estimator, Hosts, Mpi, PyTorch, PyTorchConfiguration, RunStatus, Slurm
from fitdock.errors import SpecError


def payloads(marker: Path) -> list[str]:
    """Arguments a shell would act on: each one, evaluated, touches ``marker``."""
    m = shlex.quote(str(marker))
    return [
        f"; touch {m}",
        f"$(touch {m})",
        f"`touch {m}`",
        f"| touch {m}",
        f"&& touch {m}",
        f"'; touch {m}; '",
        f'"; touch {m}; "',
        f"line one\ntouch {m}",
        f"a\\\nb; touch {m}",
        "$HOME ${PATH} * ? ~ [a-z] {a,b}",
        "--not-an-option-of-fitdock",
        "-n",
        " leading and trailing ",
        "tab\there",
        "ünïcode ✓",
        "%s %n {} $$ !!",
        "",
    ]


REPORT = """\
import json, os, sys
from pathlib import Path
out = Path(os.environ["FITDOCK_OUTPUT_DIR"])
names = sorted(n for n in os.environ if n.startswith("ODD_"))
data = os.environ.get("FITDOCK_INPUT_ODD_DATA")
seen = {"argv": sys.argv[1:], "env": {n: os.environ[n] for n in names},
        "script": Path(sys.argv[0]).name, "data": sorted(os.listdir(data)) if data else None}
(out / f"seen-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(seen))
"""
# A script name and a source folder name that a shell would split and act on.
ODD_SCRIPT = "it's a $(touch X) `job`; name.py"
ODD_FOLDER = "src with 'quotes' \"and\" $(spaces); ok"


def odd_source(tmp_path: Path) -> Path:
    folder = tmp_path / ODD_FOLDER
    folder.mkdir()
    (folder / ODD_SCRIPT).write_text(REPORT)
    return folder


def variables(marker: Path) -> dict[str, str]:
    return {f"ODD_{i}": value for i, value in enumerate(payloads(marker)) if value}


def no_marker(marker: Path, *folders: Path) -> None:
    assert not marker.exists(), "a shell evaluated a payload"
    for folder in folders:
        stray = [p for p in folder.rglob("*") if p.name in ("X", marker.name)]
        assert not stray, stray


def seen(run: Any, rank: int = 0) -> dict[str, Any]:
    return dict(json.loads((run.output_dir / f"seen-{rank}.json").read_text()))


def fit_every_string(tmp_path: Path, ranks: int = 1, **kwargs: Any) -> Any:
    """The odd script in the odd folder, every payload an argument and a variable, fitted with
    ``kwargs``: each of ``ranks`` ranks got them literally, and no shell evaluated one."""
    marker = tmp_path / "MARKER"
    args = payloads(marker)
    env = variables(marker)
    run = Estimator(
        odd_source(tmp_path), entry_script=ODD_SCRIPT, script_params=args, user_managed=True,
        environment_variables=env, **kwargs,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    for rank in range(ranks):
        got = seen(run, rank)
        assert got["argv"] == args and got["script"] == ODD_SCRIPT
        assert got["env"] == env
    no_marker(marker, tmp_path)
    return run


# ------------------------------------------------------------------------------------ local
def test_local_run_gets_every_string_literally(tmp_path: Path, fitdock_home: Path) -> None:
    data = tmp_path / "in put's $(dir)"
    data.mkdir()
    (data / "a file; `touch x`").write_text("")
    run = fit_every_string(tmp_path, inputs={"odd_data": str(data)})
    assert seen(run)["data"] == ["a file; `touch x`"]
    assert names_are_safe(run.id)


def names_are_safe(run_id: str) -> bool:
    from fitdock.runs.names import run_id_problem

    return run_id_problem(run_id) is None and all(ch not in run_id for ch in " '\"$`;")


def test_script_params_as_a_mapping_stay_literal(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    src = odd_source(tmp_path)
    params = {f"--p{i}": value for i, value in enumerate(payloads(marker))}
    run = Estimator(src, entry_script=ODD_SCRIPT, script_params=params, user_managed=True).fit()
    assert run.status is RunStatus.COMPLETED, run.error
    expected = [word for key, value in params.items() for word in (key, value)]
    assert seen(run)["argv"] == expected
    no_marker(marker, tmp_path)


def test_nul_bytes_are_refused_before_anything_is_made(tmp_path: Path, fitdock_home: Path) -> None:
    src = odd_source(tmp_path)
    for kwargs in (
        {"script_params": ["a\0b"]},
        {"script_params": {"--x": "a\0b"}},
        {"environment_variables": {"X": "a\0b"}},
        {"entry_script": "a\0b.py"},
    ):
        base = {"entry_script": ODD_SCRIPT, "user_managed": True, **kwargs}
        with pytest.raises(SpecError, match=r"NUL|entry_script"):
            Estimator(src, **base)
    assert not (fitdock_home / "runs").exists()


@pytest.mark.mpi
def test_mpi_ranks_get_every_string_literally(tmp_path: Path) -> None:
    """mpirun (Open MPI or MPICH) passes argv and the environment to each rank as they are."""
    fit_every_string(tmp_path, ranks=2, process_count_per_node=2, distributed_training=Mpi())


# ----------------------------------------------------------------------- oversubscription
def test_absurd_rank_counts_are_refused_at_once(tmp_path: Path, fitdock_home: Path) -> None:
    src = odd_source(tmp_path)
    cpus = os.cpu_count() or 1
    started = time.monotonic()
    with pytest.raises(SpecError, match="process_count_per_node") as caught:
        Mpi(10**9)
    assert caught.value.field == "process_count_per_node"
    too_many = min(4 * cpus + 1, 1024)
    if too_many <= 4 * cpus:  # a machine with more than 256 CPUs: nothing is too many here
        return
    est = Estimator(
        src, entry_script=ODD_SCRIPT, user_managed=True,
        process_count_per_node=too_many, distributed_training=Mpi(),
    )  # fmt: skip
    with pytest.raises(SpecError, match="oversubscribe=True") as caught:
        est.fit()
    assert caught.value.field == "process_count_per_node"
    in_docker = Estimator(
        src, entry_script=ODD_SCRIPT, user_managed=True, compute_target="docker",
        process_count_per_node=too_many, distributed_training=Mpi(),
    )  # fmt: skip
    with pytest.raises(SpecError, match="oversubscribe=True"):  # its ranks share these CPUs
        in_docker.fit()
    assert time.monotonic() - started < 5, "the refusal must come before anything starts"
    assert not (fitdock_home / "runs").exists() or not any((fitdock_home / "runs").iterdir())
    # the override is explicit and reaches the plan
    allowed = Estimator(
        src, entry_script=ODD_SCRIPT, user_managed=True, process_count_per_node=too_many,
        distributed_training=PyTorchConfiguration("gloo", oversubscribe=True),
    )  # fmt: skip
    assert allowed.plan().world_size == too_many


@pytest.mark.mpi
def test_a_small_oversubscribed_job_still_runs(tmp_path: Path) -> None:
    """Up to 4 ranks per CPU run without asking (here 2x this machine's CPUs, at least 4)."""
    src = odd_source(tmp_path)
    ranks = max(4, 2 * (os.cpu_count() or 1))
    ranks = min(ranks, 8)
    run = Estimator(
        src, entry_script=ODD_SCRIPT, user_managed=True,
        process_count_per_node=ranks, distributed_training=Mpi(),
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    assert sorted(p.name for p in run.output_dir.glob("seen-*.json")) == sorted(
        f"seen-{r}.json" for r in range(ranks)
    )


# ------------------------------------------------------------------------------ plan level
def test_hosts_commands_quote_every_word(tmp_path: Path) -> None:
    """The agent runs ``AGENT HOST COMMAND`` where COMMAND is one shell string: a real
    ``sh`` parses it back into the literal words (run with ``echo`` in place of the job)."""
    marker = tmp_path / "MARKER"
    src = odd_source(tmp_path)
    args = [a for a in payloads(marker) if a]
    est = PyTorch(
        src, entry_script=ODD_SCRIPT, script_params=args, user_managed=True,
        compute_target=Hosts(["n1:1", "n2:1"], agent=("/opt/agent",)),
        environment_variables=variables(marker),
        distributed_training=PyTorchConfiguration("gloo", 2, 2),
    )  # fmt: skip
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for command in est.plan().commands:
        assert command[:2] in (["/opt/agent", "n1"], ["/opt/agent", "n2"])
        words = shlex.split(command[2])
        assert words[-len(args) :] == args
        # A real sh evaluates the very string, with `cd` a no-op and an `env` on PATH that
        # prints the words it got, NUL-separated: they are the literal ones.
        fake.joinpath("env").write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
        fake.joinpath("env").chmod(0o755)
        probe = f"cd() {{ :; }}; PATH={shlex.quote(str(fake))}; {command[2]}"
        done = subprocess.run(["sh", "-c", probe], capture_output=True, cwd=tmp_path, timeout=30)
        got = [w.decode() for w in done.stdout.split(b"\0")[:-1]]
        assert got == words[words.index("env") + 1 :], done.stderr
        assert got[-len(args) :] == args
    no_marker(marker, tmp_path)
    for bad in ("n1;touch x", "$(hostname)", "-oProxyCommand=x", "a b", "n1\nn2", ""):
        with pytest.raises(SpecError, match="host"):
            Hosts([bad])


def test_slurm_settings_cannot_reach_the_sbatch_script(tmp_path: Path) -> None:
    for field in ("partition", "account", "qos", "constraint", "mem"):
        for value in ("a b", "x\n#SBATCH --uid=0", "$(id)", "a;b"):
            with pytest.raises(SpecError, match=field):
                Slurm(**{field: value})
    with pytest.raises(SpecError, match="extra_sbatch_args"):
        Slurm(extra_sbatch_args=("--comment=a\n#SBATCH --uid=0",))


def test_docker_arguments_and_variables_reach_docker_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docker run``'s argv holds the user's arguments as words, names the variables
    (``-e NAME``: the value comes from the client's environment, never a command line), and
    ends with the script's arguments as they are."""
    monkeypatch.setenv("FITDOCK_BASE_IMAGE", "local/debian:bookworm")
    marker = tmp_path / "MARKER"
    src = odd_source(tmp_path)
    env = variables(marker)
    arguments = ["--label", f"odd=$(touch {marker})"]
    est = Estimator(
        src, entry_script=ODD_SCRIPT, script_params=payloads(marker), use_docker=True,
        environment_variables=env, user_managed=True,
    )  # fmt: skip
    changed = est.environment.model_copy(deep=True)
    changed.docker.arguments = arguments
    est = Estimator(
        src, entry_script=ODD_SCRIPT, script_params=payloads(marker),
        environment_definition=changed,
    )  # fmt: skip
    plan = est.plan()
    (argv,) = plan.commands
    assert argv[0] == "docker" and argv[-len(payloads(marker)) :] == payloads(marker)
    assert any(argv[i : i + 2] == arguments for i in range(len(argv)))
    for name, value in env.items():
        assert any(argv[i : i + 2] == ["-e", name] for i in range(len(argv))), name
        assert plan.env[name] == value
    no_marker(marker, tmp_path)


# ------------------------------------------------------------------------------ real targets
@pytest.mark.docker
def test_docker_run_gets_arguments_and_paths_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image of tests/test_docker_runs.py (same packages: built once), a source folder
    whose name would split, and every payload as arguments."""
    monkeypatch.setenv("FITDOCK_BASE_IMAGE", "local/debian:bookworm")
    marker = tmp_path / "MARKER"
    src = odd_source(tmp_path)
    args = payloads(marker)
    run = Estimator(
        src, entry_script=ODD_SCRIPT, script_params=args, use_docker=True,
        pip_packages=["numpy<2", "mpi4py", "mpich"], max_run_duration_seconds=600,
    ).fit()  # fmt: skip
    assert run.status is RunStatus.COMPLETED, run.error
    got = seen(run)
    assert got["argv"] == args and got["script"] == ODD_SCRIPT
    no_marker(marker, tmp_path)


@pytest.mark.slurm
def test_slurm_job_gets_arguments_and_variables_literally(slurm: Any, tmp_path: Path) -> None:
    """Through sbatch's script (``export NAME=<quoted>``, the command quoted word by word)."""
    fit_every_string(tmp_path, compute_target=Slurm(), termination_grace_seconds=5)
