"""Third-party clients against a real `bentoml serve`: XGBoost and LightGBM models in scikit-learn
pipelines, imported as a user would, answer on every route (/predict, /predict_batch, /predict_proba,
V2 through tritonclient and KServe's InferenceRESTClient) exactly what the model says in process;
KServe's client (health, readiness, metadata through its own data models) against the default model."""

from __future__ import annotations

import asyncio

import joblib
import numpy as np
import pytest
import requests
import skops.io
import tritonclient.http as triton
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import train as train_cli
from harness.byo_models import CATEGORIES, XGBOOST_TYPES, penguin_frame
from harness.mixed_data import FEATURES, json_rows
from harness.serving import Server

xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")
kserve = pytest.importorskip("kserve")

SPECIES = ["Adelie", "Chinstrap", "Gentoo"]  # XGBoost wants the classes as 0..n-1


def post(server, path: str, payload) -> requests.Response:
    answer = requests.post(server.url + path, json=payload, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer


def xgb_penguins():
    """XGBClassifier behind a mixed-type ColumnTransformer: numbers with gaps left to XGBoost,
    text one-hot encoded, a boolean passed through."""
    X, species = penguin_frame()
    y = species.map(SPECIES.index).to_numpy()
    prepare = ColumnTransformer([
        ("num", "passthrough", ["bill_length_mm", "flipper_length_mm"]),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         CATEGORIES),
        ("flag", "passthrough", ["tagged"])])
    model = Pipeline([("prepare", prepare),
                      ("model", xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0))])
    return model.fit(X, y), X, y


def lgbm_diabetes():
    X, y = load_diabetes(return_X_y=True)
    model = make_pipeline(StandardScaler(), lightgbm.LGBMRegressor(n_estimators=30, random_state=0, verbose=-1))
    return model.fit(X, y)


def triton_client(server):
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)


def v2_infer(server, inputs) -> dict:
    """tritonclient's defaults: binary tensors both ways, every output the model's metadata lists."""
    with triton_client(server) as client:
        result = client.infer(server.name, inputs)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def kserve_infer(url: str, name: str, columns: dict, binary: bool) -> dict:
    """KServe's V2 REST client: an InferRequest of {name: (datatype, array)}, every output back."""
    async def infer():
        inputs = []
        for tensor_name, (datatype, values) in columns.items():
            tensor = kserve.InferInput(tensor_name, list(values.shape), datatype)
            tensor.set_data_from_numpy(values, binary_data=binary)
            inputs.append(tensor)
        async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30)) as client:
            response = await client.infer(url, kserve.InferRequest(name, inputs, request_id="7"), model_name=name)
        assert response.model_name == name and response.id == "7"
        return {output.name: output.as_numpy() for output in response.outputs}
    return asyncio.run(infer())


@pytest.fixture(scope="module")
def library_servers(bentoml_home, tmp_path_factory):
    """Each model imported as a user would (.skops naming the types it needs; a trusted joblib), then
    both servers started at once to share the wait."""
    folder = tmp_path_factory.mktemp("libraries")
    xgb, X, y = xgb_penguins()
    X.assign(species=y).to_csv(folder / "reference.csv", index=False)
    skops.io.dump(xgb, folder / "penguins.skops")
    assert train_cli.main(["--import-model", str(folder / "penguins.skops"), "--name", "penguins_xgb",
                           "--trust-types", ",".join(XGBOOST_TYPES),
                           "--reference-data", str(folder / "reference.csv"), "--target", "species"]) == 0
    diabetes = load_diabetes().data
    lgbm = lgbm_diabetes()
    joblib.dump(lgbm, folder / "diabetes.joblib")
    assert train_cli.main(["--import-model", str(folder / "diabetes.joblib"), "--trust-pickle",
                           "--name", "diabetes_lgbm"]) == 0
    models = {"penguins_xgb": (xgb, X), "diabetes_lgbm": (lgbm, diabetes)}
    servers = {name: Server(bentoml_home, env={"MODEL_TAG": f"{name}:latest"}) for name in models}
    try:
        for name, srv in servers.items():
            srv.wait_ready(120)
            srv.name, (srv.model, srv.X) = name, models[name]
        yield servers
    finally:
        for srv in servers.values():
            srv.stop()


@pytest.fixture
def xgb_server(library_servers):
    return library_servers["penguins_xgb"]


@pytest.fixture
def lgbm_server(library_servers):
    return library_servers["diabetes_lgbm"]


def test_xgboost_pipeline_answers_what_the_model_says(xgb_server):
    srv, model = xgb_server, xgb_server.model
    X = srv.X.iloc[:40]
    assert X.isna().any().any(), "the rows should hold gaps, as users' data does"
    expected = model.predict(X).astype(float).tolist()
    proba = model.predict_proba(X)
    rows = json_rows(X)
    assert post(srv, "/predict_batch", {"instances": rows}).json()["predictions"] == expected
    singles = np.r_[np.flatnonzero(X.isna().any(axis=1))[:4], np.flatnonzero(X.notna().all(axis=1))[:4]]
    for row, label, p in ((rows[i], expected[i], proba[i].tolist()) for i in singles):
        assert post(srv, "/predict", {"features": row}).json() == {"prediction": label}
        answer = post(srv, "/predict_proba", {"features": row}).json()
        assert answer["prediction"] == label
        # float32 inside XGBoost; the JSON carries each float64 of it exactly
        assert answer["probabilities"] == {str(c): v for c, v in zip(model.classes_, p)}

    full = X.dropna()  # tritonclient's tensors have no missing values
    with triton_client(srv) as client:  # one input per feature, typed as the model's metadata says
        types = {i["name"]: i["datatype"] for i in client.get_model_metadata(srv.name)["inputs"]}
    assert list(types) == FEATURES
    columns = {name: (datatype, full[name].to_numpy().astype(
        object if datatype == "BYTES" else triton.triton_to_np_dtype(datatype))) for name, datatype in types.items()}
    inputs = []
    for name, (datatype, column) in columns.items():
        inputs.append(triton.InferInput(name, [len(full)], datatype).set_data_from_numpy(column))
    expected = {"predict": model.predict(full).astype(float), "predict_proba": model.predict_proba(full)}
    answers = [v2_infer(srv, inputs), *(kserve_infer(srv.url, srv.name, columns, binary) for binary in (True, False))]
    for answer in answers:
        assert answer.keys() == expected.keys()
        for output, values in expected.items():
            np.testing.assert_array_equal(answer[output], values.astype(np.float64), err_msg=output)


def test_lightgbm_pipeline_answers_what_the_model_says(lgbm_server):
    srv, model = lgbm_server, lgbm_server.model
    X = srv.X[:40]
    expected = model.predict(X).tolist()  # float64 in LightGBM: equal, not approximately
    assert post(srv, "/predict_batch", {"instances": X.tolist()}).json()["predictions"] == expected
    assert [post(srv, "/predict", {"features": row}).json()["prediction"] for row in X[:8].tolist()] == expected[:8]
    refused = requests.post(srv.url + "/predict_proba", json={"features": X[0].tolist()}, timeout=30)
    assert refused.status_code == 400 and refused.json()["reason"] == "not_a_classifier"
    tensor = triton.InferInput("input-0", list(X.shape), "FP64")
    tensor.set_data_from_numpy(X)
    answer = v2_infer(srv, [tensor])
    assert list(answer) == ["predict"] and answer["predict"].tolist() == expected


# ---- KServe's Python client against the default model --------------------------------------------------

def test_kserve_rest_client(server, trained, cancer):
    from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse

    name = trained["tag"].split(":")[0]
    X = cancer["X"][:25]
    expected = trained["pipeline"].predict(X).astype(float).tolist()

    async def ask():
        async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30)) as client:
            return (await client.is_server_live(server.url), await client.is_server_ready(server.url),
                    await client.is_model_ready(server.url, name), await client.is_model_ready(server.url, "nope"))

    assert asyncio.run(ask()) == (True, True, True, False)
    for binary in (True, False):  # KServe's binary tensor extension, then plain JSON
        outputs = kserve_infer(server.url, name, {"input-0": ("FP64", X)}, binary)
        assert outputs["predict"].tolist() == expected
        np.testing.assert_array_equal(outputs["predict_proba"], trained["pipeline"].predict_proba(X))
    assert post(server, "/predict_batch", {"instances": X.tolist()}).json()["predictions"] == expected

    meta = ModelMetadataResponse.model_validate(requests.get(f"{server.url}/v2/models/{name}", timeout=10).json())
    assert meta.name == name and meta.versions == [trained["tag"].split(":")[1]]
    assert [(i.datatype, i.shape) for i in meta.inputs] == [("FP64", [-1, 30])]
    assert [o.name for o in meta.outputs] == ["predict", "predict_proba", "explanation"]
    ServerMetadataResponse.model_validate(requests.get(f"{server.url}/v2", timeout=10).json())
