"""The session's store, model and shared servers, and the order tiers run in.

Tiers, fastest first so that a broken build fails within the first minutes: in-process tests, then
`served` ones (a real `bentoml serve`), then `soak` (minutes of load), then `slow` (a container
image). A test is marked `served` when it, or a fixture it uses, starts a server (calls Server(...)
or a function of its module that does). `-m` picks tiers (`make test-fast`, `test-served`,
`test-slow`); the summary gives each tier's time (min:s).

`make test` runs the tests in worker processes (pytest-xdist, `--dist loadgroup`, collection order
kept): the tests that share a server on one worker (it starts once): a module's server, or a session
server but the default one, which most modules read and each worker starts; all others one at a time.
Each worker has its own store and session servers. Soak and slow run after the rest, in a run of
their own, so that their load meets no other test's timing.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import tempfile
from pathlib import Path

# BentoML caches its home on first use: point it at a throwaway store before anything imports it.
HOME = Path(tempfile.mkdtemp(prefix="bentoml-home-"))
os.environ["BENTOML_HOME"] = str(HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "True"

import bentoml  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

import train as train_cli  # noqa: E402
from harness.mixed_data import write_penguins_csv  # noqa: E402
from harness.serving import Server, write_config  # noqa: E402
from sklearn_service.csv_data import load_csv_dataset  # noqa: E402
from sklearn_service.model_store import save_result  # noqa: E402
from sklearn_service.training import load_default_dataset, train  # noqa: E402

TIERS = ("fast", "served", "soak", "slow")  # the order they run in; "fast" is unmarked: in process
SPANS: dict[str, list[float]] = {}  # per tier: first start, last end (fixtures' setup and teardown included)


def tier(keywords) -> str:
    return next((name for name in reversed(TIERS[1:]) if name in keywords), "fast")


@functools.cache
def _starts_a_server(func) -> bool:
    """Whether `func` calls Server(...), itself or through a function of its own module."""
    func = inspect.unwrap(func)
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):  # no Python source (pytest's own fixtures)
        return False
    helpers = [f for name, f in func.__globals__.items() if inspect.isfunction(f) and f is not func
               and f.__module__ == func.__module__ and f"{name}(" in source]
    return "Server(" in source or any("Server(" in inspect.getsource(f) for f in helpers)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects and xdist groups: they must see the marks added here
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = [d for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if any(_starts_a_server(f) for f in [item.function, *(d.func for d in fixtures)]):
            item.add_marker("served")
        # with workers (-n): the tests of a server on one worker, so that it starts once (a module's
        # server, or a session's but the default one, which most modules read: each worker starts that)
        module = item.nodeid.split("::")[0]
        shared = sorted(f"{module}::{d.argname}" if d.scope == "module" else d.argname for d in fixtures
                        if d.scope in ("module", "session") and d.argname != "server" and _starts_a_server(d.func))
        if tier(item.keywords) == "soak":
            item.add_marker(pytest.mark.xdist_group("soak"))  # one load at a time
        elif shared:
            item.add_marker(pytest.mark.xdist_group(",".join(shared)))
    items.sort(key=lambda item: TIERS.index(tier(item.keywords)))  # stable: modules stay together


def pytest_runtest_logreport(report):
    """Each tier's span, from the reports: with workers (-n) they reach the controlling process."""
    span = SPANS.setdefault(tier(report.keywords), [report.start, report.stop])
    span[0], span[1] = min(span[0], report.start), max(span[1], report.stop)


def pytest_terminal_summary(terminalreporter):
    ran = ", ".join(f"{name} {int((end - start) // 60)}:{int((end - start) % 60):02d}"
                    for name in TIERS if name in SPANS for start, end in [SPANS[name]])
    terminalreporter.write_line(f"time per tier: {ran}")


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

    from sklearn_service.csv_data import Dataset

    bunch = load_diabetes(as_frame=True)
    result = train(Dataset(bunch.data, bunch.target, "sklearn.datasets.load_diabetes"), task="regression")
    model = save_result(result, "diabetes_model")
    with Server(HOME, env={"MODEL_TAG": str(model.tag)}) as srv:
        srv.pipeline = result.pipeline
        srv.features = bunch.data.to_numpy()
        yield srv


@pytest.fixture(scope="session")
def penguins_server(bentoml_home, tmp_path_factory):
    """A model trained here on the penguins-like CSV (text, booleans, gaps), its payload logged."""
    folder = tmp_path_factory.mktemp("penguins")
    path = folder / "penguins.csv"
    frame = write_penguins_csv(path)
    assert train_cli.main(["--data", str(path), "--target", "species", "--name", "penguins"]) == 0
    model = bentoml.models.get("penguins:latest")
    config = write_config(folder, lambda s: s["services"]["SklearnService"].update(monitoring={
        "enabled": True, "type": "default", "options": {"log_path": str(folder / "payload")}}))
    with Server(bentoml_home, env={"MODEL_TAG": str(model.tag), "SERVICE_CONFIG": str(config)}) as srv:
        srv.name, srv.version = model.tag.name, model.tag.version
        srv.payload_logs = folder / "payload"
        srv.frame = frame
        srv.pipeline = bentoml.sklearn.load_model(model)
        srv.model_frame = load_csv_dataset(path, "species").X
        yield srv


@pytest.fixture(scope="session")
def keyed_server(trained):
    """The default model behind an API key."""
    with Server(HOME, env={"API_KEY": "s3cret-key"}) as srv:
        srv.api_key = "s3cret-key"
        yield srv
