"""Models' signatures and rows that the V2 codec tests share (REST's JSON and binary, gRPC's contents)."""

from __future__ import annotations

from sklearn.datasets import load_breast_cancer

from sklearn_service.signature import Feature, Signature

NAMES = [str(n) for n in load_breast_cancer().feature_names]
CANCER = Signature([Feature(name) for name in NAMES])
PENGUINS = Signature([Feature("island", "category", "object", False, ["Biscoe", "Dream"]),
                      Feature("bill", "number", "float64", True)], takes_frame=True)
OUTPUTS = ("predict", "predict_proba")
ROW = [1.0] * 30
