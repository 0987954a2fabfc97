from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# BentoML caches its home on first use: point it at a throwaway store before anything imports it.
HOME = Path(tempfile.mkdtemp(prefix="bentoml-home-"))
os.environ["BENTOML_HOME"] = str(HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "True"

import pytest  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

from sklearn_service.training import load_default_dataset, save_result, train  # noqa: E402
from harness.serving import Server  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return HOME


@pytest.fixture(scope="session")
def trained():
    """The default model, freshly trained into the throwaway store."""
    result = train(load_default_dataset())
    model = save_result(result, "sklearn_model")
    return {"tag": str(model.tag), "pipeline": result.pipeline, "metadata": result.metadata}


@pytest.fixture(scope="session")
def server(trained):
    with Server(HOME) as srv:
        yield srv


@pytest.fixture(scope="session")
def cancer():
    data = load_breast_cancer()
    return {"X": data.data, "names": [str(n) for n in data.feature_names]}


@pytest.fixture
def post(server):
    """POST JSON to the session's server."""
    import requests

    def _post(path: str, payload=None, **kwargs):
        return requests.post(server.url + path, json=payload, timeout=30, **kwargs)

    return _post


@pytest.fixture(scope="session")
def regressor_server(trained):
    """A server for a regression model (scikit-learn's diabetes data), next to the default classifier."""
    from sklearn.datasets import load_diabetes

    from sklearn_service.training import Dataset

    bunch = load_diabetes(as_frame=True)
    result = train(Dataset(bunch.data, bunch.target, "sklearn.datasets.load_diabetes"), task="regression")
    model = save_result(result, "diabetes_model")
    with Server(HOME, env={"MODEL_TAG": str(model.tag)}) as srv:
        srv.pipeline = result.pipeline
        srv.features = bunch.data.to_numpy()
        yield srv
