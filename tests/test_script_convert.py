"""fitdock.script.convert: inputs in, returned values out, the seed's conversions."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fitdock.errors import ScriptError, SpecError
from fitdock.script import convert

# --- normalize: one case per rule: (input frame, expected output frame) --------------------

NORMALIZE_CASES = {
    "custom index -> 0..n-1": (
        pd.DataFrame({"x": [1, 2, 3]}, index=[7, 3, 9]),
        pd.DataFrame({"x": [1, 2, 3]}),
    ),
    "string index -> 0..n-1": (
        pd.DataFrame({"x": [1.5, 2.5]}, index=["a", "b"]),
        pd.DataFrame({"x": [1.5, 2.5]}),
    ),
    "numbers, booleans and strings pass": (
        pd.DataFrame({"i": [1, 2], "f": [0.5, np.nan], "b": [True, False], "s": ["a", None]}),
        pd.DataFrame({"i": [1, 2], "f": [0.5, np.nan], "b": [True, False], "s": ["a", None]}),
    ),
    "mixed object column -> str, missing kept": (
        pd.DataFrame({"m": [1, "x", 2.5, None]}, dtype=object),
        pd.DataFrame({"m": ["1", "x", "2.5", None]}, dtype=object),
    ),
    "datetime column -> str, NaT kept missing": (
        pd.DataFrame({"d": pd.to_datetime(["2024-01-02", None])}),
        pd.DataFrame({"d": ["2024-01-02 00:00:00", None]}, dtype=object),
    ),
    "date objects -> str": (
        pd.DataFrame({"d": [datetime.date(2024, 5, 6), np.nan]}, dtype=object),
        pd.DataFrame({"d": ["2024-05-06", None]}, dtype=object),
    ),
    "int and tuple column names -> str": (
        pd.DataFrame([[1, 2, 3]], columns=pd.Index([0, ("a", "b"), 2.5], dtype=object)),
        pd.DataFrame([[1, 2, 3]], columns=["0", "('a', 'b')", "2.5"]),
    ),
    "duplicate names -> a, a (2), a (3)": (
        pd.DataFrame([[1, 2, 3]], columns=["a", "a", "a"]),
        pd.DataFrame([[1, 2, 3]], columns=["a", "a (2)", "a (3)"]),
    ),
    "an existing 'a (2)' is skipped": (
        pd.DataFrame([[1, 2, 3, 4]], columns=["a", "a", "a (2)", "a"]),
        pd.DataFrame([[1, 2, 3, 4]], columns=["a", "a (3)", "a (2)", "a (4)"]),
    ),
    "names equal once str'ed are duplicates": (
        pd.DataFrame([[1, 2]], columns=pd.Index([1, "1"], dtype=object)),
        pd.DataFrame([[1, 2]], columns=["1", "1 (2)"]),
    ),
}


@pytest.mark.parametrize(("frame", "expected"), NORMALIZE_CASES.values(), ids=NORMALIZE_CASES)
def test_normalize(frame: Any, expected: Any) -> None:
    out = convert.normalize(frame)
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)
    assert isinstance(out.index, pd.RangeIndex)
    assert out.index.dtype == np.int64
    assert all(isinstance(name, str) for name in out.columns)


def test_normalize_keeps_missing_missing_not_the_text_nan() -> None:
    frame = pd.DataFrame({"m": [None, np.nan, pd.NaT, "x", 3]}, dtype=object)
    column = convert.normalize(frame)["m"]
    assert column.tolist() == [None, None, None, "x", "3"]


def test_normalize_leaves_the_input_alone() -> None:
    frame = pd.DataFrame({"d": pd.to_datetime(["2024-01-02"])}, index=[5])
    convert.normalize(frame)
    assert frame.index.tolist() == [5]
    assert pd.api.types.is_datetime64_any_dtype(frame["d"])


# --- to_frames: every return type: (returned value, expected frames) -----------------------

FRAME = pd.DataFrame({"x": [1, 2]})
OTHER = pd.DataFrame({"y": ["a"]})

RETURN_CASES: dict[str, tuple[Any, list[Any]]] = {
    "None": (None, []),
    "DataFrame": (FRAME, [FRAME]),
    "tuple of two": ((FRAME, OTHER), [FRAME, OTHER]),
    "tuple of three: first two": ((FRAME, OTHER, FRAME), [FRAME, OTHER]),
    "tuple of one": ((FRAME,), [FRAME]),
    "tuple with None": ((None, OTHER), [pd.DataFrame(), OTHER]),
    "tuple of values converted alone": (
        ({"a": [1]}, [3, 4]),
        [pd.DataFrame({"a": [1]}), pd.DataFrame({"column": [3, 4]})],
    ),
    "list of frames": ([FRAME, OTHER], [FRAME, OTHER]),
    "dict": ({"a": [1, 2], "b": ["x", "y"]}, [pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})]),
    "dict of scalars: one row": ({"a": 1, "b": "x"}, [pd.DataFrame({"a": [1], "b": ["x"]})]),
    "1-D ndarray": (np.array([1.5, 2.5]), [pd.DataFrame({"column": [1.5, 2.5]})]),
    "2-D ndarray": (
        np.array([[1, 2, 3], [4, 5, 6]]),
        [pd.DataFrame({"column_0": [1, 4], "column_1": [2, 5], "column_2": [3, 6]})],
    ),
    "list": ([1, 2, 3], [pd.DataFrame({"column": [1, 2, 3]})]),
    "Series": (pd.Series([5, 6], index=[9, 8], name="s"), [pd.DataFrame({"column": [5, 6]})]),
    "int": (3, [pd.DataFrame({"column": [3]})]),
    "float": (2.5, [pd.DataFrame({"column": [2.5]})]),
    "str": ("hi", [pd.DataFrame({"column": ["hi"]})]),
    "bool": (True, [pd.DataFrame({"column": [True]})]),
    "numpy scalar": (np.int32(7), [pd.DataFrame({"column": [7]})]),
}


@pytest.mark.parametrize(("value", "expected"), RETURN_CASES.values(), ids=RETURN_CASES)
def test_to_frames(value: Any, expected: list[Any]) -> None:
    frames = convert.to_frames(value)
    assert len(frames) == len(expected)
    for frame, want in zip(frames, expected, strict=True):
        pd.testing.assert_frame_equal(
            convert.normalize(frame), want, check_dtype=False, check_column_type=False
        )


def _function() -> None:
    pass


class Custom:
    pass


BAD_RETURNS = {
    "set": ({1, 2}, "Unsupported return type: set"),
    "object": (object(), "Unsupported return type: object"),
    "instance": (Custom(), "Unsupported return type: Custom"),
    "function": (_function, "Unsupported return type: function"),
    "3-D ndarray": (np.zeros((2, 2, 2)), "Unsupported return type: ndarray with 3 dimensions"),
    "set inside a tuple": ((FRAME, {1}), "Unsupported return type: set"),
}


@pytest.mark.parametrize(("value", "message"), BAD_RETURNS.values(), ids=BAD_RETURNS)
def test_unsupported_return_types(value: Any, message: str) -> None:
    with pytest.raises(ScriptError) as caught:
        convert.to_frames(value)
    assert str(caught.value).startswith(message)
    assert caught.value.exception == "TypeError"


def test_a_dict_pandas_cannot_take_is_a_script_error() -> None:
    with pytest.raises(ScriptError, match="Cannot convert the returned dict") as caught:
        convert.to_frames({"a": [1, 2], "b": [1]})
    assert caught.value.exception == "ValueError"


# --- reading inputs, writing outputs -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".tab", ".CSV"])
def test_read_input_text(tmp_path: Path, suffix: str) -> None:
    sep = "\t" if suffix in (".tsv", ".tab") else ","
    path = tmp_path / f"table{suffix}"
    rows = [["n", "s", "t"], ["1", "a", "NA"], ["", "", "b"], ["3", "c", ""]]
    path.write_text("\n".join(sep.join(row) for row in rows) + "\n")
    frame = convert.read_input(path)
    assert frame.columns.tolist() == ["n", "s", "t"]
    assert frame["n"].isna().tolist() == [False, True, False]  # empty field -> missing
    assert frame["s"].isna().tolist() == [False, True, False]
    assert frame["t"].tolist()[:2] == ["NA", "b"]  # only empty fields are missing
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame.index.dtype == np.int64


def test_read_input_parquet_gets_a_fresh_index(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    pd.DataFrame({"x": [1, 2]}, index=[10, 20]).to_parquet(path)  # index stored
    frame = convert.read_input(path)
    pd.testing.assert_frame_equal(frame, pd.DataFrame({"x": [1, 2]}))
    assert convert.read_input(convert.frame_to_parquet(frame, tmp_path / "t.pq")).shape == (2, 1)


def test_read_input_bad_suffix(tmp_path: Path) -> None:
    path = tmp_path / "table.xlsx"
    path.write_bytes(b"")
    with pytest.raises(SpecError, match=r"'\.xlsx'.*\.csv, \.tsv, \.tab, \.parquet, \.pq"):
        convert.read_input(path)


def cells(column: Any) -> list[Any]:
    """A column's values, every missing one as None (pandas 3 reads missing strings as NaN)."""
    return [None if pd.isna(value) else value for value in column]


def test_write_output_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "n": [1, 2, 3],
            "f": [0.5, None, 1.5],
            "s": ["a", None, "c"],
            "b": [True, False, True],
            "d": pd.to_datetime(["2024-01-01", None, "2024-01-03"]),
        },
        index=[4, 5, 6],
    )
    frame.columns = ["n", "f", "s", "b", "n"]
    out = convert.normalize(frame)
    path = convert.write_output(out, tmp_path / "out", 2, csv=True)
    assert path == tmp_path / "out" / "output2.parquet"
    back = convert.read_parquet(path)
    assert back.columns.tolist() == ["n", "f", "s", "b", "n (2)"]
    assert {name: cells(back[name]) for name in back} == {name: cells(out[name]) for name in out}
    assert cells(back["n (2)"]) == ["2024-01-01 00:00:00", None, "2024-01-03 00:00:00"]
    text = convert.read_input(tmp_path / "out" / "output2.csv")
    assert text.columns.tolist() == ["n", "f", "s", "b", "n (2)"]
    assert text["s"].isna().tolist() == [False, True, False]


def test_write_output_without_csv(tmp_path: Path) -> None:
    convert.write_output(pd.DataFrame({"x": [1]}), tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output1.parquet"]
