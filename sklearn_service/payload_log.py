"""Optional request/response logging for offline drift analysis, through `bentoml.monitor`.

Switched by the API service's `monitoring` section of configuration.yaml
(BentoML's own setting, off by default); BentoML's default monitor writes JSON
lines to `<options.log_path>/<name>/data/data.<worker>.log`, one per row. Values
are logged as clients sent them: categories by name (UNSEEN_TEXT for one never
seen in training), missing values as null, predictions as labels.
"""

from __future__ import annotations

import bentoml
import numpy as np

from sklearn_service.signature import Signature, decode_categories

MONITOR_NAME = "predictions"
UNSEEN_TEXT = "<unseen>"


def decoded_columns(signature: Signature, rows: np.ndarray) -> dict[str, list]:
    """Feature name -> the column's values as JSON values."""
    columns = {}
    for i, f in enumerate(signature.features):
        column = rows[:, i]
        if f.is_category:
            columns[f.name] = decode_categories(column, f.categories, UNSEEN_TEXT, None).tolist()
        else:
            columns[f.name] = np.where(np.isnan(column), None, column).tolist()
    return columns


class PayloadLog:
    def __init__(self, enabled: bool, signature: Signature):
        self.enabled = enabled
        self.signature = signature
        self.labels = None if signature.classes is None else np.array(signature.classes, dtype=object)

    def write(self, endpoint: str, rows: np.ndarray, predictions: np.ndarray) -> None:
        if not self.enabled:  # skip even the no-op monitor: this runs on every request
            return
        if self.labels is not None:
            predictions = self.labels[predictions.astype(int)]
        with bentoml.monitor(MONITOR_NAME) as monitor:
            monitor.log_batch([endpoint] * len(rows), name="endpoint", role="request", data_type="categorical")
            columns = decoded_columns(self.signature, rows)
            for f in self.signature.features:
                monitor.log_batch(columns[f.name], name=f.name, role="feature",
                                  data_type="categorical" if f.is_category else "numerical")
            monitor.log_batch(np.asarray(predictions).tolist(), name="prediction", role="prediction",
                              data_type="categorical" if self.labels is not None else "numerical")
