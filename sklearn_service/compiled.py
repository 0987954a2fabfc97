"""A numpy evaluation path for scikit-learn pipelines, with scikit-learn's answers bit for bit.

scikit-learn's per-call overhead (input checks, DataFrame handling in
ColumnTransformer, one Python call per tree) costs milliseconds per call whether
it holds 1 row or 64. Here the preprocessing (compiled_preprocessing.py) runs as a
few numpy operations on the serving matrix, and tree ensembles (compiled_trees.py)
are walked all at once. A final step that is not compiled is scikit-learn's own
estimator fed the prepared matrix, exactly what the pipeline would feed it.
Anything else returns None from `compile_pipeline` and is served by scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils._missing import is_scalar_nan

from sklearn_service.compiled_preprocessing import Transform, compile_transformer
from sklearn_service.compiled_trees import compile_estimator


OWN_FINAL_STEP_MAX_ROWS = 512


class CompiledPipeline:
    def __init__(self, prepare: Transform, model, classes):
        self.prepare = prepare
        self.model = model  # a compiled tree ensemble, or the pipeline's own final step
        self.classes_ = classes
        # the most rows a call is served here (None: any number): a compiled ensemble says; behind a final
        # step that is scikit-learn's own, larger calls go to the whole pipeline in scikit-learn
        self.max_rows: int | None = getattr(model, "max_rows", OWN_FINAL_STEP_MAX_ROWS)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.prepare(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict(self.prepare(X))

    def predict_and_proba(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """predict and predict_proba from one pass where the model has one (compiled ensembles)."""
        prepared = self.prepare(X)
        both = getattr(self.model, "predict_and_proba", None)
        if both is not None:
            return both(prepared)
        return self.model.predict(prepared), self.model.predict_proba(prepared)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return self.model.score_samples(self.prepare(X))


def _column_kinds(n_features: int, categories: dict[int, list] | None) -> list[tuple | None] | None:
    """None for a numeric column, its category values for a categorical one (see compiled_preprocessing)."""
    kinds: list[tuple | None] = [None] * n_features
    for column, values in (categories or {}).items():
        if not 0 <= column < n_features or any(value is None or is_scalar_nan(value) for value in values):
            return None  # no such column, or a category that scikit-learn would read as missing
        kinds[column] = tuple(values)
    return kinds


def compile_pipeline(pipeline, categories: dict[int, list] | None = None) -> CompiledPipeline | None:
    """The compiled pipeline for the serving matrix, where column i of `categories` holds codes into
    categories[i] (category_codes.py); None where scikit-learn must serve the model."""
    is_pipeline = isinstance(pipeline, Pipeline)
    final = pipeline.steps[-1][1] if is_pipeline else pipeline
    kinds = _column_kinds(getattr(pipeline, "n_features_in_", 0), categories)
    if kinds is None:
        return None
    prepared = compile_transformer(pipeline[:-1], kinds) if is_pipeline else ((lambda X: X), kinds)
    if prepared is None or any(kind is not None for kind in prepared[1]):
        return None
    model = compile_estimator(final)
    if model is None:
        if not is_pipeline or len(pipeline) == 1 or hasattr(final, "feature_names_in_"):
            return None  # nothing to gain, or the final step expects a DataFrame
        model = final
    return CompiledPipeline(prepared[0], model, getattr(final, "classes_", None))
