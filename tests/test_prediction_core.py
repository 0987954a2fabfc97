"""The prediction core in-process: the trained model behind a runner call made in this process, so the
table of what every front end shares (validation, outputs, labels, refusals, runner trouble, metrics)
runs in milliseconds. The served routes and V2 over a real server are in test_service_http.py and
test_open_inference.py."""

from __future__ import annotations

import asyncio
import math

import bentoml
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sklearn_service import config
from sklearn_service.errors import RequestError
from sklearn_service.model_check import ModelFacts
from sklearn_service.prediction_core import PredictionCore
from sklearn_service.serving_model import ServingModel
from sklearn_service.signature import Signature


class Core:
    """A PredictionCore with its own metrics registry, and the runner's model in this process."""

    def __init__(self, trained, runner=None, outputs=("predict_proba",), **app):
        stored = bentoml.models.get(trained["tag"])
        self.signature = Signature.from_metadata(stored.info.metadata)
        self.model = ServingModel(trained["pipeline"], self.signature, outputs=outputs)
        self.registry = CollectorRegistry()
        self.calls: list[tuple[str, int]] = []
        facts = ModelFacts(self.signature, type(trained["pipeline"][-1]).__name__, outputs)
        self.core = PredictionCore(stored.info, self.signature, facts, runner or self.call_runner,
                                   {**config.app(), **app}, {}, registry=self.registry)

    async def call_runner(self, method: str, rows: np.ndarray) -> np.ndarray:
        self.calls.append((method, len(rows)))
        return await self.model.serve_async(method, rows)

    def answer(self, *args, **kwargs):
        return asyncio.run(self.core.answer(*args, **kwargs))

    def count(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, {"model": self.core.name, **labels}) or 0.0


@pytest.fixture
def core(trained):
    return Core(trained)


def test_answers_are_what_the_model_says_with_labels_as_trained(core, trained, cancer):
    X = cancer["X"][:50]
    answer = core.answer("/predict_batch", X.tolist(), outputs=("predict", "predict_proba"))
    pipeline = trained["pipeline"]
    assert answer.predictions == [float(c) for c in pipeline.predict(X)]
    np.testing.assert_allclose(answer.outputs["predict_proba"], pipeline.predict_proba(X), atol=1e-12)
    assert core.calls == [("predict_all", 50)]  # other outputs come from one runner call with predict


def test_predict_alone_is_one_plain_runner_call_and_counted(core, cancer):
    X = cancer["X"][:7]
    answer = core.answer("/predict", [dict(zip(core.signature.names, X[0].tolist()))], one_row=True)
    assert len(answer.predictions) == 1 and answer.outputs == {}
    assert core.calls == [("predict", 1)]
    assert core.count("ml_predictions_total", endpoint="/predict", model_tag=core.core.metadata["tag"],
                      outcome="success") == 1
    assert core.count("ml_prediction_latency_seconds_count", endpoint="/predict") == 1


ROW = [1.0] * 30


@pytest.mark.parametrize("rows, one_row, outputs, reason, status, words, counted", [
    ([ROW[:29]], True, ("predict",), "wrong_length", 400, "expected 30 features, got 29", 1),
    ([ROW, ROW[:29]], False, ("predict",), "wrong_length", 400, "instance 1: expected 30 features", 2),
    ([], False, ("predict",), "empty_batch", 400, "at least one row", 0),
    ([ROW] * 1001, False, ("predict",), "too_many_rows", 413, "at most 1000 instances", 1001),
    ([{"mean radius": 1.0}], True, ("predict",), "missing_feature", 400, "missing 29 feature(s)", 1),
    ([{"nope": 1.0}], True, ("predict",), "unknown_feature", 400, "unknown feature name(s): ['nope']", 1),
    ([[None] + ROW[1:]], True, ("predict",), "missing_value", 400, "feature 'mean radius' may not be missing", 1),
    ([["1"] + ROW[1:]], True, ("predict",), "wrong_type", 400, "feature 'mean radius' must be a number", 1),
    ([[math.inf] + ROW[1:]], True, ("predict",), "non_finite", 400, "not a finite number", 1),
    ([[1e39] + ROW[1:]], True, ("predict",), "out_of_range", 400, "out of range", 1),
    ([ROW], True, ("predict", "classes"), "unknown_output", 400, "unknown output 'classes'", 1),
])
def test_refusals_name_the_problem_and_are_counted_with_the_rows_received(core, rows, one_row, outputs, reason,
                                                                            status, words, counted):
    with pytest.raises(RequestError) as refused:
        core.answer("/predict_batch", rows, outputs=outputs, one_row=one_row)
    assert (refused.value.reason, refused.value.status) == (reason, status) and words in str(refused.value)
    assert core.calls == []  # nothing refused reaches the runner
    assert core.count("ml_rejected_requests_total", endpoint="/predict_batch", reason=reason) == 1
    assert core.count("ml_predictions_total", endpoint="/predict_batch", model_tag=core.core.metadata["tag"],
                      outcome="rejected") == counted


def test_probabilities_of_a_model_without_them_are_refused_by_name(trained):
    core = Core(trained, outputs=())
    with pytest.raises(RequestError, match="classifier has no predict_proba") as refused:
        core.answer("/predict_proba", [ROW], outputs=("predict", "predict_proba"), one_row=True)
    assert refused.value.reason == "no_probabilities"


def test_rows_the_model_raises_on_are_a_422_naming_them(trained, cancer):
    model = ServingModel(trained["pipeline"], Core(trained).signature)

    async def refuses_rows_3_and_5(method: str, rows: np.ndarray) -> np.ndarray:  # as ServingModel marks them
        out = await model.serve_async(method, rows)
        out[[3, 5]] = np.nan
        return out

    with pytest.raises(RequestError, match=r"could not predict instance\(s\) \[3, 5\]") as refused:
        Core(trained, runner=refuses_rows_3_and_5).answer("/predict_batch", cancer["X"][:8].tolist())
    assert refused.value.status == 422 and refused.value.reason == "model_refused_row"


@pytest.mark.parametrize("failure, status, reason", [
    (ConnectionRefusedError("runner gone"), 503, "runner_unavailable"),
    (RuntimeError("model broke"), 500, "runner_error"),
])
def test_runner_trouble_is_never_the_clients_fault(trained, failure, status, reason):
    async def failing(method: str, rows: np.ndarray) -> np.ndarray:
        raise failure

    core = Core(trained, runner=failing)
    with pytest.raises(RequestError) as refused:
        core.answer("/predict", [ROW], one_row=True)
    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert (refused.value.headers or {}).get("Retry-After") == ("1" if status == 503 else None)
    assert core.count("ml_predictions_total", endpoint="/predict", model_tag=core.core.metadata["tag"],
                      outcome="error") == 1


def test_concurrent_requests_share_runner_calls_and_each_gets_its_own_rows(core, trained, cancer):
    X = cancer["X"][:40]

    async def many():
        return await asyncio.gather(*(core.core.answer("/predict", [row.tolist()], one_row=True) for row in X))

    answers = asyncio.run(many())
    assert [a.predictions[0] for a in answers] == [float(c) for c in trained["pipeline"].predict(X)]
    assert len(core.calls) < len(X) and sum(n for _, n in core.calls) == len(X)
