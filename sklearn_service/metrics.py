"""The service's own Prometheus metrics, served on /metrics next to BentoML's.

Create `ServiceMetrics` inside a service's __init__, i.e. in a worker process,
where BentoML has set PROMETHEUS_MULTIPROC_DIR before anything was imported:
prometheus_client then keeps every value in per-process files that /metrics
sums over all workers. (Metrics made where that variable is unset land in a
private registry that /metrics never reads: upstream BentoML issue #5056.)
"""

from __future__ import annotations

import numpy as np

from sklearn_service.category_codes import is_unseen
from sklearn_service.drift import DriftMonitor
from sklearn_service.prom import family
from sklearn_service.signature import Signature

# 0.5 ms to 10 s: the compiled path answers in well under a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# The label values every per-endpoint series exists for from start-up, at 0, so alerts and dashboards read 0
# rather than "no data" after a restart, and rate() counts the first requests. The one list of them:
# the prediction endpoints (each takes SklearnService._serve; "/v2/infer" is every V2 infer path over REST,
# "grpc:ModelInfer" every one over gRPC),
# their outcomes, and the reasons _serve refuses a request with (RequestError's reason).
ENDPOINTS = ("/predict", "/predict_batch", "/predict_proba", "/explain", "/explain_batch", "/v2/infer",
             "grpc:ModelInfer")
OUTCOMES = ("success", "rejected", "error")
REJECT_REASONS = (
    "wrong_length", "unknown_feature", "missing_feature", "wrong_type", "missing_value", "unknown_category",
    "non_finite", "out_of_range", "empty_batch", "too_many_rows", "not_a_classifier", "no_probabilities",
    "model_refused_row", "not_explainable", "unknown_class",
    # the V2 protocol's own
    "invalid_json", "invalid_request", "bad_binary_data", "wrong_datatype", "wrong_shape", "wrong_data",
    "wrong_inputs", "unknown_output",
)


class ServiceMetrics:
    def __init__(self, model: str, tag: str, created: str, signature: Signature, model_kind: str,
                 drift: dict | None = None, registry=None):
        """One served model's series, labelled `model` (its name) and, where a version matters, `model_tag`.
        `registry`: where the metrics are registered, prometheus_client's default unless given (tests
        give each instance its own)."""
        from prometheus_client import Counter, Gauge, Histogram

        self.tag = tag
        self.feature_names = signature.names
        # training range per number feature (none known: an endless range, never outside)
        ranges = [(f.stats["min"], f.stats["max"]) if f.stats and not f.is_category else (-np.inf, np.inf)
                  for f in signature.features]
        self.low, self.high = np.array(ranges).reshape(-1, 2).T
        self.category_columns = [i for i, f in enumerate(signature.features) if f.is_category]
        self.class_names = None if signature.classes is None else [str(c) for c in signature.classes]

        predictions = family(registry, Counter, "ml_predictions_total", "Rows answered, by model, endpoint, model "
                             "tag and outcome (success, rejected, error)",
                             ["model", "endpoint", "model_tag", "outcome"])
        latency = family(registry, Histogram, "ml_prediction_latency_seconds", "Time from validated request to "
                         "answer, per model and endpoint", ["model", "endpoint"], buckets=LATENCY_BUCKETS)
        rejected = family(registry, Counter, "ml_rejected_requests_total", "Requests refused before prediction, by "
                          "model, endpoint and reason", ["model", "endpoint", "reason"])
        out_of_range = family(registry, Counter, "ml_feature_out_of_range_total", "Feature values outside the "
                              "training range (drift signal)", ["model", "feature"])
        unseen = family(registry, Counter, "ml_unseen_category_total", "Category values not seen in training, "
                        "answered as unseen", ["model", "feature"])
        self.rows_per_call = family(registry, Histogram, "ml_runner_call_rows", "Rows per API-to-runner call after "
                                    "gathering concurrent requests", ["model"], buckets=ROWS_BUCKETS).labels(model)
        if self.class_names is not None:
            classes = family(registry, Counter, "ml_predicted_class_total", "Predictions per class",
                             ["model", "model_tag", "class_name"])
            self._classes = [classes.labels(model, tag, name) for name in self.class_names]
        else:  # one family for every regressor: the first one's training target sets the buckets
            self.values = family(registry, Histogram, "ml_predicted_value", "Distribution of predicted values",
                                 ["model", "model_tag"], buckets=tuple((signature.prediction_stats or {}).get("bins")
                                                                       or Histogram.DEFAULT_BUCKETS)).labels(model, tag)
        # series for every known endpoint, outcome, reason, feature and class exist from the model's load, at 0
        self.model, self._predictions, self._latency, self._rejected = model, predictions, latency, rejected
        for endpoint in ENDPOINTS:
            latency.labels(model, endpoint)
            for outcome in OUTCOMES:
                predictions.labels(model, endpoint, tag, outcome)
            for reason in REJECT_REASONS:
                rejected.labels(model, endpoint, reason)
        # the children a success touches, looked up once per endpoint: it runs for every request
        self._per_endpoint: dict[str, tuple] = {}
        _bentoml_latency_series()
        self._out_of_range = [out_of_range.labels(model, name) for name in self.feature_names]
        self._unseen = [unseen.labels(model, self.feature_names[column]) for column in self.category_columns]
        info = family(registry, Gauge, "ml_model_info", "The models being served (value 1; 0 once replaced or "
                      "unloaded)", ["model", "model_tag", "task", "model_kind", "created"], multiprocess_mode="livemax")
        self._info = info.labels(model, tag, signature.task, model_kind, created)
        self._info.set(1)
        # app.drift in configuration.yaml; off: not even the series exist
        self.drift = None
        if drift and drift["enabled"]:
            self.drift = DriftMonitor(signature, drift["window_rows"], drift["window_minutes"], drift["min_rows"],
                                      registry=registry, model=model)

    def retire(self) -> None:
        """This version is no longer served: its info reads 0, its drift window stops."""
        self._info.set(0)
        if self.drift is not None:
            self.drift.stop()

    def success(self, endpoint: str, rows: np.ndarray, predictions: np.ndarray, seconds: float) -> None:
        # Runs for every request: per-feature counters are touched only where something was counted.
        found = self._per_endpoint.get(endpoint)
        if found is None:
            found = self._per_endpoint[endpoint] = (self._predictions.labels(self.model, endpoint, self.tag, "success"),
                                                    self._latency.labels(self.model, endpoint))
        found[0].inc(len(rows))
        found[1].observe(seconds)
        outside = (rows < self.low) | (rows > self.high)
        if outside.any():
            for column, count in enumerate(np.count_nonzero(outside, axis=0).tolist()):
                if count:
                    self._out_of_range[column].inc(count)
        if self.category_columns:
            unseen = np.count_nonzero(is_unseen(rows[:, self.category_columns]), axis=0)
            for counter, count in zip(self._unseen, unseen.tolist()):
                if count:
                    counter.inc(count)
        if self.drift is not None:
            self.drift.observe(rows, predictions)
        if self.class_names is not None:
            counts = np.bincount(predictions.astype(int), minlength=len(self.class_names))
            for index, count in enumerate(counts.tolist()):
                if count:
                    self._classes[index].inc(count)
        else:
            for value in predictions.tolist():
                self.values.observe(value)

    def reject(self, endpoint: str, reason: str, rows: int) -> None:
        self._rejected.labels(self.model, endpoint, reason).inc()
        self._predictions.labels(self.model, endpoint, self.tag, "rejected").inc(rows)

    def error(self, endpoint: str, rows: int) -> None:
        self._predictions.labels(self.model, endpoint, self.tag, "error").inc(rows)


def _bentoml_latency_series() -> None:
    """BentoML's own latency histogram for each API route, at 0. BentoML creates its request counter per
    route at start-up but this histogram only on a route's first request; this creates it as its HTTP
    middleware labels it (bentoml/_internal/server/http/instruments.py), in the same multiprocess files,
    so both write one series. Left unregistered: BentoML's middleware registers the metric itself."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import server_context
    from prometheus_client import Histogram

    metrics = BentoMLContainer.api_server_config.metrics
    if not metrics.enabled.get():
        return
    histogram = Histogram("request_duration_seconds", "runner RPC duration in seconds",
                          ["endpoint", "service_name", "service_version", "http_response_code", "runner_name"],
                          namespace=metrics.namespace.get(), buckets=BentoMLContainer.duration_buckets.get(),
                          registry=None)
    for route in server_context.service_routes:
        histogram.labels(route, server_context.bento_name, server_context.bento_version, "200",
                         server_context.service_name)
