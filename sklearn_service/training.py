"""Training: the seeded pipeline for each model kind, fitted on a Dataset, with holdout metrics and the
metadata the model is stored with (model_store.py). Reading a CSV into a Dataset is csv_data.py's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from sklearn_service.csv_data import Dataset
from sklearn_service.model_store import TrainingResult, data_hash, holdout_metrics, reference_sample, versions
from sklearn_service.signature import Signature
from sklearn_service.user_input import DataError

# the test fixtures and the benchmark import these two from here
from sklearn_service.csv_data import load_csv_dataset  # noqa: F401
from sklearn_service.model_store import save_result  # noqa: F401

MODEL_KINDS = ("random_forest", "logistic_regression", "gradient_boosting", "hist_gradient_boosting")
REFERENCE_ROWS = 5000           # training rows kept with the model for drift reports
REFERENCE_FILE = "reference.csv"
TARGET_COLUMN = "__target__"
TASKS = ("classification", "regression")


def load_default_dataset() -> Dataset:
    """Breast-cancer data shipped inside scikit-learn: 569 rows, 30 features, nothing downloaded."""
    bunch = load_breast_cancer(as_frame=True)
    return Dataset(bunch.data, bunch.target, "sklearn.datasets.load_breast_cancer",
                   {str(c): "number" for c in bunch.data.columns})


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


def build_pipeline(kind: str, task: str, seed: int, numeric: Sequence[str] = (),
                   categorical: Sequence[str] = ()) -> Pipeline:
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
            ("num", "passthrough", list(numeric)),
            ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                   encoded_missing_value=np.nan), list(categorical))])
        at = list(range(len(numeric), len(numeric) + len(categorical)))
        return Pipeline([("prepare", prepare), ("model", _estimator(kind, task, seed, at))])
    categories = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                           ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    prepare = ColumnTransformer([("num", Pipeline(number_steps), list(numeric)),
                                 ("cat", categories, list(categorical))])
    return Pipeline([("prepare", prepare), ("model", _estimator(kind, task, seed))])


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


