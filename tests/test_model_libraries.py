"""Models from scikit-learn-compatible libraries (XGBoost, LightGBM) inside scikit-learn pipelines:
the types they need named, the library recorded, and the command to run when it is missing."""

from __future__ import annotations

import sys

import bentoml
import joblib
import numpy as np
import pytest
import skops.io
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import train as train_cli
from harness.byo_models import LIGHTGBM_TYPES, XGBOOST_TYPES
from harness.serving import repo_bentofile

xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")



def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return X, (X[:, 0] > 0).astype(int)


def models():
    X, y = data()
    return {
        "xgboost": (make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=5)).fit(X, y), XGBOOST_TYPES),
        "lightgbm": (make_pipeline(StandardScaler(), lightgbm.LGBMRegressor(n_estimators=5, verbose=-1)).fit(X, X[:, 1]),
                     LIGHTGBM_TYPES),
    }


@pytest.mark.parametrize("library", ["xgboost", "lightgbm"])
def test_imports_with_the_named_types_and_records_the_library(library, tmp_path, capsys):
    model, types = models()[library]
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    before = {str(m.tag) for m in bentoml.models.list()}
    assert train_cli.main(["--import-model", str(path), "--name", library]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in types) and {str(m.tag) for m in bentoml.models.list()} == before, err
    assert train_cli.main(["--import-model", str(path), "--name", library, "--trust-types", ",".join(types)]) == 0
    stored = bentoml.models.get(f"{library}:latest")
    requires = stored.info.metadata["requires"]
    assert list(requires) == [library] and requires[library].endswith(f"=={sys.modules[library].__version__}")
    X, _ = data()
    np.testing.assert_allclose(bentoml.sklearn.load_model(stored).predict(X), model.predict(X))


def test_a_missing_library_names_the_command_to_run(tmp_path, capsys, monkeypatch):
    model, _ = models()["xgboost"]
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    for name in [n for n in sys.modules if n == "xgboost" or n.startswith("xgboost.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if not installed
    assert train_cli.main(["--import-model", str(path), "--trust-pickle", "--name", "no_xgboost"]) == 2
    err = capsys.readouterr().err
    assert "needs the module 'xgboost" in err and "pip install -r requirements-xgboost.txt" in err


def test_the_bento_for_such_a_model_installs_its_extra(tmp_path, capsys):
    import os
    import subprocess

    from sklearn_service import bento_extras

    model, types = models()["xgboost"]
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    assert train_cli.main(["--import-model", str(path), "--name", "xgb_bento", "--trust-types", ",".join(types)]) == 0
    assert train_cli.main(["--name", "plain_bento"]) == 0
    assert bento_extras.bentofile_for("plain_bento:latest").name == "bentofile.yaml"
    with repo_bentofile():  # other workers' tests write and build from the same file
        written = [bento_extras.ROOT / bento_extras.MODEL_BENTOFILE, bento_extras.ROOT / bento_extras.MODEL_REQUIREMENTS]
        try:
            bentofile = bento_extras.bentofile_for("xgb_bento:latest")
            env = {**os.environ, "MODEL_TAG": "xgb_bento:latest"}
            built = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "-o", "tag"],
                                   cwd=bento_extras.ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert built.returncode == 0, built.stderr[-2000:]
        finally:
            for file in written:
                file.unlink(missing_ok=True)
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    requirements = (bentoml.get(tag).path_of("env/python/requirements.txt"))
    pins = open(requirements).read().splitlines()
    assert "xgboost-cpu==3.2.0" in pins and "scikit-learn==1.9.1" in pins
