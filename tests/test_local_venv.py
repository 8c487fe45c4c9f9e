"""user_managed=False on the local target: the environment becomes a virtualenv built with
uv, once per environment hash, and the job runs with its interpreter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fitdock import Estimator, RunStatus

SCRIPT = """\
import json, sys
import six
from fitdock import Run
ctx = Run.get_context()
where = {"python": sys.executable, "six": six.__version__}
(ctx.output_dir / "where.json").write_text(json.dumps(where))
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    return tmp_path / "src"


@pytest.mark.slow
def test_a_fit_builds_the_venv_once_and_reuses_it(source: Path, fitdock_home: Path) -> None:
    est = Estimator(source, entry_script="train.py", pip_packages=["six==1.16.0"])
    first = est.fit()
    assert first.status is RunStatus.COMPLETED, first.error
    build = first.record["environment_build"]
    assert build["built"] is True
    assert "six==1.16.0" in build["packages"]
    where = json.loads((first.output_dir / "where.json").read_text())
    assert where["six"] == "1.16.0"
    assert where["python"].startswith(str(fitdock_home / "envs"))
    assert (first.log_dir / "env-build.log").stat().st_size > 0
    second = est.fit()
    assert second.status is RunStatus.COMPLETED, second.error
    again = second.record["environment_build"]
    assert again["built"] is False and again["venv"] == build["venv"]
    assert again["seconds"] < 0.5
    assert est.plan().interpreter == str(Path(build["venv"]) / "bin" / "python")


def test_a_missing_package_fails_the_run_with_the_build_log(source: Path) -> None:
    est = Estimator(
        source, entry_script="train.py", pip_packages=["fitdock-no-such-package-xyz==1.0"]
    )
    run = est.fit()
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error["reason"] == "environment_build"
    assert "fitdock-no-such-package-xyz" in run.error["message"]
