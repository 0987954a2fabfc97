"""What a model requires to be served, checked by both the import (train.py) and the serving side: one
value per row, and the libraries outside scikit-learn it needs (recorded as its `requires`, with the
command that installs a missing one). Light: numpy and the standard library only, so the service
can import it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

# Libraries models come from that the service does not install by default: the extras file for each.
EXTRAS = {"xgboost": "requirements-xgboost.txt", "lightgbm": "requirements-lightgbm.txt",
          "catboost": "requirements-catboost.txt"}
# Installed with the service (requirements.txt): never recorded as a model's requirement.
BASE = {"sklearn", "numpy", "scipy", "pandas", "joblib", "threadpoolctl", "skops", "sklearn_service"}


def output_count(model, X) -> int:
    """How many values the model predicts per row: 1 for one target (shape (n,) or (n, 1)), more for a
    multi-output model, which the service cannot answer with one prediction per row."""
    return values_per_row(model.predict(X))


def values_per_row(predicted) -> int:
    predicted = np.asarray(predicted)
    return 1 if predicted.ndim <= 1 else int(np.prod(predicted.shape[1:]))


def children(obj):
    """(attribute, child) pairs of an estimator, container or object array, for walking a model."""
    if isinstance(obj, dict):
        return [(None, v) for v in obj.values()]
    if isinstance(obj, (list, tuple)):
        return [(None, v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [(None, v) for v in obj.ravel()] if obj.dtype == object else []
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return list(vars(obj).items())
    return []


def _root(obj) -> str:
    module = getattr(obj, "__module__", None) if callable(obj) and not hasattr(obj, "fit") else None
    return (module or type(obj).__module__ or "").split(".")[0]


def required_libraries(model) -> dict[str, str]:
    """{module: "distribution==version"} for the libraries outside the service's own whose classes or
    functions the model holds (xgboost, lightgbm, catboost, ...), walking every estimator in it."""
    roots, seen, stack = set(), set(), [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        roots.add(_root(obj))
        if hasattr(obj, "get_params") or isinstance(obj, (dict, list, tuple, np.ndarray)) or _root(obj) in BASE:
            stack.extend(child for _, child in children(obj))
    distributions = importlib.metadata.packages_distributions()
    return {root: f"{dist}=={importlib.metadata.version(dist)}"
            for root in sorted(roots - BASE - set(sys.stdlib_module_names) - {"builtins", ""})
            for dist in distributions.get(root, [])[:1]}


def missing_module(file: str, exc: ModuleNotFoundError) -> str:
    return f"{file} needs the module {exc.name!r}, which is not installed here: {install_hint(exc.name or '')}"


def install_hint(module: str) -> str:
    root = module.split(".")[0]
    if root in EXTRAS:
        return f"pip install -r {EXTRAS[root]}"
    return f"install the package that provides {root!r} where the service runs"


def stored_requirements(metadata: Mapping[str, Any]) -> dict[str, str]:
    """What a stored model's metadata says it requires: module -> requirement, as required_libraries() wrote it."""
    return cast(dict[str, str], metadata.get("requires", {}))


def missing_requirements(requires: dict[str, str]) -> str | None:
    """For the service at start-up: a line naming what the stored model needs and is not installed,
    with the command to run; None when everything is there."""
    missing = [module for module in requires if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return "; ".join(f"the model needs {requires[module]}, which is not installed: {install_hint(module)}"
                     for module in missing)
