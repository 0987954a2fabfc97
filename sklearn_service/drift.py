"""Live data drift: the PSI of every feature and of the predictions, over a sliding window of served
rows, against the training distribution recorded in the model's signature.

Bins (the same ones `drift_report` uses offline):
- numbers: the signature's training quantile bins, binned as `profiling.bin_shares` does;
- categories: one bin per training category plus one for unseen values (training share 0), on the
  codes of category_codes.py;
- class predictions: one bin per class; regression predictions: the target's quantile bins;
- missing values: a bin of their own that PSI leaves out, because the training shares are over
  present values too (missingness is not drift of the distribution).
A feature without a training distribution (a model saved without reference data) is not tracked.

PSI = sum over bins of (live - train) * ln(live / train), each share floored at EPSILON so that an
empty bin (an unseen category, a decile no live row fell into) adds a large but finite term. Usual
reading: < 0.1 stable, 0.1-0.2 moderate, > 0.2 drifted. A window with fewer than `min_rows` present
values reads 0: PSI of a few rows is noise.

Cost on the request path: `observe()` appends a reference to the batch. A daemon thread, once a
second, bins everything that arrived (one searchsorted per column over all rows, one bincount),
slides the window (at most `window_rows` rows, and only rows of the last `window_minutes` if set)
and publishes the gauges, so an idle window still expires.

Several API workers: each worker keeps its own window and publishes its own values;
ml_feature_drift_psi and ml_prediction_drift_psi are multiprocess "livemax" gauges (the largest PSI
among live workers) and ml_drift_window_rows is "livesum" (rows in all workers' windows). Requests
are spread over the workers, so each window is a sample of the same stream: the max is the most
drifted of those samples, slightly above the PSI of one combined window, never below it by more
than sampling noise. Pods combine the same way: alerts and dashboards take max by feature.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from sklearn_service.prom import family
from sklearn_service.signature import Signature

EPSILON = 1e-4
TICK_SECONDS = 1.0
logger = logging.getLogger("sklearn_service.drift")


class Bins:
    """Flat bin layout of every tracked column: its edges, its training shares, and a missing bin."""

    def __init__(self, signature: Signature):
        self.names: list[str] = []
        self.sources: list[int | None] = []  # feature index; None for the prediction
        self.edges: list[np.ndarray] = []
        shares: list[list[float]] = []
        for i, f in enumerate(signature.features):
            if f.is_category and f.category_shares:
                # codes: UNSEEN_CODE (below every code) -> bin 0, category j -> bin j + 1
                self._add(f.name, i, np.arange(len(f.category_list)) - 0.5, [0.0, *f.category_shares], shares)
            elif not f.is_category and f.stats and "bin_shares" in f.stats:
                self._add(f.name, i, f.stats["bins"], f.stats["bin_shares"], shares)
        stats = signature.prediction_stats or {}
        self.has_prediction = "class_shares" in stats or "bin_shares" in stats
        if "class_shares" in stats:  # class index i -> bin i
            self._add("prediction", None, np.arange(1, len(stats["class_shares"])) - 0.5, stats["class_shares"], shares)
        elif "bin_shares" in stats:
            self._add("prediction", None, stats["bins"], stats["bin_shares"], shares)
        sizes = [len(s) + 1 for s in shares]  # + the missing bin
        self.offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        self.missing = self.offsets + np.array(sizes, dtype=np.int64) - 1
        self.size = int(sum(sizes))
        self.column = np.repeat(np.arange(len(sizes)), sizes)  # bin -> column
        self.train = np.maximum(np.concatenate([[*s, 1.0] for s in shares]) if shares else np.ones(0), EPSILON)
        self.counted = np.ones(self.size, bool)
        self.counted[self.missing] = False

    def _add(self, name: str, source: int | None, edges, train_shares, shares: list[list[float]]) -> None:
        self.names.append(name)
        self.sources.append(source)
        self.edges.append(np.asarray(edges, dtype=float))
        shares.append(list(train_shares))

    def index(self, rows: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        """Flat bin index of every (row, column): shape (rows, columns)."""
        out = np.empty((len(rows), len(self.names)), dtype=np.int64)
        for j, (source, edges) in enumerate(zip(self.sources, self.edges)):
            values = predictions if source is None else rows[:, source]
            out[:, j] = np.where(np.isnan(values), self.missing[j],
                                 self.offsets[j] + np.searchsorted(edges, values, side="right"))
        return out

    def counts(self, index: np.ndarray) -> np.ndarray:
        return np.bincount(index.ravel(), minlength=self.size)

    def psi(self, counts: np.ndarray, min_rows: int = 1) -> np.ndarray:
        """PSI per column from the bin counts; 0 for a column with fewer than min_rows present values."""
        present = np.bincount(self.column, weights=counts * self.counted, minlength=len(self.names))
        live = np.maximum(counts / np.maximum(present, 1)[self.column], EPSILON)
        terms = np.where(self.counted, (live - self.train) * np.log(live / self.train), 0.0)
        psi = np.bincount(self.column, weights=terms, minlength=len(self.names))
        return np.where(present >= max(min_rows, 1), psi, 0.0)


class DriftMonitor:
    def __init__(self, signature: Signature, window_rows: int, window_minutes: float | None = None,
                 min_rows: int = 500, registry=None, start: bool = True, model: str = ""):
        """`model`: the served model's name, the `model` label of its gauges."""
        from prometheus_client import Gauge

        self.bins = Bins(signature)
        self.window_rows = int(window_rows)
        self.window_seconds = None if window_minutes is None else float(window_minutes) * 60
        self.min_rows = int(min_rows)
        self._arrived: collections.deque = collections.deque()  # appends and pops are thread-safe
        self._window: collections.deque = collections.deque()   # (time, bin index chunk), oldest first
        self._counts = np.zeros(self.bins.size, dtype=np.int64)
        self.rows = 0

        feature_psi = family(registry, Gauge, "ml_feature_drift_psi", "PSI of a feature over the drift window "
                             "against training (max over workers)", ["model", "feature"], multiprocess_mode="livemax")
        prediction_psi = family(registry, Gauge, "ml_prediction_drift_psi", "PSI of the predictions over the drift "
                                "window against the training target (max over workers)", ["model"],
                                multiprocess_mode="livemax")
        self._window_rows = family(registry, Gauge, "ml_drift_window_rows", "Rows in the drift windows (sum over "
                                   "workers)", ["model"], multiprocess_mode="livesum").labels(model)
        self._gauges = [prediction_psi.labels(model) if name == "prediction" and source is None
                        else feature_psi.labels(model, name)
                        for name, source in zip(self.bins.names, self.bins.sources)]
        if not self.bins.has_prediction:
            prediction_psi.labels(model).set(0)
        self._stopped = threading.Event()
        self.publish()  # every series exists from start-up, at 0
        if start:
            threading.Thread(target=self._run, name="drift", daemon=True).start()

    def observe(self, rows: np.ndarray, predictions: np.ndarray) -> None:
        """Called for every served batch: only remembers it (the thread does the work)."""
        self._arrived.append((rows, predictions))

    def psi(self) -> dict[str, float]:
        """PSI per tracked column ("prediction" for the predictions) of this worker's window."""
        return dict(zip(self.bins.names, self.bins.psi(self._counts, self.min_rows).tolist()))

    def publish(self, now: float | None = None) -> None:
        """Moves arrived rows into the window, drops expired ones, and sets the gauges."""
        now = time.monotonic() if now is None else now
        batches = [self._arrived.popleft() for _ in range(len(self._arrived))]
        if batches:
            rows = np.concatenate([r for r, _ in batches])[-self.window_rows:]
            predictions = np.concatenate([np.ravel(p) for _, p in batches])[-self.window_rows:]
            chunk = self.bins.index(rows, predictions.astype(float))
            self._window.append((now, chunk))
            self._counts += self.bins.counts(chunk)
            self.rows += len(chunk)
        self._expire(now)
        for gauge, value in zip(self._gauges, self.bins.psi(self._counts, self.min_rows).tolist()):
            gauge.set(value)
        self._window_rows.set(self.rows)

    def _expire(self, now: float) -> None:
        while self._window and (self.rows > self.window_rows or
                                (self.window_seconds is not None and self._window[0][0] < now - self.window_seconds)):
            when, chunk = self._window[0]
            excess = self.rows - self.window_rows
            dropped = chunk if excess <= 0 or excess >= len(chunk) else chunk[:excess]
            if len(dropped) == len(chunk):
                self._window.popleft()
            else:
                self._window[0] = (when, chunk[excess:])
            self._counts -= self.bins.counts(dropped)
            self.rows -= len(dropped)

    def stop(self) -> None:
        """No more updates, and the gauges read 0: the model's version was replaced (its successor's
        gauges take over on their next update) or unloaded (no drift alert for a model not served)."""
        self._stopped.set()
        for gauge in self._gauges:
            gauge.set(0)
        self._window_rows.set(0)

    def _run(self) -> None:
        while not self._stopped.wait(TICK_SECONDS):
            try:
                self.publish()
            except Exception:  # keep serving and keep trying: drift is a signal, not the service
                logger.exception("drift window update failed")
