"""configuration.yaml: BentoML's per-service runtime settings plus this project's own.

BentoML's CLI validates a BENTOML_CONFIG file against its v1 schema at import, so a
`services:` (v2) file cannot be passed that way. Instead each service's section is
handed to its `@bentoml.service(...)` decorator, where BentoML validates it against
its v2 schema. SERVICE_CONFIG points at another file (tests, deployments).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "configuration.yaml"

# For keys a configuration file leaves out; configuration.yaml documents each one.
APP_DEFAULTS: dict[str, Any] = {"models": None, "default_model": None,
                                "max_batch_rows": 1000, "compiled_trees": True, "max_queued_rows": 16384,
                                "runner_stall_seconds": 1.0, "runner_dead_seconds": 30, "max_body_bytes": 8 * 2**20,
                                "unknown_categories": "accept",
                                "drift": {"enabled": True, "window_rows": 10000, "window_minutes": 60, "min_rows": 500},
                                "client_timeout_seconds": 10, "skip_fixes": [],
                                "auth": {"api_key": None, "protect_metrics": False},
                                "grpc": {"enabled": True, "host": "0.0.0.0", "port": 8001}}


@lru_cache(maxsize=1)
def load() -> dict:
    path = Path(os.environ.get("SERVICE_CONFIG", DEFAULT_PATH))
    with open(path) as f:
        return yaml.safe_load(f) or {}


def service(name: str) -> dict:
    """The decorator arguments for one service (without `batching`, which belongs to its APIs)."""
    section = dict(load().get("services", {}).get(name, {}))
    section.pop("batching", None)
    return section


def batching(name: str) -> dict:
    """Adaptive-batching limits for a service's batchable APIs: max_batch_size, max_latency_ms."""
    section = load().get("services", {}).get(name, {}).get("batching", {})
    return {k: section[k] for k in ("max_batch_size", "max_latency_ms") if k in section}


def app() -> dict:
    """This project's settings: the file's `app:` section over APP_DEFAULTS."""
    section = load().get("app") or {}
    nested = {key: {**APP_DEFAULTS[key], **(section.get(key) or {})} for key in ("auth", "drift", "grpc")}
    return {**APP_DEFAULTS, **section, **nested}
