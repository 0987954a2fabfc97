"""Optional request/response logging for offline drift analysis, through `bentoml.monitor`.

Switched by the API service's `monitoring` section of configuration.yaml
(BentoML's own setting, off by default); BentoML's default monitor writes JSON
lines to `<options.log_path>/<name>/data/data.<worker>.log`, one per row.
"""

from __future__ import annotations

import bentoml
import numpy as np

MONITOR_NAME = "predictions"


class PayloadLog:
    def __init__(self, enabled: bool, feature_names: list[str]):
        self.enabled = enabled
        self.feature_names = feature_names

    def write(self, endpoint: str, rows: np.ndarray, predictions: np.ndarray) -> None:
        if not self.enabled:  # skip even the no-op monitor: this runs on every request
            return
        with bentoml.monitor(MONITOR_NAME) as monitor:
            monitor.log_batch([endpoint] * len(rows), name="endpoint", role="request", data_type="categorical")
            for column, name in enumerate(self.feature_names):
                monitor.log_batch(rows[:, column].tolist(), name=name, role="feature", data_type="numerical")
            monitor.log_batch(np.asarray(predictions, dtype=float).tolist(), name="prediction",
                              role="prediction", data_type="numerical")
