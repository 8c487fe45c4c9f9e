"""``fitdock script run|serve``: real runs in this interpreter (``--user-managed``), in process
through ``fitdock.cli.main``; the help texts through the real command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fitdock.cli import main
from fitdock.errors import ScriptError

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]

SCALE = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

def azureml_main(dataframe1):
    print("rows in:", len(dataframe1))
    plt.plot(dataframe1["x"])
    plt.savefig("line.png")
    return dataframe1.assign(y=dataframe1["x"] * 10), dataframe1.describe()
"""

FAILING = """\
import pandas as pd

def azureml_main(dataframe1):
    share = dataframe1["x"].sum() / 0 if dataframe1.empty else 1 / 0
    return share
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "scale.py").write_text(SCALE)
    (tmp_path / "failing.py").write_text(FAILING)
    (tmp_path / "data.csv").write_text("x,name\n1,one\n2,two\n3,three\n")
    return tmp_path


def fitdock(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prints_each_outputs_shape_and_first_rows(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(files / "scale.py"), "--input", str(files / "data.csv"), "--user-managed"]
    code, out, err = fitdock(capsys, "script", "run", *args)
    assert code == 0, err
    assert "script output:\n  rows in: 3\n" in out
    assert "Result Dataset 1: 3 row(s) x 3 column(s)" in out
    table = pd.DataFrame({"x": [1, 2, 3], "name": ["one", "two", "three"], "y": [10, 20, 30]})
    assert table.to_string() in out
    assert "Result Dataset 2: 8 row(s) x 1 column(s)" in out  # describe() of x
    assert "images:\n  " in out and out.count("_line.png") == 1
    assert out.rstrip().splitlines()[-1].startswith("run fitdock_script_")


def test_run_copies_outputs_and_images_to_the_output_dir(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    args = [str(files / "scale.py"), "--input", str(files / "data.csv"), "--user-managed"]
    code, out, err = fitdock(capsys, "script", "run", *args, "--output-dir", str(out_dir), "--csv")
    assert code == 0, err
    names = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert names == [
        "images/00_line.png", "output1.csv", "output1.parquet", "output2.csv", "output2.parquet",
    ]  # fmt: skip
    assert f"copied 5 file(s) to {out_dir}" in out
    first = pd.read_parquet(out_dir / "output1.parquet", use_threads=False)  # see api.collect
    assert first.to_dict("list") == {
        "x": [1, 2, 3],
        "name": ["one", "two", "three"],
        "y": [10, 20, 30],
    }
    assert pd.read_csv(out_dir / "output1.csv").equals(first)
    assert (out_dir / "images" / "00_line.png").read_bytes().startswith(b"\x89PNG")


def test_a_failing_script_exits_1_with_azures_message(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(files / "failing.py"), "--input", str(files / "data.csv"), "--user-managed"]
    code, out, err = fitdock(capsys, "script", "run", *args)
    assert code == 1
    assert (
        "fitdock script: Got exception when invoking script at line 4 in function azureml_main: "
        "'ZeroDivisionError: division by zero'."
    ) in err
    assert "Traceback (most recent call last):" in err
    assert 'script.py", line 4, in azureml_main' in err
    assert "ZeroDivisionError: division by zero\n" in err
    assert "fitdock/script" not in err and "Result Dataset" not in out


def test_a_script_past_its_time_limit_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "loop.py"
    script.write_text("import time\n\ndef azureml_main():\n    time.sleep(60)\n")
    code, _, err = fitdock(capsys, "script", "run", str(script), "--timeout", "1", "--user-managed")
    assert code == 1
    assert "time limit (timeout_seconds=1)" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input", "notes.txt"], "is not a CSV, TSV or Parquet file"),
        (["--input", "data.csv"] * 3, "at most two --input files"),
        (["--timeout", "0"], "timeout_seconds must be > 0"),
    ],
    ids=["a .txt input", "three inputs", "timeout 0"],
)
def test_bad_input_exits_2_and_runs_nothing(
    files: Path,
    fitdock_home: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    (files / "notes.txt").write_text("x\n1\n")
    extra = [str(files / a) if a.endswith((".txt", ".csv")) else a for a in extra]
    code, _, err = fitdock(capsys, "script", "run", str(files / "scale.py"), *extra)
    assert code == 2
    assert err.startswith("fitdock: error: ") and message in err
    assert not (fitdock_home / "runs").exists()


# ---------------------------------------------------------------------------------- serve
@pytest.fixture
def fake_serve(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``fitdock.script.serve`` replaced by a module whose ``serve`` records its call."""
    calls: list[dict[str, Any]] = []

    def serve(script: Any, **options: Any) -> None:
        calls.append({"script": script, **options})
        if "raise" in str(script):
            raise ScriptError("Got exception when invoking script at line 1 ...", traceback="TB\n")

    module = types.ModuleType("fitdock.script.serve")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fitdock.script.serve", module)
    return calls


def test_serve_passes_its_options_on(
    fake_serve: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert fitdock(capsys, "script", "serve", "score.py")[0] == 0
    args = ["--bundle", "m.zip", "--host", "0.0.0.0", "--port", "9000", "--workers", "4"]
    args += ["--token", "s3cret", "--timeout", "5", "--sandbox", "strict"]
    assert fitdock(capsys, "script", "serve", "score.py", *args)[0] == 0
    assert fake_serve == [
        {"script": Path("score.py"), "bundle": None, "host": "127.0.0.1", "port": 8080,
         "workers": 2, "token": None, "timeout": 30.0, "sandbox": "auto"},
        {"script": Path("score.py"), "bundle": Path("m.zip"), "host": "0.0.0.0", "port": 9000,
         "workers": 4, "token": "s3cret", "timeout": 5.0, "sandbox": "strict"},
    ]  # fmt: skip


def test_serve_takes_the_token_from_the_variable_when_no_token_is_given(
    fake_serve: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FITDOCK_SERVE_TOKEN", "from-the-variable\n")
    assert fitdock(capsys, "script", "serve", "score.py")[0] == 0
    assert fitdock(capsys, "script", "serve", "score.py", "--token", "given")[0] == 0
    assert [call["token"] for call in fake_serve] == ["from-the-variable", "given"]
    monkeypatch.setenv("FITDOCK_SERVE_TOKEN", " ")
    code, _, err = fitdock(capsys, "script", "serve", "score.py")
    assert code == 2 and "FITDOCK_SERVE_TOKEN is set but empty" in err
    assert len(fake_serve) == 2


def test_serve_takes_the_token_from_the_first_line_of_a_token_file(
    fake_serve: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FITDOCK_SERVE_TOKEN", "from-the-variable")  # the file is asked for
    path = tmp_path / "token"
    path.write_text("  s3cret \nsecond line\n")
    path.chmod(0o600)
    assert fitdock(capsys, "script", "serve", "score.py", "--token-file", str(path))[0] == 0
    assert fake_serve[0]["token"] == "s3cret"
    with pytest.raises(SystemExit) as caught:  # one or the other
        main(["script", "serve", "score.py", "--token", "t", "--token-file", str(path)])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_serve_refuses_a_token_file_others_may_read(
    fake_serve: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    mode: int,
) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(mode)
    code, _, err = fitdock(capsys, "script", "serve", "score.py", "--token-file", str(path))
    assert code == 2
    assert err.startswith("fitdock: error: ")
    assert f"others may read or change the token (mode {mode:o}): run `chmod 600 {path}`" in err
    assert "s3cret" not in err and fake_serve == []


def test_serve_of_a_script_that_cannot_load_exits_1(
    fake_serve: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = fitdock(capsys, "script", "serve", "raise.py")
    assert code == 1
    assert err == "fitdock script: Got exception when invoking script at line 1 ...\nTB\n"


# ---------------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--help"], ["script", "run azureml_main scripts"]),
        (["script", "--help"], ["Execute Python Script", "run", "serve", "examples:"]),
        (
            ["script", "run", "--help"],
            ["SCRIPT.py", "--input FILE", "--bundle ZIP", "--output-dir DIR", "--sandbox",
             "--timeout S", "--memory-mb N", "--csv", "Exit status", "examples:",
             "fitdock script run clean.py --input data.csv"],
        ),
        (
            ["script", "serve", "--help"],
            ["SCRIPT.py", "--bundle ZIP", "--host HOST", "--port PORT", "--workers N",
             "--token TOKEN", "--token-file PATH", "FITDOCK_SERVE_TOKEN", "--timeout S",
             "--sandbox", "POST /score", "examples:"],
        ),
    ],
    ids=["fitdock", "script", "run", "serve"],
)  # fmt: skip
def test_help_texts(args: list[str], expected: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "fitdock.cli", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for text in expected:
        assert text in done.stdout, text


def test_the_script_group_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import sys
        from fitdock.cli import _parser
        _parser()
        heavy = [m for m in ("pandas", "pyarrow", "fastapi", "uvicorn") if m in sys.modules]
        print(heavy)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.stdout.strip() == "[]"
