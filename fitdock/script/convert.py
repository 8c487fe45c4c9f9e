"""DataFrames in and out of an ``azureml_main`` script, the seed's way.

Inputs (CSV, TSV or Parquet) arrive with a fresh 0..n-1 int64 index; whatever the script
returns becomes 0, 1 or 2 DataFrames (:func:`to_frames`), each normalized
(:func:`normalize`) before it is written as Parquet (:func:`write_output`).

Used on the job side (inside the script's own environment) and on the submitting side:
pandas, NumPy and pyarrow are imported inside the functions, never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

from fitdock.errors import ScriptError, SpecError

Frame: TypeAlias = Any
"""A ``pandas.DataFrame`` (pandas is imported lazily and ships no type stubs)."""

CSV_SUFFIXES = (".csv",)
TSV_SUFFIXES = (".tsv", ".tab")
PARQUET_SUFFIXES = (".parquet", ".pq")
INPUT_SUFFIXES = CSV_SUFFIXES + TSV_SUFFIXES + PARQUET_SUFFIXES

# infer_dtype() kinds of an object column that pass through unchanged (strings, numbers,
# booleans); every other kind (mixed, datetime, bytes, decimal, ...) is converted with str.
_PASSING_OBJECT_KINDS = frozenset(
    {"string", "empty", "integer", "floating", "mixed-integer-float", "boolean"}
)


def read_input(path: Path) -> Frame:
    """Read one input table by its suffix: CSV (``.csv``), TSV (``.tsv``, ``.tab``) or
    Parquet (``.parquet``, ``.pq``). Empty CSV/TSV fields arrive missing (NaN); other text,
    ``NA`` included, stays as written. The frame gets a fresh 0..n-1 index."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return read_parquet(path)
    if suffix in CSV_SUFFIXES + TSV_SUFFIXES:
        sep = "," if suffix in CSV_SUFFIXES else "\t"
        df = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=[""])
        return fresh_index(df)
    accepted = ", ".join(INPUT_SUFFIXES)
    raise SpecError(
        f"cannot read the input {path.name!r}: its suffix {path.suffix!r} is not one of "
        f"{accepted}; save the table as CSV, TSV or Parquet",
        field="inputs",
    )


def read_parquet(path: Path) -> Frame:
    """Read a Parquet file (pyarrow) with a fresh 0..n-1 index."""
    import pandas as pd

    # no reader threads: pyarrow < 22 may abort the process at exit after a threaded read
    return fresh_index(pd.read_parquet(path, engine="pyarrow", use_threads=False))


def frame_to_parquet(df: Frame, path: Path) -> Path:
    """Write ``df`` as Parquet (pyarrow) without its index; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, engine="pyarrow", index=False)
    return path


def fresh_index(df: Frame) -> Frame:
    """A copy of ``df`` whose index is a fresh 0..n-1 int64 ``RangeIndex`` (the seed does
    not support the pandas index)."""
    import pandas as pd

    out = df.copy()
    out.index = pd.RangeIndex(len(out))
    return out


def to_frames(value: Any) -> list[Frame]:
    """What ``azureml_main`` returned, as 0, 1 or 2 DataFrames.

    ``None`` gives none and a DataFrame itself. A tuple, or a list of DataFrames (or
    ``None``), gives outputs 1 and 2 from its first two elements, each converted alone
    (``None`` -> an empty DataFrame). Any other value is converted alone: a dict ->
    ``DataFrame(dict)`` (all scalars: one row); a 1-D array -> column ``column``, a 2-D
    array -> ``column_0..k``; a list or Series -> column ``column``; a scalar -> one row.
    Anything else raises :class:`ScriptError` ("Unsupported return type: ...").
    """
    import pandas as pd

    if value is None:
        return []
    if isinstance(value, pd.DataFrame):
        return [value]
    if isinstance(value, tuple) or (
        isinstance(value, list) and all(v is None or isinstance(v, pd.DataFrame) for v in value)
    ):
        return [_one_frame(v) for v in value[:2]]
    return [_one_frame(value)]


def _one_frame(value: Any) -> Frame:
    """One returned value as one DataFrame (the single-value rules of :func:`to_frames`)."""
    import numpy as np
    import pandas as pd

    if value is None:
        return pd.DataFrame()
    if isinstance(value, pd.DataFrame):
        return value
    if isinstance(value, dict):
        return _dict_frame(value)
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return pd.DataFrame({"column": [value.item()]})
        if value.ndim == 1:
            return pd.DataFrame({"column": value})
        if value.ndim == 2:
            return pd.DataFrame(value, columns=[f"column_{i}" for i in range(value.shape[1])])
        raise _unsupported(value, f" with {value.ndim} dimensions", "return a 1-D or 2-D array")
    if isinstance(value, pd.Series):
        return pd.DataFrame({"column": value.reset_index(drop=True)})
    if isinstance(value, (list, tuple)):
        return pd.DataFrame({"column": list(value)})
    if isinstance(value, (bool, int, float, str, np.generic)):
        return pd.DataFrame({"column": [value]})
    raise _unsupported(value)


def _dict_frame(value: dict[Any, Any]) -> Frame:
    import pandas as pd

    try:
        if value and all(pd.api.types.is_scalar(v) for v in value.values()):
            return pd.DataFrame([value])
        return pd.DataFrame(value)
    except (ValueError, TypeError) as exc:
        raise ScriptError(
            f"Cannot convert the returned dict to a DataFrame: {exc}",
            exception=type(exc).__name__,
        ) from exc


_RETURN_HINT = (
    "return a DataFrame or a tuple of up to two; a dict, list, NumPy array, Series or "
    "scalar is converted"
)


def _unsupported(value: Any, detail: str = "", hint: str = _RETURN_HINT) -> ScriptError:
    return ScriptError(
        f"Unsupported return type: {type(value).__name__}{detail} ({hint})",
        exception="TypeError",
    )


def normalize(df: Frame) -> Frame:
    """An output as the seed writes it: a fresh 0..n-1 index; column names as strings,
    duplicates made unique as ``a``, ``a (2)``, ``a (3)``; columns that are neither
    numeric, boolean nor string converted with ``str``, missing values kept missing
    (``None``). Datetime, timedelta, categorical, complex and mixed-type columns count as
    "other" and become strings."""
    out = fresh_index(df)
    out.columns = unique_names([str(name) for name in out.columns])
    for name in out.columns:
        if _is_other(out[name]):
            out[name] = _as_strings(out[name])
    return out


def unique_names(names: list[str]) -> list[str]:
    """The seed's renaming of duplicate column names: the first ``a`` stays, the next ones
    become ``a (2)``, ``a (3)``, ... skipping any name already taken."""
    taken = set(names)
    used: set[str] = set()
    next_number: dict[str, int] = {}
    out = []
    for name in names:
        if name in used:
            number = next_number.get(name, 2)
            while f"{name} ({number})" in taken or f"{name} ({number})" in used:
                number += 1
            next_number[name] = number + 1
            name = f"{name} ({number})"
        used.add(name)
        out.append(name)
    return out


def _is_other(column: Any) -> bool:
    """Whether a column is neither numeric, boolean nor string."""
    from pandas.api import types

    dtype = column.dtype
    if types.is_object_dtype(dtype):
        return types.infer_dtype(column, skipna=True) not in _PASSING_OBJECT_KINDS
    if types.is_bool_dtype(dtype) or types.is_string_dtype(dtype):
        return False
    return not types.is_numeric_dtype(dtype) or types.is_complex_dtype(dtype)


def _as_strings(column: Any) -> Any:
    """``str`` of every value, missing values kept missing (``None``)."""
    import pandas as pd

    def convert(value: Any) -> Any:
        if pd.api.types.is_scalar(value) and pd.isna(value):
            return None
        return str(value)

    return pd.Series([convert(v) for v in column], index=column.index, dtype=object)


def write_output(df: Frame, folder: Path, number: int, csv: bool = False) -> Path:
    """Write output ``number`` (1 or 2) as ``output<number>.parquet`` in ``folder`` (and as
    ``output<number>.csv`` too when ``csv``); return the Parquet path. ``df`` is written as
    given: pass it through :func:`normalize` first."""
    path = frame_to_parquet(df, folder / f"output{number}.parquet")
    if csv:
        df.to_csv(folder / f"output{number}.csv", index=False)
    return path
