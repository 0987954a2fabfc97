"""Runner cost of /predict_proba's call (predict_all: the model's predict and predict_proba) against
predict_proba alone, per call of 1 and 64 rows: python bench/proba_cost.py"""

from __future__ import annotations

import sys
import timeit
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sklearn_service.serving_model import ServingModel  # noqa: E402
from sklearn_service.training import load_default_dataset, train  # noqa: E402


def median_ms(call, X, calls: int = 500) -> float:
    return 1000 * float(np.median(timeit.repeat(lambda: call(X), number=1, repeat=calls)))


def main() -> None:
    warnings.simplefilter("ignore")
    data = load_default_dataset()
    X = data.X.to_numpy()
    for kind in ("random_forest", "logistic_regression"):
        result = train(data, kind=kind)
        served = ServingModel(result.pipeline, result.signature)
        alone = served.compiled or result.pipeline  # what the old predict_proba call ran
        for rows in (1, 64):
            print(f"{kind}, {rows} rows: predict_proba alone {median_ms(alone.predict_proba, X[:rows]):.3f} ms, "
                  f"predict + predict_proba {median_ms(served.predict_all, X[:rows]):.3f} ms")


if __name__ == "__main__":
    main()
