"""Live drift in one process: the bins, the PSI, the sliding window and the gauges it publishes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from harness.mixed_data import FEATURES, penguins
from sklearn_service.drift import EPSILON, Bins, DriftMonitor
from sklearn_service.signature import Signature
from sklearn_service.validation import RowEncoder


@pytest.fixture(scope="module")
def signature() -> Signature:
    frame = penguins(2000, seed=1)
    return Signature.from_frame(frame[FEATURES], "classification", ["Adelie", "Chinstrap", "Gentoo"],
                                y=frame["species"])


def encoded(signature: Signature, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    rows = [{k: (None if pd.isna(v) else v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in frame[FEATURES].to_dict(orient="records")]
    classes = np.searchsorted(["Adelie", "Chinstrap", "Gentoo"], frame["species"]).astype(float)
    return RowEncoder(signature).matrix(rows, len(rows)), classes


def monitor(signature, registry=None, **kwargs) -> DriftMonitor:
    return DriftMonitor(signature, **{"window_rows": 1000, "min_rows": 100, **kwargs},
                        registry=registry or CollectorRegistry(), start=False, model="penguins")


def test_psi_is_the_textbook_formula_on_the_training_bins(signature):
    bins = Bins(signature)
    bill = bins.names.index("bill_length_mm")
    f = signature.features[1]
    live = np.array([30.0, 41.0, 44.0, 44.5, 60.0, np.nan])
    rows = np.full((len(live), len(signature.features)), np.nan)
    rows[:, 1] = live
    counts = bins.counts(bins.index(rows, np.zeros(len(live))))
    live_shares = np.bincount(np.searchsorted(f.stats["bins"], live[:5], side="right"),
                              minlength=len(f.stats["bins"]) + 1) / 5
    p, q = np.maximum(live_shares, EPSILON), np.maximum(f.stats["bin_shares"], EPSILON)
    assert bins.psi(counts)[bill] == pytest.approx(np.sum((p - q) * np.log(p / q)))  # the missing value left out
    assert bins.psi(counts, min_rows=6)[bill] == 0  # 5 present values: too few


def test_only_the_shifted_feature_and_the_changed_category_drift(signature):
    registry = CollectorRegistry()
    m = monitor(signature, registry)
    same = penguins(1000, seed=2)
    m.observe(*encoded(signature, same))
    m.publish()
    assert max(m.psi().values()) < 0.1 and m.rows == 1000

    shifted = penguins(1000, seed=3)
    shifted["bill_length_mm"] += 8
    shifted["island"] = np.where(np.arange(1000) % 10 < 7, "Torgersen", shifted["island"])
    m.observe(*encoded(signature, shifted))
    m.publish()
    psi = m.psi()
    assert {name for name, value in psi.items() if value > 0.2} == {"bill_length_mm", "island"}, psi
    model = {"model": "penguins"}  # every series is the model's (several share a service)
    published = {f: registry.get_sample_value("ml_feature_drift_psi", {**model, "feature": f}) for f in FEATURES}
    assert published == pytest.approx({f: psi[f] for f in FEATURES})
    assert registry.get_sample_value("ml_prediction_drift_psi", model) == pytest.approx(psi["prediction"])
    assert registry.get_sample_value("ml_drift_window_rows", model) == 1000


def test_an_unseen_category_is_a_bin_of_its_own(signature):
    m = monitor(signature)
    rows, classes = encoded(signature, penguins(1000, seed=4))
    rows[:100, 0] = -1  # 10% unseen islands
    m.observe(rows, classes)
    m.publish()
    assert m.psi()["island"] > 0.5 > m.psi()["sex"]


def test_the_window_keeps_the_last_rows_and_forgets_old_ones(signature):
    m = monitor(signature, window_rows=1000, window_minutes=1)
    drifted = penguins(600, seed=5)
    drifted["bill_length_mm"] += 8
    m.observe(*encoded(signature, drifted))
    m.publish(now=0)
    assert m.psi()["bill_length_mm"] > 0.2
    for second, seed in ((10, 6), (20, 7)):  # 1200 rows like training: the drifted ones slide out
        m.observe(*encoded(signature, penguins(600, seed=seed)))
        m.publish(now=second)
    assert m.rows == 1000 and m.psi()["bill_length_mm"] < 0.1
    assert m._counts.sum() == 1000 * len(m.bins.names)  # partial chunks trimmed exactly
    m.publish(now=71)  # the chunk from second 10 is older than a minute
    assert m.rows == 600
    m.publish(now=81)
    assert m.rows == 0 and max(m.psi().values()) == 0 and m._counts.sum() == 0


def test_every_series_exists_at_zero_from_start_up(signature):
    registry = CollectorRegistry()
    DriftMonitor(signature, 1000, registry=registry, start=False, model="penguins")
    samples = {(s.name, tuple(s.labels.values())): s.value for family in registry.collect() for s in family.samples}
    assert samples == {("ml_feature_drift_psi", ("penguins", f)): 0 for f in FEATURES} | {
        ("ml_prediction_drift_psi", ("penguins",)): 0, ("ml_drift_window_rows", ("penguins",)): 0}

