"""Training: data loading and checks, the seeded pipeline, holdout metrics, saving to the store."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MIN_ROWS = 10
MODEL_KINDS = ("random_forest", "logistic_regression", "gradient_boosting")
TASKS = ("classification", "regression")


class DataError(ValueError):
    """The training data cannot be used; the message says why in one line."""


@dataclass
class Dataset:
    X: pd.DataFrame
    y: pd.Series
    source: str
    class_names: list[str] | None = None  # set for classification once labels are encoded


def load_default_dataset() -> Dataset:
    """Breast-cancer data shipped inside scikit-learn: 569 rows, 30 features, nothing downloaded."""
    bunch = load_breast_cancer(as_frame=True)
    return Dataset(bunch.data, bunch.target, "sklearn.datasets.load_breast_cancer",
                   [str(name) for name in bunch.target_names])


def load_csv_dataset(path: str | Path, target: str) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file is empty: {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"data file is not valid CSV: {path} ({exc})") from None
    if target not in frame.columns:
        raise DataError(f"target column {target!r} not in {path}; columns are {list(frame.columns)}")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{path} has no feature columns besides the target {target!r}")
    non_numeric = [col for col in features.columns if not pd.api.types.is_numeric_dtype(features[col])]
    if non_numeric:
        raise DataError(f"feature columns must be numeric; not numeric: {non_numeric}")
    if frame[target].isna().any():
        raise DataError(f"target column {target!r} has {int(frame[target].isna().sum())} missing value(s)")
    if len(frame) < MIN_ROWS:
        raise DataError(f"{path} has {len(frame)} rows; at least {MIN_ROWS} are needed")
    return Dataset(features.astype("float64"), frame[target], str(path))


def infer_task(y: pd.Series) -> str:
    """Text, booleans and whole numbers with few distinct values are classes; anything else is regression."""
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return "classification"
    whole = np.all(np.mod(y.to_numpy(dtype=float), 1) == 0)
    return "classification" if whole and y.nunique() <= 20 else "regression"


def encode_classes(data: Dataset) -> Dataset:
    """Train on class indices 0..K-1 so a prediction is a float, as the API promises; keep the names."""
    if data.class_names is not None:
        return data
    codes, uniques = pd.factorize(data.y, sort=True)
    if len(uniques) < 2:
        raise DataError(f"classification needs at least 2 classes; the target has {len(uniques)}")
    return Dataset(data.X, pd.Series(codes, index=data.y.index), data.source, [str(u) for u in uniques])


def build_pipeline(kind: str, task: str, seed: int) -> Pipeline:
    models = {
        ("random_forest", "classification"): lambda: RandomForestClassifier(n_estimators=100, random_state=seed),
        ("random_forest", "regression"): lambda: RandomForestRegressor(n_estimators=100, random_state=seed),
        ("logistic_regression", "classification"): lambda: LogisticRegression(max_iter=5000, random_state=seed),
        ("logistic_regression", "regression"): lambda: Ridge(random_state=seed),
        ("gradient_boosting", "classification"): lambda: GradientBoostingClassifier(random_state=seed),
        ("gradient_boosting", "regression"): lambda: GradientBoostingRegressor(random_state=seed),
    }
    steps = [("impute", SimpleImputer(strategy="median"))]
    if kind == "logistic_regression":
        steps.append(("scale", StandardScaler()))
    steps.append(("model", models[kind, task]()))
    return Pipeline(steps)


def holdout_metrics(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, task: str) -> dict[str, float]:
    predicted = pipeline.predict(X)
    if task == "regression":
        return {"r2": float(r2_score(y, predicted)), "mae": float(mean_absolute_error(y, predicted))}
    metrics = {"accuracy": float(accuracy_score(y, predicted)),
               "f1_macro": float(f1_score(y, predicted, average="macro"))}
    proba = pipeline.predict_proba(X)
    if len(pipeline.classes_) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y, proba[:, 1]))
    elif len(np.unique(y)) == len(pipeline.classes_):
        metrics["roc_auc_ovr"] = float(roc_auc_score(y, proba, multi_class="ovr"))
    return metrics


def feature_statistics(X: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per-feature range and moments of the training data, kept for drift checks at serving time."""
    stats = X.agg(["min", "max", "mean", "std"]).fillna(0.0)
    return {str(col): {k: float(v) for k, v in stats[col].items()} for col in X.columns}


def data_hash(X: pd.DataFrame, y: pd.Series) -> str:
    digest = hashlib.sha256()
    digest.update(",".join(map(str, X.columns)).encode())
    digest.update(np.ascontiguousarray(X.to_numpy(dtype=float)).tobytes())
    digest.update(np.ascontiguousarray(y.to_numpy()).astype(str).astype(bytes).tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass
class TrainingResult:
    pipeline: Pipeline
    metadata: dict


def train(data: Dataset, kind: str = "random_forest", task: str = "auto",
          seed: int = 42, test_size: float = 0.2) -> TrainingResult:
    task = infer_task(data.y) if task == "auto" else task
    if task == "classification":
        data = encode_classes(data)
    elif not pd.api.types.is_numeric_dtype(data.y):
        raise DataError("regression needs a numeric target column")
    stratify = data.y if task == "classification" and data.y.value_counts().min() >= 2 else None
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, data.y, test_size=test_size, random_state=seed, stratify=stratify)
    # Fit on plain arrays: the runner receives arrays, and names live in the metadata.
    pipeline = build_pipeline(kind, task, seed).fit(X_train.to_numpy(), y_train.to_numpy())
    metadata = {
        "task": task,
        "model_kind": kind,
        "feature_names": [str(c) for c in data.X.columns],
        "class_names": data.class_names if task == "classification" else None,
        # regressors: deciles of the training target, the buckets of the predicted-value histogram
        "target_quantiles": (np.unique(np.quantile(y_train, np.linspace(0, 1, 11))).tolist()
                             if task == "regression" else None),
        "holdout_metrics": holdout_metrics(pipeline, X_test.to_numpy(), y_test.to_numpy(), task),
        "feature_stats": feature_statistics(X_train),
        "training": {"source": data.source, "rows": len(data.X), "train_rows": len(X_train),
                     "test_rows": len(X_test), "seed": seed, "test_size": test_size,
                     "data_hash": data_hash(data.X, data.y),
                     "params": {k: repr(v) for k, v in pipeline.named_steps["model"].get_params().items()}},
        "versions": {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__, "pandas": pd.__version__},
    }
    # the model store refuses None: a key that does not apply to the task is left out
    return TrainingResult(pipeline, {k: v for k, v in metadata.items() if v is not None})


def save_to_store(result: TrainingResult, name: str):
    """Saves into the BentoML model store (BENTOML_HOME); batchable along rows for the runner."""
    import bentoml

    signatures = {method: {"batchable": True, "batch_dim": 0} for method in ("predict", "predict_proba")}
    if result.metadata["task"] == "regression":
        del signatures["predict_proba"]
    return bentoml.sklearn.save_model(
        name, result.pipeline, signatures=signatures, metadata=result.metadata,
        labels={"task": result.metadata["task"], "kind": result.metadata["model_kind"]})
