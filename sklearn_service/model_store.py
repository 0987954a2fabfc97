"""The BentoML model store: a fitted model saved with its metadata (signature, holdout metrics, where
it came from, library versions) and a sample of its training rows for drift reports; and a stored
model's signature read back. Shared by training and the model import.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sklearn_service.signature import Signature

REFERENCE_ROWS = 5000           # training rows kept with the model for drift reports
REFERENCE_FILE = "reference.csv"
TARGET_COLUMN = "__target__"


def holdout_metrics(model, X, y, task: str) -> dict[str, float]:
    """Scores on rows the model was not fitted on (with an imported model: its reference data)."""
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score

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
    import sklearn

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def reference_sample(X: pd.DataFrame, y=None, seed: int = 0) -> pd.DataFrame:
    """A size-capped sample of the training rows, stored with the model for drift reports."""
    frame = X if y is None else X.assign(**{TARGET_COLUMN: np.asarray(y)})
    return frame.sample(n=min(len(frame), REFERENCE_ROWS), random_state=seed)


@dataclass
class TrainingResult:
    """A model ready for the store: the fitted estimator, its metadata, its reference sample."""
    pipeline: object
    metadata: dict
    reference: pd.DataFrame | None = None

    @property
    def signature(self) -> Signature:
        return Signature.from_dict(self.metadata["signature"])


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


def stored_signature(model) -> Signature:
    """A stored model's signature; for a model saved without one, inferred from the estimator (loaded once)."""
    found = Signature.from_metadata(model.info.metadata)
    if found is not None:
        return found
    import bentoml

    return Signature.from_estimator(bentoml.sklearn.load_model(model))
