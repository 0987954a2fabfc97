"""Optional request/response logging for offline drift analysis, through `bentoml.monitor`.

Switched by the API service's `monitoring` section of configuration.yaml
(BentoML's own setting, off by default); BentoML's default monitor writes JSON
lines to `<options.log_path>/<name>/data/data.<worker>.log`, one per row. Values
are logged as clients sent them: categories by name (UNSEEN_TEXT for one never
seen in training), missing values as null, predictions as labels.

A row that cannot be written (a full disk) is dropped, counted in
ml_payload_log_dropped_total and logged once per interval (log_limit); serving goes
on, and rows are written again once there is space.
"""

from __future__ import annotations

import functools
import logging
import sys

import bentoml
import numpy as np

from sklearn_service.log_limit import limited
from sklearn_service.category_codes import decode
from sklearn_service.signature import Signature
from sklearn_service.user_input import RESERVED_NAMES, reserved_names, shown_list

MONITOR_NAME = "predictions"
UNSEEN_TEXT = "<unseen>"
DATA_LOGGER = "bentoml_monitor_data"  # BentoML's default monitor writes each row through this logger
logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def dropped_rows():
    """ml_payload_log_dropped_total, made once per process (in the worker: see metrics.py)."""
    from prometheus_client import Counter

    return Counter("ml_payload_log_dropped_total", "Payload log rows not written (e.g. a full disk)")


def row_not_written(handler: logging.StreamHandler, record: logging.LogRecord) -> None:
    """handleError of BentoML's payload log handlers (see sklearn_service.patches): the original printed
    '--- Logging error ---' and a traceback to stderr for every row, and counted nothing."""
    if record.name == DATA_LOGGER:
        dropped_rows().inc()
    path = getattr(handler, "baseFilename", None)
    limited(logger).warning("payload_log_write", "payload log rows not written to %s: %r", path, sys.exc_info()[1])
    if path is not None:
        _drop_unwritten(handler, path)


def _drop_unwritten(handler: logging.StreamHandler, path: str) -> None:
    """After a failed write, the row is dropped whole: the file's buffer would otherwise keep
    it and write it later, after rows logged since, and a part of its line may have reached
    the file. The file keeps only complete lines; the handler reopens it for the next row
    (called under the handler's lock)."""
    stream, handler.stream = handler.stream, None
    try:
        stream.close()  # flushing fails again; the buffer is dropped and the file closed
    except OSError:
        pass
    try:
        with open(path, "rb+") as f:
            end = f.seek(0, 2)
            start = max(0, end - 2**20)
            f.seek(start)
            tail = f.read()
            if tail and not tail.endswith(b"\n") and (b"\n" in tail or start == 0):
                f.truncate(start + tail.rfind(b"\n") + 1)  # truncating needs no space
    except OSError:
        pass


class _RequestRoleAccepted(logging.Filter):
    """BentoML warns about the endpoint column's role ("request") for every row it logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Role request is not officially supported")


def decoded_columns(signature: Signature, rows: np.ndarray) -> dict[str, list]:
    """Feature name -> the column's values as JSON values."""
    columns = {}
    for i, f in enumerate(signature.features):
        column = rows[:, i]
        if f.is_category:
            columns[f.name] = decode(column, f.category_list, UNSEEN_TEXT, None).tolist()
        else:  # numpy's stubs lack np.where(..., None, ...), which makes an object array
            columns[f.name] = np.where(np.isnan(column), None, column).tolist()  # type: ignore[call-overload]
    return columns


class PayloadLog:
    def __init__(self, enabled: bool, signature: Signature, tag: str = ""):
        """`tag`: the served model's tag, logged with each of its rows (several models share the log)."""
        self.enabled = enabled
        self.tag = tag
        self.signature = signature
        self.labels = None if signature.classes is None else np.array(signature.classes, dtype=object)
        if enabled and (reserved := reserved_names(signature.names)):
            # a model stored before such names were refused: its rows would overwrite the log's own columns
            logger.warning("payload log off: feature name(s) %s are the log's own columns (%s); retrain or "
                           "re-import the model with other names to log its requests", shown_list(reserved),
                           ", ".join(RESERVED_NAMES))
            self.enabled = False
        if self.enabled:
            dropped_rows()  # the series exists from start-up, at 0
            logging.getLogger("bentoml._internal.monitoring.base").addFilter(_RequestRoleAccepted())

    def write(self, endpoint: str, rows: np.ndarray, predictions: np.ndarray) -> None:
        if not self.enabled:  # skip even the no-op monitor: this runs on every request
            return
        try:
            self._write(endpoint, rows, predictions)
        except Exception as exc:  # e.g. its folder cannot be made: the answer is sent all the same
            dropped_rows().inc(len(rows))
            limited(logger).warning("payload_log_failed", "payload log rows not written: %r", exc, exc_info=exc)

    def _write(self, endpoint: str, rows: np.ndarray, predictions: np.ndarray) -> None:
        if self.labels is not None:
            predictions = self.labels[predictions.astype(int)]
        with bentoml.monitor(MONITOR_NAME) as monitor:
            monitor.log_batch([endpoint] * len(rows), name="endpoint", role="request", data_type="categorical")
            monitor.log_batch([self.tag] * len(rows), name="model_tag", role="request", data_type="categorical")
            columns = decoded_columns(self.signature, rows)
            for f in self.signature.features:
                monitor.log_batch(columns[f.name], name=f.name, role="feature",
                                  data_type="categorical" if f.is_category else "numerical")
            monitor.log_batch(np.asarray(predictions).tolist(), name="prediction", role="prediction",
                              data_type="categorical" if self.labels is not None else "numerical")
