"""What an imported model must be to be served as it answers: one value per row, and loadable by a
new process that has only the serving environment."""

from __future__ import annotations

import importlib

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.import_cli import refused
from sklearn_service.model_requirements import missing_requirements, output_count, required_libraries


def wages(rows=100):
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"age": rng.integers(18, 65, rows).astype(float), "years": rng.integers(0, 20, rows) * 1.0})
    wage = 1000 + 30 * X["age"] + 50 * X["years"] + rng.normal(0, 10, rows)
    return X, pd.DataFrame({"wage": wage, "logwage": np.log(wage)})


def test_output_count():
    X, y = wages()
    assert output_count(Ridge().fit(X, y), X.iloc[:1]) == 2
    assert output_count(Ridge().fit(X, y["wage"]), X.iloc[:1]) == 1
    assert output_count(Ridge().fit(X, y[["wage"]]), X.iloc[:1]) == 1  # (n, 1): still one value per row


@pytest.mark.parametrize("with_reference", [False, True])
def test_multi_output_models_are_refused(with_reference, tmp_path, capsys):
    X, y = wages()
    path, reference = tmp_path / "wages.skops", tmp_path / "wages.csv"
    skops.io.dump(Ridge().fit(X, y), path)
    X.assign(wage=y["wage"]).to_csv(reference, index=False)
    extra = ["--reference-data", str(reference), "--target", "wage"] if with_reference else []
    err = refused(["--import-model", str(path), *extra, "--name", "wages"], capsys)
    assert "predicts 2 values per row" in err


def _user_module(tmp_path, monkeypatch, name):
    """A module of the user's own, importable in this process only (as from the folder they ran in)."""
    (tmp_path / f"{name}.py").write_text("def doubled(X):\n    return X * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


def _with_function(module):
    X = np.random.default_rng(0).normal(size=(50, 3))
    return make_pipeline(FunctionTransformer(module.doubled), LogisticRegression()).fit(X, X[:, 0] > 0)


def test_a_trusted_function_the_server_cannot_import_is_refused(tmp_path, capsys, monkeypatch):
    module = _user_module(tmp_path, monkeypatch, "my_features_skops")
    path = tmp_path / "model.skops"
    skops.io.dump(_with_function(module), path)
    err = refused(["--import-model", str(path), "--trust-types", "my_features_skops.doubled",
                   "--name", "own_code"], capsys)
    assert "needs the module 'my_features_skops'" in err


def test_a_pickle_referencing_a_module_off_the_serving_path_is_refused(tmp_path, capsys, monkeypatch):
    module = _user_module(tmp_path, monkeypatch, "my_features_pickle")
    path = tmp_path / "model.joblib"
    joblib.dump(_with_function(module), path)
    err = refused(["--import-model", str(path), "--trust-pickle", "--name", "own_code"], capsys)
    assert "needs the module 'my_features_pickle'" in err


def test_a_model_needing_an_uninstalled_library_names_the_command():
    assert required_libraries(Ridge().fit([[0.0], [1.0]], [0.0, 1.0])) == {}
    assert missing_requirements({"numpy": "numpy==2"}) is None
    line = missing_requirements({"catboost_not_here": "catboost==1.2.10"})
    assert line and "catboost==1.2.10" in line
    from sklearn_service.model_requirements import install_hint

    assert install_hint("xgboost.sklearn") == "pip install -r requirements-xgboost.txt"
