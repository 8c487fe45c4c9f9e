"""execute_python_script end to end: real runs of real scripts, sandboxed as on a user's machine.

Every run but one uses this interpreter (``this_interpreter()``: pandas 2, fast); the one
marked ``slow`` builds the curated "script-1-cpu" environment (pandas 3) from PyPI.
Sandbox tests need bubblewrap: they skip without it, and fail with ``CI=true``.
"""

from __future__ import annotations

import io
import socket
import stat
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import run_dirs

from fitdock.errors import RunFailedError, SandboxError, ScriptBundleError, ScriptError, SpecError
from fitdock.execution.run import Run
from fitdock.script.api import ScriptResult, execute_python_script, this_interpreter

pytestmark = pytest.mark.timeout(120)
HERE = this_interpreter()


def run(script: str | Path, *frames: Any, **options: Any) -> ScriptResult:
    options.setdefault("environment", HERE)
    text = textwrap.dedent(script) if isinstance(script, str) else script
    return execute_python_script(text, *frames, **options)


def only(result: ScriptResult) -> pd.DataFrame:
    assert len(result.dataframes) == 1, result.dataframes
    return result.dataframes[0]


def frame(data: dict[str, list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(data)


# ---------------------------------------------------------------------------------------------
# What comes back: the conversions
# ---------------------------------------------------------------------------------------------
RETURNS = {  # id: (the body of azureml_main(), the frames expected back)
    "index dropped": (
        "return pd.DataFrame({'a': [1, 2]}, index=[10, 20])",
        [frame({"a": [1, 2]})],
    ),
    "NA kept": (
        "return pd.DataFrame({'x': [1.0, None], 's': ['a', None]})",
        [frame({"x": [1.0, float("nan")], "s": ["a", None]})],
    ),
    "mixed and datetime to str": (
        "return pd.DataFrame({'m': [1, 'a'], 'd': pd.to_datetime(['2024-01-02', None])})",
        [frame({"m": ["1", "a"], "d": ["2024-01-02 00:00:00", None]})],
    ),
    "int names to str": (
        "return pd.DataFrame([[1, 2]], columns=[0, 1])",
        [frame({"0": [1], "1": [2]})],
    ),
    "duplicate names": (
        "return pd.DataFrame([[1, 2, 3]], columns=['a', 'a', 'a'])",
        [pd.DataFrame([[1, 2, 3]], columns=["a", "a (2)", "a (3)"])],
    ),
    "None": ("return None", []),
    "a DataFrame": ("return pd.DataFrame({'a': ['x']})", [frame({"a": ["x"]})]),
    "a tuple of two": (
        "return pd.DataFrame({'a': [1]}), pd.DataFrame({'b': [2]})",
        [frame({"a": [1]}), frame({"b": [2]})],
    ),
    "a tuple of three: the first two": (
        "return pd.DataFrame({'a': [1]}), None, pd.DataFrame({'c': [3]})",
        [frame({"a": [1]}), pd.DataFrame()],
    ),
    "dict": ("return {'a': [1, 2], 'b': ['x', 'y']}", [frame({"a": [1, 2], "b": ["x", "y"]})]),
    "dict of scalars": ("return {'a': 1, 'b': 'x'}", [frame({"a": [1], "b": ["x"]})]),
    "list": ("return [1, 2, 3]", [frame({"column": [1, 2, 3]})]),
    "2-D ndarray": (
        "return np.arange(6).reshape(3, 2)",
        [frame({"column_0": [0, 2, 4], "column_1": [1, 3, 5]})],
    ),
    "scalar": ("return 42", [frame({"column": [42]})]),
}


@pytest.mark.parametrize("body, expected", RETURNS.values(), ids=list(RETURNS))
def test_returned_values_are_converted(body: str, expected: list[pd.DataFrame]) -> None:
    script = f"import numpy as np\nimport pandas as pd\n\ndef azureml_main():\n    {body}\n"
    result = run(script)
    assert len(result.dataframes) == len(expected)
    for got, want in zip(result.dataframes, expected, strict=True):
        assert isinstance(got.index, pd.RangeIndex) and got.index.start == 0
        assert list(got.columns) == list(want.columns)
        if want.shape == (0, 0):
            assert got.shape == (0, 0)
            continue
        pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_an_unsupported_return_type_is_a_script_error() -> None:
    with pytest.raises(ScriptError, match="Unsupported return type: set") as caught:
        run("def azureml_main():\n    return {1, 2}\n")
    assert caught.value.exception == "TypeError"


# ---------------------------------------------------------------------------------------------
# What goes in: inputs by position, with a fresh index
# ---------------------------------------------------------------------------------------------
def test_a_dataframe_input_gets_a_fresh_index() -> None:
    given = pd.DataFrame({"a": [1, 2, 3]}, index=[5, 6, 7])
    got = only(run("def azureml_main(df):\n    return df.reset_index()\n", given))
    assert got.to_dict("list") == {"index": [0, 1, 2], "a": [1, 2, 3]}


def test_a_csv_input_reads_empty_fields_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,\n,x\n3,NA\n")
    result = run("def azureml_main(df):\n    return df, df.isna()\n", path)
    data, missing = result.dataframes
    assert missing.to_dict("list") == {"a": [False, True, False], "b": [True, False, False]}
    assert data["b"].tolist()[1:] == ["x", "NA"]  # only empty fields are missing


def test_tsv_and_parquet_inputs_map_by_position(tmp_path: Path) -> None:
    tsv, parquet = tmp_path / "left.tsv", tmp_path / "right.parquet"
    tsv.write_text("key\tname\n1\tone\n2\ttwo\n")
    pd.DataFrame({"key": [2, 1], "score": [0.5, 0.25]}, index=[9, 8]).to_parquet(parquet)
    script = """
        def azureml_main(dataframe1, dataframe2):
            return dataframe1.merge(dataframe2, on="key"), dataframe2
    """
    joined, right = run(script, str(tsv), parquet).dataframes
    assert joined.to_dict("list") == {"key": [1, 2], "name": ["one", "two"], "score": [0.25, 0.5]}
    assert right.to_dict("list") == {"key": [2, 1], "score": [0.5, 0.25]}


@pytest.mark.parametrize(
    "script, frames, expected",
    [
        ("def azureml_main():\n    return 'called'\n", 2, "called"),
        ("def azureml_main(df1):\n    return df1.columns[0]\n", 2, "a"),
        ("def azureml_main(df1, df2):\n    return df1.columns[0] + df2.columns[0]\n", 2, "ab"),
        ("def azureml_main(dataframe1=None, dataframe2=None):\n    return str(dataframe2)\n", 1,
         "None"),
    ],
    ids=["0 parameters", "1 parameter", "2 parameters", "defaults, 1 input"],
)  # fmt: skip
def test_azureml_main_takes_zero_one_or_two_inputs(script: str, frames: int, expected: str) -> None:
    got = only(run(script, *[frame({"a": [1]}), frame({"b": [2]})][:frames]))
    assert got["column"].tolist() == [expected]


@pytest.mark.parametrize(
    "script, frames, message",
    [
        ("x = 1\n", 0, "defines no function azureml_main"),
        ("def azureml_main(a, b):\n    return a\n", 1, r"needs 2 input\(s\) \(a, b\) but 1"),
    ],
    ids=["no azureml_main", "more inputs than given"],
)
def test_a_script_that_cannot_be_called_is_refused(script: str, frames: int, message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        run(script, *[frame({"a": [1]})] * frames)


# ---------------------------------------------------------------------------------------------
# The script: text or file; Azure's error shape
# ---------------------------------------------------------------------------------------------
FAILING = """\
import pandas as pd

def check(value):
    if value > 5:
        raise ValueError(f"bad value {value}")

def azureml_main(df):
    check(int(df["a"].max()))
    return df
"""


def test_an_exception_has_azures_message_and_the_users_traceback_only() -> None:
    with pytest.raises(ScriptError) as caught:
        run(FAILING, frame({"a": [1, 7]}))
    error = caught.value
    assert str(error) == (
        "Got exception when invoking script at line 5 in function azureml_main: "
        "'ValueError: bad value 7'."
    )
    assert (error.line, error.exception) == (5, "ValueError")
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert "in azureml_main" in error.traceback and "in check" in error.traceback
    assert error.traceback.rstrip().endswith("ValueError: bad value 7")
    assert "fitdock/script" not in error.traceback


@pytest.mark.parametrize("as_str", [False, True], ids=["Path", "str"])
def test_a_script_file(tmp_path: Path, as_str: bool) -> None:
    path = tmp_path / "double.py"
    path.write_text("def azureml_main(df):\n    return df * 2\n")
    got = only(run(str(path) if as_str else path, frame({"a": [1, 2]})))
    assert got["a"].tolist() == [2, 4]


# ---------------------------------------------------------------------------------------------
# The script bundle
# ---------------------------------------------------------------------------------------------
def test_a_bundles_modules_are_importable(tmp_path: Path) -> None:
    bundle = tmp_path / "Hello.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("Hello.py", "def print_hello(x):\n    print('Hello ' + x)\n")
    script = """
        import os
        import Hello

        def azureml_main(dataframe1):
            Hello.print_hello(dataframe1["name"][0])
            return {"bundle": [sorted(os.listdir("Script Bundle"))[0]]}
    """
    result = run(script, frame({"name": ["world"]}), script_bundle=bundle)
    assert "Hello world" in result.stdout
    assert only(result)["bundle"].tolist() == ["Hello.py"]


def _zip_with(info: zipfile.ZipInfo | str, data: bytes = b"x = 1\n") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(info, data)
    return buffer.getvalue()


def _symlink() -> bytes:
    info = zipfile.ZipInfo("link.py")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip_with(info, b"/etc/passwd")


BAD_BUNDLES: dict[str, Callable[[], bytes]] = {
    "..": lambda: _zip_with("../escape.py"),
    "absolute path": lambda: _zip_with("/tmp/escape.py"),
    "symlink": _symlink,
    "bomb": lambda: _zip_with("zeros.bin", bytes(8 << 20)),
}


@pytest.mark.parametrize("make", BAD_BUNDLES.values(), ids=list(BAD_BUNDLES))
def test_a_refused_bundle_fails_before_any_run(
    make: Callable[[], bytes], tmp_path: Path, fitdock_home: Path
) -> None:
    bundle = tmp_path / "bad.zip"
    bundle.write_bytes(make())
    with pytest.raises(ScriptBundleError, match="script bundle refused") as caught:
        run("def azureml_main():\n    return 1\n", script_bundle=bundle)
    assert caught.value.entry
    assert run_dirs(fitdock_home) == []


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def test_a_saved_png_comes_back_as_an_image() -> None:
    script = """
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def azureml_main(df):
            fig, ax = plt.subplots()
            ax.plot(df["a"])
            fig.savefig("plot.png")
            return df
    """
    result = run(script, frame({"a": [1, 3, 2]}))
    assert result.run is not None
    assert [p.parent for p in result.images] == [result.run.output_dir / "images"]
    assert result.images[0].name.endswith("plot.png")
    assert result.images[0].read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------
# The sandbox's promises
# ---------------------------------------------------------------------------------------------


CONNECT = """
    import socket

    def azureml_main(df):
        try:
            socket.create_connection(("127.0.0.1", int(df["port"][0])), timeout=2).close()
            return {"outcome": "connected"}
        except OSError as exc:
            return {"outcome": f"{type(exc).__name__}: {exc}"}
"""

WRITE = """
    from pathlib import Path

    def azureml_main(df):
        try:
            Path(df["folder"][0], "escaped.txt").write_text("out")
            return {"outcome": "wrote"}
        except OSError as exc:
            return {"outcome": f"{type(exc).__name__}: {exc}"}
"""


def test_the_script_cannot_reach_the_hosts_loopback(bwrap: None, loopback_server: int) -> None:
    port = loopback_server
    got = only(run(CONNECT, frame({"port": [port]})))
    assert got["outcome"][0] != "connected"
    socket.create_connection(("127.0.0.1", port), 5).close()  # reachable from outside


def test_the_script_cannot_write_outside_its_working_folder(bwrap: None, outside: Path) -> None:
    got = only(run(WRITE, frame({"folder": [str(outside)]})))
    assert got["outcome"][0].startswith("OSError"), got["outcome"][0]
    assert not (outside / "escaped.txt").exists()


def test_the_working_folder_is_gone_afterwards_and_the_record_says_bubblewrap(
    bwrap: None,
) -> None:
    script = "import os\n\ndef azureml_main():\n    open('left.txt', 'w').close()\n"
    result = run(script + "    return {'cwd': os.getcwd()}\n", sandbox="strict")
    workdir = Path(only(result)["cwd"][0])
    assert workdir.is_absolute() and not workdir.exists()
    assert result.run is not None
    assert Run(result.run.id).record["tags"] == {"sandbox": "bubblewrap"}


def test_a_memory_hog_is_stopped(bwrap: None) -> None:
    script = """
        import time

        def azureml_main():
            hog = b"x" * (400 << 20)
            time.sleep(60)
            return len(hog)
    """
    started = time.monotonic()
    with pytest.raises(SandboxError, match=r"more than memory_mb=150 MB .* was stopped"):
        run(script, memory_mb=150)
    # stopped, not left to finish its 60 s sleep; the margin covers a slow start under load
    assert time.monotonic() - started < 40


def test_an_endless_loop_ends_at_the_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(RunFailedError, match=r"time limit \(timeout_seconds=3\)") as caught:
        run("def azureml_main():\n    while True:\n        pass\n", timeout_seconds=3)
    assert 3 <= time.monotonic() - started < 15
    assert str(caught.value.status) == "TimedOut"


def test_sandbox_off_warns_and_records_none(outside: Path) -> None:
    result = run(WRITE, frame({"folder": [str(outside)]}), sandbox="off")
    assert "warning: sandbox off: the script runs unisolated" in result.stderr
    assert only(result)["outcome"].tolist() == ["wrote"]  # unisolated indeed
    assert result.run is not None
    assert Run(result.run.id).record["tags"] == {"sandbox": "none"}


# ---------------------------------------------------------------------------------------------
# Bad arguments: SpecError naming the field, before anything is created
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arguments, field",
    [
        ({"sandbox": "maybe"}, "sandbox"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"memory_mb": -1}, "memory_mb"),
        ({"dataframe1": "notes.txt"}, "dataframe1"),
        ({"dataframe1": "missing.csv"}, "dataframe1"),
        ({"dataframe2": [1, 2]}, "dataframe2"),
        ({"script_bundle": "missing.zip"}, "script_bundle"),
        ({"script": "missing.py"}, "script"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v),
)
def test_bad_arguments_create_nothing(
    arguments: dict[str, Any], field: str, tmp_path: Path, fitdock_home: Path
) -> None:
    (tmp_path / "notes.txt").write_text("a,b\n1,2\n")
    for key in ("dataframe1", "script_bundle", "script"):
        if isinstance(arguments.get(key), str):
            arguments[key] = str(tmp_path / arguments[key])
    script = arguments.pop("script", "def azureml_main(*frames):\n    return None\n")
    with pytest.raises(SpecError) as caught:
        run(script, **arguments)
    assert caught.value.field == field
    assert field.split("_")[0] in str(caught.value)
    assert not (fitdock_home / "runs").exists()


# ---------------------------------------------------------------------------------------------
# The curated environment (built from PyPI once, then cached under $FITDOCK_HOME/envs)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_default_environment_is_the_curated_one_with_pandas_3() -> None:
    script = """
        import pandas as pd

        def azureml_main(df):
            return df.assign(total=df["a"] + df["b"]), pd.DataFrame({"pandas": [pd.__version__]})
    """
    data, versions = execute_python_script(
        textwrap.dedent(script), frame({"a": [1, 2], "b": [10, 20]})
    ).dataframes
    assert data.to_dict("list") == {"a": [1, 2], "b": [10, 20], "total": [11, 22]}
    assert versions["pandas"][0].split(".")[0] == "3"
