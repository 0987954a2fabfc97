"""Training: data loading and checks, the seeded pipeline, holdout metrics, saving to the store."""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from sklearn_service.signature import Signature, infer_kind
from sklearn_service.user_input import MAX_HEADER_BYTES, Limits, name_problem, shown, shown_list

MIN_ROWS = 10
MODEL_KINDS = ("random_forest", "logistic_regression", "gradient_boosting", "hist_gradient_boosting")
REFERENCE_ROWS = 5000           # training rows kept with the model for drift reports
REFERENCE_FILE = "reference.csv"
TARGET_COLUMN = "__target__"
TASKS = ("classification", "regression")


class DataError(ValueError):
    """The training data cannot be used; the message says why in one line."""


@dataclass
class Dataset:
    X: pd.DataFrame  # as the model is fitted on it: numbers float64, categories object (str) with NaN
    y: pd.Series
    source: str
    kinds: dict[str, str] = field(default_factory=dict)  # feature -> number / integer / boolean / category
    warnings: list[str] = field(default_factory=list)

    @property
    def categorical(self) -> list[str]:
        return [c for c in self.X.columns if self.kinds.get(c) == "category"]


def load_default_dataset() -> Dataset:
    """Breast-cancer data shipped inside scikit-learn: 569 rows, 30 features, nothing downloaded."""
    bunch = load_breast_cancer(as_frame=True)
    return Dataset(bunch.data, bunch.target, "sklearn.datasets.load_breast_cancer",
                   {str(c): "number" for c in bunch.data.columns})


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


def prepare_features(features: pd.DataFrame, categorical: list[str] = ()) -> tuple[pd.DataFrame, dict, list]:
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


def load_csv_dataset(path: str | Path, target: str, categorical: list[str] = (), drop: list[str] = (),
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


def infer_task(y: pd.Series) -> str:
    """Text, booleans and whole numbers with few distinct values are classes; anything else is regression."""
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    whole = np.all(np.mod(y.to_numpy(dtype=float), 1) == 0)
    return "classification" if whole and y.nunique() <= 20 else "regression"


def _estimator(kind: str, task: str, seed: int, categorical_at: list[int] | None = None):
    classify = task == "classification"
    if kind == "random_forest":
        return (RandomForestClassifier if classify else RandomForestRegressor)(n_estimators=100, random_state=seed)
    if kind == "logistic_regression":
        return LogisticRegression(max_iter=5000, random_state=seed) if classify else Ridge(random_state=seed)
    if kind == "gradient_boosting":
        return (GradientBoostingClassifier if classify else GradientBoostingRegressor)(random_state=seed)
    return (HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor)(
        categorical_features=categorical_at or None, random_state=seed)


def build_pipeline(kind: str, task: str, seed: int, numeric: list[str] | None = None,
                   categorical: list[str] = ()) -> Pipeline:
    """Numbers: median imputation (and scaling for linear models). With categories (a DataFrame
    pipeline): most-frequent imputation and one-hot encoding that ignores unseen values, or for
    HistGradientBoosting its native categorical support on ordinal codes (unseen = missing)."""
    number_steps = [("impute", SimpleImputer(strategy="median"))]
    if kind == "logistic_regression":
        number_steps.append(("scale", StandardScaler()))
    if not categorical:
        if kind == "hist_gradient_boosting":  # handles missing values itself
            return Pipeline([("model", _estimator(kind, task, seed))])
        return Pipeline([*number_steps, ("model", _estimator(kind, task, seed))])
    if kind == "hist_gradient_boosting":
        prepare = ColumnTransformer([
            ("num", "passthrough", numeric),
            ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                   encoded_missing_value=np.nan), list(categorical))])
        at = list(range(len(numeric), len(numeric) + len(categorical)))
        return Pipeline([("prepare", prepare), ("model", _estimator(kind, task, seed, at))])
    categories = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                           ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    prepare = ColumnTransformer([("num", Pipeline(number_steps), numeric), ("cat", categories, list(categorical))])
    return Pipeline([("prepare", prepare), ("model", _estimator(kind, task, seed))])


def holdout_metrics(model, X, y, task: str) -> dict[str, float]:
    predicted = model.predict(X)
    if task == "regression":
        return {"r2": float(r2_score(y, predicted)), "mae": float(mean_absolute_error(y, predicted))}
    metrics = {"accuracy": float(accuracy_score(y, predicted)),
               "f1_macro": float(f1_score(y, predicted, average="macro"))}
    if not hasattr(model, "predict_proba"):
        return metrics
    proba, classes = model.predict_proba(X), list(model.classes_)
    if len(classes) == 2 and len(set(y)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(np.asarray(y) == classes[1], proba[:, 1]))
    elif len(set(y)) == len(classes) > 2:
        metrics["roc_auc_ovr"] = float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    return metrics


def data_hash(X: pd.DataFrame, y: pd.Series) -> str:
    digest = hashlib.sha256()
    digest.update(",".join(map(str, X.columns)).encode())
    digest.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(y, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def reference_sample(X: pd.DataFrame, y=None, seed: int = 0) -> pd.DataFrame:
    """A size-capped sample of the training rows, stored with the model for drift reports."""
    frame = X if y is None else X.assign(**{TARGET_COLUMN: np.asarray(y)})
    return frame.sample(n=min(len(frame), REFERENCE_ROWS), random_state=seed)


@dataclass
class TrainingResult:
    pipeline: Pipeline
    metadata: dict
    reference: pd.DataFrame | None = None

    @property
    def signature(self) -> Signature:
        return Signature.from_metadata(self.metadata)


def train(data: Dataset, kind: str = "random_forest", task: str = "auto",
          seed: int = 42, test_size: float = 0.2) -> TrainingResult:
    task = infer_task(data.y) if task == "auto" else task
    if task == "classification":
        counts = data.y.value_counts()
        if len(counts) < 2:
            raise DataError(f"classification needs at least 2 classes; the target has {len(counts)}")
    elif not pd.api.types.is_numeric_dtype(data.y) or pd.api.types.is_bool_dtype(data.y):
        raise DataError("regression needs a numeric target column")
    stratify = data.y if task == "classification" and data.y.value_counts().min() >= 2 else None
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, data.y, test_size=test_size, random_state=seed, stratify=stratify)
    categorical = data.categorical
    numeric = [c for c in data.X.columns if c not in categorical]
    pipeline = build_pipeline(kind, task, seed, numeric, categorical)
    # numbers only: fitted on arrays, the runner's fast path; with categories: on the DataFrame
    as_input = (lambda frame: frame) if categorical else (lambda frame: frame.to_numpy())
    pipeline.fit(as_input(X_train), y_train.to_numpy())
    classes = getattr(pipeline, "classes_", None)
    signature = Signature.from_frame(X_train, task, classes, takes_frame=bool(categorical),
                                     kinds=data.kinds, y=y_train)
    metadata = {
        "task": task,
        "model_kind": kind,
        "signature": signature.to_metadata(),
        "holdout_metrics": holdout_metrics(pipeline, as_input(X_test), y_test.to_numpy(), task),
        "training": {"source": data.source, "rows": len(data.X), "train_rows": len(X_train),
                     "test_rows": len(X_test), "seed": seed, "test_size": test_size,
                     "data_hash": data_hash(data.X, data.y),
                     "params": {k: repr(v) for k, v in pipeline.named_steps["model"].get_params().items()}},
        "versions": versions(),
    }
    return TrainingResult(pipeline, metadata, reference_sample(X_train, y_train, seed))


def save_to_store(model, metadata: dict, name: str, reference: pd.DataFrame | None = None, labels: dict | None = None):
    """Saves into the BentoML model store (BENTOML_HOME); batchable along rows for the runner.
    The reference sample goes into the model's own folder; on any failure nothing stays behind."""
    import bentoml

    signatures = {method: {"batchable": True, "batch_dim": 0} for method in ("predict", "predict_proba")
                  if hasattr(model, method)}
    saved = bentoml.sklearn.save_model(
        name, model, signatures=signatures, metadata=metadata,
        labels={"task": metadata["task"], "kind": metadata["model_kind"], **(labels or {})})
    stored = bentoml.models.get(saved.tag)  # `saved` still points at the temporary folder it was built in
    try:
        if reference is not None:
            reference.to_csv(Path(stored.path) / REFERENCE_FILE, index=False)
    except BaseException:
        bentoml.models.delete(saved.tag)
        raise
    return stored


def save_result(result: TrainingResult, name: str):
    return save_to_store(result.pipeline, result.metadata, name, result.reference)
