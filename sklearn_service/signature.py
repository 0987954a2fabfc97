"""One input signature per model: the single source of truth for validation, the
OpenAPI schema, metrics, drift statistics and the payload log.

This module owns the data model: per feature the name, the kind (number / integer /
boolean / category), the dtype the model was fitted on, whether missing values are
allowed, the categories seen in training with their shares, numeric statistics with
quantile bins; one real example row; its JSON-able form in the model's metadata, and
the JSON Schema of a request row. Building one lives beside it: from data in
profiling.py, from a fitted estimator in estimator_signature.py; turning the serving
matrix (category codes: category_codes.py) back into the model's input in
model_input.py. numpy only: the API service imports this.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from sklearn_service.category_codes import encode
from sklearn_service.model_input import to_model_input

KINDS = ("number", "integer", "boolean", "category")


@dataclass
class Feature:
    name: str
    kind: str = "number"
    dtype: str = "float64"          # what the model was fitted on: float64, int64, bool, object
    nullable: bool = False
    categories: list | None = None  # in code order
    category_shares: list[float] | None = None
    unseen_categories: str = "accepted"  # or "refused": the model raises on values it has not seen
    stats: dict | None = None        # min, max, mean, std, bins (edges), bin_shares

    @property
    def is_category(self) -> bool:
        return self.kind == "category"

    @property
    def category_list(self) -> list:
        """The categories of a category feature, in code order (every category feature has them)."""
        if self.categories is None:
            raise ValueError(f"feature {self.name!r} has no categories: it is a {self.kind} feature")
        return self.categories


@dataclass
class Signature:
    features: list[Feature]
    task: str = "classification"
    classes: list | None = None          # labels as trained, in the model's classes_ order
    takes_frame: bool = False            # fitted on a DataFrame: rows reach it as one
    example: dict = field(default_factory=dict)
    prediction_stats: dict | None = None  # training distribution of the target, for prediction drift

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_frame(cls, X, task: str, classes=None, takes_frame: bool = True, kinds: dict | None = None,
                   y=None) -> "Signature":
        """From training or reference data (a DataFrame whose columns are the model's features): profiling.py."""
        from sklearn_service.profiling import signature_from_frame

        return signature_from_frame(X, task, classes, takes_frame, kinds, y)

    @classmethod
    def from_estimator(cls, model) -> "Signature":
        """From a fitted estimator alone: estimator_signature.py."""
        from sklearn_service.estimator_signature import signature_from_estimator

        return signature_from_estimator(model)

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Signature | None":
        """The stored signature; None when the model was saved without one."""
        if "signature" in metadata:
            return cls.from_dict(metadata["signature"])
        if "feature_names" in metadata:  # models saved before signatures: every feature a number
            stats = metadata.get("feature_stats", {})
            return cls([Feature(n, stats=stats.get(n)) for n in metadata["feature_names"]],
                       metadata.get("task", "classification"),
                       list(range(len(metadata["class_names"]))) if metadata.get("class_names") else None)
        return None

    @classmethod
    def from_dict(cls, data: dict) -> "Signature":
        """From its to_metadata() form."""
        data = dict(data)
        data["features"] = [Feature(**f) for f in data["features"]]
        return cls(**data)

    def add_known_categories(self, inferred: "Signature") -> None:
        """Categories the model's encoders know but the reference rows lack (share 0): without
        them such a value would be served as unseen, not as the model knows it."""
        known = {f.name: f.category_list for f in inferred.features if f.is_category}
        for f in self.features:
            extra = [c for c in known.get(f.name, []) if f.is_category and c not in f.category_list]
            f.categories = f.categories and [*f.categories, *extra]
            f.category_shares = f.category_shares and [*f.category_shares, *[0.0] * len(extra)]

    def to_metadata(self) -> dict:
        """JSON-able, without None values (BentoML's model store refuses them)."""
        return _drop_none(asdict(self))

    # ---- facts the service uses -----------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric_only(self) -> bool:
        return not any(f.is_category for f in self.features)

    def example_matrix(self) -> np.ndarray:
        """The example row, encoded as the runner receives rows."""
        row = [encode([self.example[f.name]], f.category_list)[0] if f.is_category and f.name in self.example
               else float(self.example.get(f.name, np.nan)) for f in self.features]
        return np.array([row])

    def category_columns(self) -> dict[int, list]:
        return {i: f.category_list for i, f in enumerate(self.features) if f.is_category}

    # ---- the runner side: encoded matrix -> model input ---------------------------------
    def to_model_input(self, X: np.ndarray):
        """The encoded rows as the model was fitted on them (model_input.py)."""
        return to_model_input(self, X)

    # ---- the API side: what a valid request looks like --------------------------------------
    def json_schema(self) -> dict:
        """One row by feature name, as JSON Schema: types, nullability, categories as enums."""
        properties = {}
        for f in self.features:
            if f.is_category:
                prop: dict = {"type": "string" if all(isinstance(c, str) for c in f.category_list) else
                              ["string", "number"], "enum": list(f.category_list)}
            else:
                prop = {"type": {"number": "number", "integer": "integer", "boolean": "boolean"}[f.kind]}
                if f.stats and f.kind != "boolean":
                    prop["description"] = f"trained on {f.stats['min']:g} .. {f.stats['max']:g}"
            if f.nullable:
                prop = {"anyOf": [prop, {"type": "null"}]} if "enum" not in prop else \
                    {**prop, "enum": [*prop["enum"], None]}
            properties[f.name] = {"title": f.name, **prop}
        schema = {"type": "object", "title": "Features", "properties": properties,
                  "required": [f.name for f in self.features if not f.nullable],
                  "additionalProperties": False}
        if self.example:
            schema["example"] = self.example
        return schema


# ---- JSON values ---------------------------------------------------------------------------------

def json_value(value):
    return value.item() if isinstance(value, np.generic) else value


def json_list(values) -> list | None:
    return None if values is None else [json_value(v) for v in values]


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
