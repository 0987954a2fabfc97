"""The compiled tree path must give exactly scikit-learn's answers, and step aside when it cannot."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_service import serving_model
from sklearn_service.compiled import compile_pipeline
from sklearn_service.serving_model import ServingModel
from sklearn_service.training import load_default_dataset, train


def split(loader):
    X, y = loader(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0)


def test_default_pipeline_matches_sklearn_on_the_test_split():
    X_train, X_test, _, _ = split(load_breast_cancer)
    pipeline = train(load_default_dataset()).pipeline
    compiled = compile_pipeline(pipeline)
    assert compiled is not None
    np.testing.assert_array_equal(compiled.predict_proba(X_test), pipeline.predict_proba(X_test))
    np.testing.assert_array_equal(compiled.predict(X_test), pipeline.predict(X_test))


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(StandardScaler(), ExtraTreesClassifier(n_estimators=30, random_state=0)),
    lambda: make_pipeline(SimpleImputer(), RandomForestClassifierDeep()),
])
def test_other_classifier_pipelines_match(make):
    X_train, X_test, y_train, _ = split(load_breast_cancer)
    pipeline = make().fit(X_train, y_train)
    np.testing.assert_array_equal(compile_pipeline(pipeline).predict_proba(X_test), pipeline.predict_proba(X_test))


def RandomForestClassifierDeep():
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=20, min_samples_leaf=1, max_features=None, random_state=3)


def test_regressor_matches():
    X_train, X_test, y_train, _ = split(load_diabetes)
    pipeline = make_pipeline(SimpleImputer(), RandomForestRegressor(n_estimators=40, random_state=0)).fit(X_train, y_train)
    np.testing.assert_array_equal(compile_pipeline(pipeline).predict(X_test), pipeline.predict(X_test))


def test_imputer_fills_missing_values_like_sklearn():
    X_train, X_test, y_train, _ = split(load_breast_cancer)
    pipeline = make_pipeline(SimpleImputer(strategy="median"), ExtraTreesClassifier(n_estimators=10, random_state=0))
    pipeline.fit(X_train, y_train)
    holes = X_test.copy()
    holes[::3, 5] = np.nan
    np.testing.assert_array_equal(compile_pipeline(pipeline).predict_proba(holes), pipeline.predict_proba(holes))


def test_unsupported_pipelines_are_left_to_sklearn():
    X_train, X_test, y_train, _ = split(load_breast_cancer)
    boosted = make_pipeline(SimpleImputer(), GradientBoostingClassifier(n_estimators=5)).fit(X_train, y_train)
    assert compile_pipeline(boosted) is None
    model = ServingModel(boosted, probe=X_test)
    assert model.compiled is None
    np.testing.assert_array_equal(model.predict(X_test), boosted.predict(X_test))


def test_serving_model_routes_large_calls_to_sklearn_and_checks_agreement(monkeypatch):
    pipeline = train(load_default_dataset()).pipeline
    model = ServingModel(pipeline, probe=serving_model.probe_rows(train(load_default_dataset()).metadata["feature_stats"]))
    assert model._for(np.zeros((serving_model.COMPILED_MAX_ROWS, 30))) is model.compiled
    assert model._for(np.zeros((serving_model.COMPILED_MAX_ROWS + 1, 30))) is pipeline

    class Wrong:
        def predict_proba(self, X):
            return np.zeros((len(X), 2))

    monkeypatch.setattr(serving_model, "compile_pipeline", lambda p: Wrong())
    assert ServingModel(pipeline, probe=np.ones((4, 30))).compiled is None
    assert ServingModel(pipeline, compiled=False).compiled is None
