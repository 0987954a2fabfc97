"""Reading a user's CSV file and preparing its columns as a model is fitted on them.

A CSV is read within the caps of user_input.py (columns; rows x columns held in memory), its
header checked as the file has it; every refusal is a DataError with one line. Feature columns
become float64 numbers or category text (`as_category`, also how the drift report compares logged
values with the training categories).
"""

from __future__ import annotations

import csv
import io
import lzma
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sklearn_service.profiling import infer_kind
from sklearn_service.user_input import MAX_HEADER_BYTES, DataError, Limits, name_problem, shown, shown_list

MIN_ROWS = 10


@dataclass
class Dataset:
    """Training data: the features as the model is fitted on them, the target, where they came from."""
    X: pd.DataFrame  # as the model is fitted on it: numbers float64, categories object (str) with NaN
    y: pd.Series
    source: str
    kinds: dict[str, str] = field(default_factory=dict)  # feature -> number / integer / boolean / category
    warnings: list[str] = field(default_factory=list)

    @property
    def categorical(self) -> list[str]:
        return [c for c in self.X.columns if self.kinds.get(c) == "category"]


def _header(path: Path, limits: Limits) -> list[str]:
    """The header row's names as the file has them (before pandas renames a repeated `a` to `a.1`).
    Read through the decompression pandas infers from the suffix (.gz, .bz2, .xz, .zip, .zst...),
    so a compressed file's header meets the same caps and checks as a plain one."""
    from pandas.io.common import get_handle

    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handles:
            head = handles.handle.read(MAX_HEADER_BYTES + 1)
    # a damaged archive, or .zst without the zstandard package
    except (OSError, EOFError, ValueError, ImportError, zipfile.BadZipFile, lzma.LZMAError) as exc:
        raise DataError(f"data file cannot be read: {shown(path)} ({type(exc).__name__}: {shown(exc)})") from None
    if len(head) > MAX_HEADER_BYTES and b"\n" not in head[:MAX_HEADER_BYTES]:
        raise DataError(f"the header line of {shown(path)} is longer than {MAX_HEADER_BYTES:,} bytes")
    try:
        text = head[:MAX_HEADER_BYTES].decode("utf-8-sig", errors="strict" if len(head) <= MAX_HEADER_BYTES
                                              else "ignore")
    except UnicodeDecodeError as exc:
        raise DataError(f"data file is not valid CSV: {shown(path)} ({shown(exc)})") from None
    try:
        names = next((row for row in csv.reader(io.StringIO(text)) if row), [])  # pandas skips blank lines
    except csv.Error as exc:  # e.g. a lone carriage return in the header line
        raise DataError(f"data file is not valid CSV: {shown(path)} (header line: {shown(exc)})") from None
    if len(names) > limits.max_columns:
        raise DataError(f"{shown(path)} has {len(names):,} columns; the cap is {limits.max_columns:,} (--max-columns)")
    if problem := name_problem(names, "column"):
        raise DataError(f"{shown(path)}: {problem}")
    return names


def read_csv(path: str | Path, limits: Limits = Limits()) -> pd.DataFrame:
    """A CSV with a header row; empty cells, NA, NaN, null (pandas' defaults) are missing values.
    Within the caps: columns, and rows x columns held in memory."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {shown(path)}")
    names = _header(path, limits)
    max_rows = max(1, limits.max_cells // max(1, len(names)))
    try:
        frame = pd.read_csv(path, nrows=max_rows + 1)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file is empty: {shown(path)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"data file is not valid CSV: {shown(path)} ({shown(str(exc).splitlines()[0])})") from None
    if len(frame) > max_rows:
        raise DataError(f"{shown(path)} has more than {max_rows:,} rows: {len(names):,} columns x {max_rows:,} rows "
                        f"is the cap of {limits.max_cells:,} cells (--max-cells)")
    return frame


def _columns(names, frame: pd.DataFrame, option: str) -> list[str]:
    unknown = [n for n in names if n not in frame.columns]
    if unknown:
        raise DataError(f"{option} names column(s) not in the data: {shown_list(unknown)}; "
                        f"columns are {shown_list(frame.columns)}")
    return list(names)


def as_category(column: pd.Series) -> pd.Series:
    """Category values as strings (3.0 read from a CSV with gaps is "3"), missing as NaN."""
    def text(value):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return column.map(text, na_action="ignore").astype(object).where(column.notna(), np.nan)


def prepare_features(features: pd.DataFrame, categorical: Sequence[str] = ()) -> tuple[pd.DataFrame, dict, list]:
    """Kinds per column, the frame as the model takes it, and warnings for people."""
    kinds = {str(c): "category" if c in categorical else infer_kind(features[c]) for c in features.columns}
    warnings, columns = [], {}
    for name, column in features.items():
        name = str(name)
        if column.isna().all():
            raise DataError(f"column {shown(name)} is empty: every value is missing (leave it out with --drop)")
        distinct = column.nunique()
        if len(column) >= 20 and distinct >= 0.95 * column.notna().sum() and kinds[name] in ("category", "integer"):
            warnings.append(f"column {shown(name)} looks like an identifier ({distinct} distinct values in "
                            f"{len(column)} rows); consider --drop")
        if kinds[name] == "category":
            columns[name] = as_category(column)
        elif kinds[name] == "boolean":
            columns[name] = column.map(float, na_action="ignore").astype("float64")
        else:
            columns[name] = pd.to_numeric(column).astype("float64")
    return pd.DataFrame(columns, index=features.index), kinds, warnings


def load_csv_dataset(path: str | Path, target: str, categorical: Sequence[str] = (), drop: Sequence[str] = (),
                     limits: Limits = Limits()) -> Dataset:
    frame = read_csv(path, limits)
    check_target(frame, target, path)
    drop = _columns(drop, frame, "--drop")
    categorical = _columns(categorical, frame, "--categorical")
    features = frame.drop(columns=[target, *drop])
    if features.shape[1] == 0:
        raise DataError(f"{shown(path)} has no feature columns besides the target {shown(target)}")
    if problem := name_problem(features.columns, "feature"):
        raise DataError(f"{shown(path)}: {problem}")
    if frame[target].isna().any():
        raise DataError(f"target column {shown(target)} has {int(frame[target].isna().sum())} missing value(s)")
    if len(frame) < MIN_ROWS:
        raise DataError(f"{shown(path)} has {len(frame)} rows; at least {MIN_ROWS} are needed")
    X, kinds, warnings = prepare_features(features, categorical)
    y = frame[target]
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        y = y.astype(object)  # labels as Python values: strings stay strings
    return Dataset(X, y, str(path), kinds, warnings)


def check_target(frame: pd.DataFrame, target: str, path) -> None:
    if target not in frame.columns:
        raise DataError(f"target column {shown(target)} not in {shown(path)}; columns are {shown_list(frame.columns)}")
