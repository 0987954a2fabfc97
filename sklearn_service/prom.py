"""Prometheus metric families, made once per registry and shared by every served model.

prometheus_client refuses a second metric of the same name in one registry, and one
API worker serves several models (served_models.py): each model's ServiceMetrics and
DriftMonitor take their children, labelled by model, from the families made here.
"""

from __future__ import annotations

import threading

_made: dict[tuple[int, str], object] = {}
_lock = threading.Lock()


def family(registry, kind, name: str, documentation: str, labels: list[str], **kwargs):
    """The metric `name` of this registry (prometheus_client's default if None), made on first use
    with these arguments (a histogram keeps the buckets it was made with)."""
    from prometheus_client import REGISTRY

    registry = REGISTRY if registry is None else registry
    with _lock:
        found = _made.get((id(registry), name))
        if found is None:
            found = _made[(id(registry), name)] = kind(name, documentation, labels, registry=registry, **kwargs)
        return found
