"""The `fitdock` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fitdock(
    *args: str, home: Path, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FITDOCK_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "fitdock.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(
        "import sys\n"
        "from fitdock import Run\n"
        "ctx = Run.get_context()\n"
        "print('args', sys.argv[1:])\n"
        "ctx.log('loss', 0.5)\n"
        "ctx.log('loss', 0.25)\n"
        "sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0)\n"
    )
    return src


@pytest.mark.parametrize(
    "command",
    [[], ["run"], ["runs"], ["runs", "list"], ["runs", "logs"], ["env"], ["env", "show"]],
)
def test_help_explains_every_command(command: list[str], tmp_path: Path) -> None:
    done = fitdock(*command, "--help", home=tmp_path)
    assert done.returncode == 0
    assert "usage: fitdock" in done.stdout
    assert len(done.stdout.splitlines()) > 4


def test_run_from_flags_passes_script_args_and_records_metrics(
    source: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    done = fitdock(
        "run",
        "--source-directory",
        str(source),
        "--entry-script",
        "train.py",
        "--user-managed",
        "--",
        "--flag",
        "$(touch PWNED)",
        home=home,
    )
    assert done.returncode == 0, done.stderr
    assert "[rank 0] args ['--flag', '$(touch PWNED)']" in done.stdout
    assert ": Completed" in done.stdout
    run_id = done.stdout.split()[1]
    assert not list(tmp_path.rglob("PWNED"))
    metrics = fitdock("runs", "metrics", run_id, home=home)
    assert json.loads(metrics.stdout) == {"loss": [0.5, 0.25]}
    listing = fitdock("runs", "list", home=home)
    assert run_id in listing.stdout and "Completed" in listing.stdout
    shown = json.loads(fitdock("runs", "show", run_id, "--json", home=home).stdout)
    assert shown["status"] == "Completed" and shown["ranks"]["0"]["exit_code"] == 0
    logs = fitdock("runs", "logs", run_id, home=home)
    assert "[rank 0] args" in logs.stdout
    cancel = fitdock("runs", "cancel", run_id, home=home)
    assert "already ended: Completed" in cancel.stdout


def test_failed_run_exits_1_with_the_rank_error(source: Path, tmp_path: Path) -> None:
    done = fitdock(
        "run",
        "--source-directory",
        str(source),
        "--entry-script",
        "train.py",
        "--user-managed",
        "--quiet",
        "--",
        "7",
        home=tmp_path,
    )
    assert done.returncode == 1
    assert "Failed" in done.stdout and "rank 0" in done.stdout and "exit code 7" in done.stdout


@pytest.mark.mpi  # two ranks: the plan names mpirun/mpiexec
def test_job_file_and_dry_run_print_the_plan_and_create_nothing(
    source: Path, tmp_path: Path
) -> None:
    job = tmp_path / "job.yml"
    job.write_text(
        "framework: none\n"
        "source_directory: src\n"
        "entry_script: train.py\n"
        "process_count_per_node: 2\n"
        "script_params: {--lr: 0.1}\n"
        "user_managed: true\n"
        "environment_variables: {FOO: bar}\n"
    )
    home = tmp_path / "home"
    done = fitdock("run", str(job), "--dry-run", home=home)
    assert done.returncode == 0, done.stderr
    assert " -n 2 " in done.stdout
    assert "train.py --lr 0.1" in done.stdout
    assert "FOO=bar" in done.stdout and "FITDOCK_RUN_ID=" in done.stdout
    assert not (home / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--entry-script", "nope.py", "--user-managed"], "entry_script 'nope.py' is not a file"),
        (
            ["--entry-script", "train.py", "--framework", "chainer", "--framework-version", "9.9"],
            "not supported",
        ),
        (
            ["--entry-script", "train.py", "--user-managed", "--max-run", "-1"],
            "max_run_duration_seconds",
        ),
        (["--entry-script", "train.py", "--user-managed", "--env", "NOEQUALS"], "NAME=VALUE"),
        (
            ["--entry-script", "train.py", "--user-managed", "--target", "moon"],
            "known: docker, hosts, local",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    source: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    home = tmp_path / "home"
    done = fitdock("run", "--source-directory", str(source), *args, home=home)
    assert done.returncode == 2
    assert done.stderr.startswith("fitdock: error:")
    assert message in done.stderr
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_unknown_run_is_an_error(tmp_path: Path) -> None:
    done = fitdock("runs", "show", "no-such-run", home=tmp_path)
    assert done.returncode == 2 and "no run 'no-such-run'" in done.stderr


def test_env_list_and_show(tmp_path: Path) -> None:
    listing = fitdock("env", "list", home=tmp_path)
    assert listing.returncode == 0
    assert "chainer-7.8.1-cpu" in listing.stdout
    assert "no, use chainer-7.8.1-gpu" in listing.stdout  # Azure's 5.1.0 GPU row is history
    shown = fitdock("env", "show", "chainer-7.8.1-cpu", home=tmp_path)
    assert "SETUPTOOLS_USE_DISTUTILS: stdlib" in shown.stdout
    assert "chainer==7.8.1" in shown.stdout
    missing = fitdock("env", "show", "nope", home=tmp_path)
    assert missing.returncode == 2 and "known:" in missing.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--distribution", "pytorch"],
            ["torch.distributed.run", "--nproc-per-node 2", "FITDOCK_DIST_BACKEND=gloo"],
        ),
        (["--distribution", "pytorch", "--backend", "nccl"], ["FITDOCK_DIST_BACKEND=nccl"]),
    ],
)
def test_distribution_flags_choose_the_launcher(
    source: Path, tmp_path: Path, flags: list[str], expected: list[str]
) -> None:
    done = fitdock(
        "run", "--source-directory", str(source), "--entry-script", "train.py", "-n", "2",
        "--user-managed", "--dry-run", *flags, home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for text in expected:
        assert text in done.stdout


def test_hang_timeout_and_max_restarts_flags_reach_the_run(tmp_path: Path) -> None:
    src = tmp_path / "quiet"
    src.mkdir()
    (src / "quiet.py").write_text("import time\ntime.sleep(30)\n")
    done = fitdock(
        "run", "--source-directory", str(src), "--entry-script", "quiet.py", "--user-managed",
        "--quiet", "--hang-timeout", "1", "--max-restarts", "1", home=tmp_path / "home",
    )  # fmt: skip
    assert done.returncode == 1
    assert "hung: no output" in done.stdout
    run_id = done.stdout.split()[1]
    shown = json.loads(fitdock("runs", "show", run_id, "--json", home=tmp_path / "home").stdout)
    assert [a["outcome"] for a in shown["attempts"]] == ["hung", "hung"]
