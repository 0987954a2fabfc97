"""Bring your own model: an already fitted scikit-learn estimator or Pipeline into the store.

`.skops` files load with skops.io, which refuses types it does not trust. `.joblib`
and `.pkl` files are pickles: loading one runs whatever code it holds, so they load
only when the user says they trust the file. The signature comes from the estimator
and, when given, from reference data, on which the model must predict before
anything is saved.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sklearn

from sklearn_service import skops_load
from sklearn_service.category_codes import UNSEEN_LABEL
from sklearn_service.csv_data import check_target, read_csv
from sklearn_service.model_requirements import missing_module, required_libraries, values_per_row
from sklearn_service.model_store import TrainingResult, holdout_metrics, reference_sample, versions
from sklearn_service.profiling import infer_kind
from sklearn_service.signature import Signature
from sklearn_service.user_input import DataError, Limits, name_problem, shown, shown_list

SAFE_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _load_pickle(path: Path, trust_pickle: bool):
    if not trust_pickle:
        raise DataError(f"refusing to load {shown(path.name)}: a .joblib/.pkl file runs any code it holds when loaded; "
                        "pass --trust-pickle only if you trust its source (or save it with skops.io.dump as .skops)")
    import joblib

    try:
        return joblib.load(path)
    except ModuleNotFoundError as exc:
        raise DataError(missing_module(shown(path.name), exc)) from None
    except Exception as exc:
        raise DataError(f"{shown(path.name)} could not be loaded as a pickle ({type(exc).__name__}: {shown(exc)})") \
            from None


def load_model_file(path: str | Path, trust_pickle: bool = False, trust_types: Sequence[str] = (),
                    max_bytes: int = Limits.max_model_bytes) -> tuple[Any, str]:
    """The model (whatever the file holds: check_estimator() says whether it is one) and the
    scikit-learn version it was made with."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {shown(path)}")
    suffix = path.suffix.lower()
    if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
        raise DataError(f"{shown(path.name)} is neither a .skops nor a .joblib/.pkl file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sklearn.exceptions.InconsistentVersionWarning)
        model = skops_load.load(path, trust_types, max_bytes) if suffix in SAFE_SUFFIXES else \
            _load_pickle(path, trust_pickle)
    made_with = next((str(w.message.original_sklearn_version) for w in caught
                      if isinstance(w.message, sklearn.exceptions.InconsistentVersionWarning)), sklearn.__version__)
    return model, made_with


def check_estimator(model) -> str:
    """The task of a fitted scikit-learn estimator, or a DataError saying what it is instead."""
    from sklearn.base import BaseEstimator, is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(model, BaseEstimator) or not hasattr(model, "predict"):
        raise DataError(f"not a scikit-learn estimator: the file holds a {shown(type(model).__module__)}."
                        f"{shown(type(model).__qualname__)}")
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise DataError(f"the {shown(type(model).__name__)} in the file is not fitted: fit it before saving") from None
    names = getattr(model, "feature_names_in_", None)
    if names is not None and (problem := name_problem(names, "feature")):
        raise DataError(f"the model's {problem}")
    if is_classifier(model) or (not is_regressor(model) and hasattr(model, "classes_")):
        return "classification"
    return "regression"


def _reference_frame(model, frame: pd.DataFrame, path) -> pd.DataFrame:
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        names = [str(n) for n in names]
        missing = [n for n in names if n not in frame.columns]
        extra = [c for c in frame.columns if c not in names]
        if missing or extra:
            raise DataError(f"reference columns in {shown(path)} do not match the model's features: "
                            f"missing {shown_list(missing)}, not used by the model {shown_list(extra)}")
        return frame[names]
    if frame.shape[1] != model.n_features_in_:
        raise DataError(f"reference data {shown(path)} has {frame.shape[1]} feature columns; "
                        f"the model was fitted on {model.n_features_in_}")
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise DataError(f"the model was fitted on an array of numbers; reference columns not numeric: "
                        f"{shown_list(text)}")
    return frame.astype("float64")


def _model_input(model, X: pd.DataFrame):
    return X if hasattr(model, "feature_names_in_") else X.to_numpy()


def _refuses_unseen(model, X: pd.DataFrame, column: str) -> bool:
    probe = X.iloc[:1].copy()
    probe[column] = pd.Series([UNSEEN_LABEL], index=probe.index, dtype=object)
    try:
        model.predict(probe)
    except Exception:
        return True
    return False


def import_model(path: str | Path, trust_pickle: bool = False, reference: str | Path | None = None,
                 target: str | None = None, trust_types: Sequence[str] = (),
                 limits: Limits = Limits()) -> tuple[TrainingResult, list[str]]:
    path = Path(path)
    model, made_with = load_model_file(path, trust_pickle, trust_types, limits.max_model_bytes)
    task = check_estimator(model)
    notes = []
    if made_with != sklearn.__version__:
        notes.append(f"warning: {shown(path.name)} was made with scikit-learn {shown(made_with)}; "
                     f"{sklearn.__version__} is installed: predictions may differ")
    classes = getattr(model, "classes_", None)
    signature, metrics, sample = Signature.from_estimator(model), {}, None
    if reference is None:
        try:  # the example row the signature offers must be one the model answers
            predicted = model.predict(signature.to_model_input(signature.example_matrix()))
        except Exception as exc:
            raise DataError(f"the model cannot predict on a row built from its own features "
                            f"({type(exc).__name__}); give --reference-data FILE.csv") from None
        _one_value_per_row(predicted)
    else:
        frame = read_csv(reference, limits)
        if target is not None:
            check_target(frame, target, reference)
        y = frame.pop(target) if target is not None else None
        X = _reference_frame(model, frame, reference)
        kinds = {str(c): infer_kind(X[c]) for c in X.columns}
        X = X.astype({c: object for c, kind in kinds.items() if kind == "category"})
        try:
            predicted = model.predict(_model_input(model, X))
        except Exception as exc:
            raise DataError(f"the model cannot predict on {shown(reference)}: {type(exc).__name__}: "
                            f"{shown(exc)}") from None
        _one_value_per_row(predicted)
        if y is not None:
            metrics = holdout_metrics(model, _model_input(model, X), y.to_numpy(), task)
        outcome = y if y is not None else pd.Series(predicted)
        signature = Signature.from_frame(X, task, classes, hasattr(model, "feature_names_in_"), kinds, y=outcome)
        signature.add_known_categories(Signature.from_estimator(model))
        for feature in signature.features:
            if feature.is_category and _refuses_unseen(model, X, feature.name):
                feature.unseen_categories = "refused"
        sample = reference_sample(X, y)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    reference_facts = {"reference_data": str(reference), "reference_rows": len(sample)} if sample is not None else {}
    metadata = {
        "task": task,
        "model_kind": type(final).__name__,
        "signature": signature.to_metadata(),
        "holdout_metrics": metrics,
        "training": {"source": "imported", "file": path.name, "file_sha256": file_sha256(path),
                     "format": "skops" if path.suffix.lower() in SAFE_SUFFIXES else "pickle",
                     "made_with_scikit_learn": made_with,
                     **reference_facts},
        "versions": versions(),
        "requires": required_libraries(model),
    }
    return TrainingResult(model, metadata, sample), notes


def _one_value_per_row(predicted) -> None:
    if (count := values_per_row(predicted)) > 1:
        raise DataError(f"the model predicts {count} values per row (a multi-output model); the service answers "
                        "one value per row: import one model per target")


FRESH_CHECK_SECONDS = 180  # importing scikit-learn takes a few seconds on a busy machine


def check_in_fresh_process(tag, timeout: float = FRESH_CHECK_SECONDS) -> None:
    """Runs the service's start-up check (model_check.py) on the stored model in a new Python process,
    as the service would (the project root as the working folder, no PYTHONPATH): a function or
    module that only the importing process could reach (the user's own code) is found here, not at
    serving time. The model must also answer its example row there, as it did here."""
    import os
    import subprocess
    import sys

    import bentoml

    from sklearn_service.model_check import ROOT

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    folder = bentoml.models.get(tag).path
    try:
        done = subprocess.run([sys.executable, "-m", "sklearn_service.model_check", folder], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DataError(f"the stored model did not load and predict in a new process within {timeout:g} s") from None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # the check only warns when the example row raises: here that row predicted, so a new process differs
    problems = lines if done.returncode != 0 else [line for line in lines if line.startswith("warning: ")]
    if done.returncode == 0 and not problems:
        return
    last = problems[-1] if problems else f"exit status {done.returncode}"
    raise DataError(f"the model does not load and predict in a new process, as the service runs it from "
                    f"{shown(ROOT)}: {shown(last, 400)}")
