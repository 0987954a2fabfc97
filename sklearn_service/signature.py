"""One input signature per model: the single source of truth for validation, the
OpenAPI schema, metrics, drift statistics and the payload log.

Per feature it records the name, the kind (number / integer / boolean / category),
the dtype the model was fitted on, whether missing values are allowed, the
categories seen in training with their shares, numeric statistics with quantile
bins, and one real example row. It is stored as JSON-able model metadata.

Rows cross from the API service to the runner as one float64 matrix: numbers as
they are, categories as codes into the feature's category list (UNSEEN_CODE for a
value never seen in training, NaN for missing). `to_model_input` turns that matrix
back into what the model was fitted on: the array itself, or a DataFrame with the
training column names and dtypes. scikit-learn's encoders treat every unseen value
alike, so one sentinel per feature stands for all of them exactly.
"""

from __future__ import annotations

import math
import typing as t
from dataclasses import asdict, dataclass, field

import numpy as np

KINDS = ("number", "integer", "boolean", "category")
UNSEEN_CODE = -1.0
UNSEEN_LABEL = "\x00unseen category"  # a string no encoder was fitted on
QUANTILES = np.linspace(0.1, 0.9, 9)  # inner decile edges: the bins of drift statistics (PSI)


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
        """From training or reference data (a DataFrame whose columns are the model's features)."""
        kinds = kinds or {}
        features = [_describe_column(str(name), X[name], kinds.get(str(name))) for name in X.columns]
        return cls(features, task, _json_list(classes), takes_frame, _example_row(X, {f.name: f.kind for f in features}),
                   _target_stats(y, task, classes) if y is not None else None)

    @classmethod
    def from_estimator(cls, model) -> "Signature":
        """From a fitted estimator alone: names and count; features that a fitted encoder
        (OneHotEncoder, OrdinalEncoder in a ColumnTransformer) encodes are categories with its
        categories, every other feature a number."""
        names = getattr(model, "feature_names_in_", None)
        if names is None:
            names = [f"x{i}" for i in range(int(model.n_features_in_))]
        names = [str(n) for n in names]
        encoded = _encoded_categories(model, names)
        # Whether the model takes missing values is unknown: let it decide (a row it raises on
        # gets a 422 of its own, see ServingModel).
        features = [Feature(name, "category", "object", True, [v for v in encoded[name] if not _is_missing(v)])
                    if name in encoded else Feature(name, nullable=True) for name in names]
        classes = getattr(model, "classes_", None)
        task = "classification" if classes is not None else "regression"
        signature = cls(features, task, _json_list(classes), hasattr(model, "feature_names_in_"))
        signature.example = {f.name: f.categories[0] if f.is_category else 0.0 for f in features}
        return signature

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Signature | None":
        """The stored signature; None when the model was saved without one."""
        if "signature" in metadata:
            data = dict(metadata["signature"])
            data["features"] = [Feature(**f) for f in data["features"]]
            return cls(**data)
        if "feature_names" in metadata:  # models saved before signatures: every feature a number
            stats = metadata.get("feature_stats", {})
            return cls([Feature(n, stats=stats.get(n)) for n in metadata["feature_names"]],
                       metadata.get("task", "classification"),
                       list(range(len(metadata["class_names"]))) if metadata.get("class_names") else None)
        return None

    def add_known_categories(self, inferred: "Signature") -> None:
        """Categories the model's encoders know but the reference rows lack (share 0): without
        them such a value would be served as unseen, not as the model knows it."""
        known = {f.name: f.categories for f in inferred.features if f.is_category}
        for f in self.features:
            extra = [c for c in known.get(f.name, []) if f.is_category and c not in f.categories]
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
        row = [float(f.categories.index(self.example[f.name])) if f.is_category and f.name in self.example
               else float(self.example.get(f.name, np.nan)) for f in self.features]
        return np.array([row])

    def category_columns(self) -> dict[int, list]:
        return {i: f.categories for i, f in enumerate(self.features) if f.is_category}

    # ---- the runner side: encoded matrix -> model input ---------------------------------
    def to_model_input(self, X: np.ndarray):
        if not self.takes_frame:
            return X
        import pandas as pd

        columns = {}
        for i, f in enumerate(self.features):
            column = X[:, i]
            missing = np.isnan(column)
            if f.is_category:
                decoded = decode_categories(column, f.categories, _unseen_value(f.categories), np.nan)
                columns[f.name] = pd.Series(decoded, dtype=object)
            elif f.dtype == "int64" and not missing.any():
                columns[f.name] = column.astype(np.int64)
            elif f.dtype == "bool" and not missing.any():
                columns[f.name] = column.astype(bool)
            elif f.dtype == "bool":
                columns[f.name] = pd.Series(np.where(missing, None, column.astype(bool)), dtype=object).fillna(np.nan)
            else:
                columns[f.name] = column
        return pd.DataFrame(columns)

    # ---- the API side: what a valid request looks like --------------------------------------
    def json_schema(self) -> dict:
        """One row by feature name, as JSON Schema: types, nullability, categories as enums."""
        properties = {}
        for f in self.features:
            if f.is_category:
                prop: dict = {"type": "string" if all(isinstance(c, str) for c in f.categories) else
                              ["string", "number"], "enum": list(f.categories)}
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


# ---- helpers ------------------------------------------------------------------------------------

def _encoded_categories(model, names: list[str]) -> dict[str, list]:
    """feature name -> categories of the encoder that a ColumnTransformer in `model` applies to it."""
    found = {}
    steps = [s for _, s in model.steps] if hasattr(model, "steps") else [model]
    for step in steps:
        for _, transformer, columns in getattr(step, "transformers_", []):
            inner = [s for _, s in transformer.steps] if hasattr(transformer, "steps") else [transformer]
            encoder = next((s for s in inner if hasattr(s, "categories_")), None)
            if encoder is None or isinstance(columns, (str, int, slice)) or callable(columns):
                continue
            columns = [names[c] if isinstance(c, (int, np.integer)) else str(c) for c in columns]
            if len(columns) == len(encoder.categories_):
                found.update({c: _json_list(cats) for c, cats in zip(columns, encoder.categories_)})
        break  # only the first step sees the model's own features
    return found


def decode_categories(codes: np.ndarray, categories: list, unseen, missing) -> np.ndarray:
    """Category codes back to values (object array): UNSEEN_CODE -> `unseen`, NaN -> `missing`."""
    values = np.array([*categories, missing, unseen], dtype=object)  # UNSEEN_CODE (-1) picks the last
    return values[np.where(np.isnan(codes), len(categories), codes).astype(np.int64)]


def _unseen_value(categories: list):
    numbers = [c for c in categories if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if numbers and len(numbers) == len(categories):
        return max(numbers) + 1  # a number none of the categories is
    return UNSEEN_LABEL


def infer_kind(column) -> str:
    import pandas as pd

    values = column.dropna()
    if pd.api.types.is_bool_dtype(column) or (len(values) and values.map(type).eq(bool).all()):
        return "boolean"
    if pd.api.types.is_integer_dtype(column):
        return "integer"
    if pd.api.types.is_numeric_dtype(column):  # whole numbers with gaps read as floats are integers too
        whole = len(values) > 0 and bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
        return "integer" if whole else "number"
    return "category"


def _describe_column(name: str, column, kind: str | None) -> Feature:
    import pandas as pd

    kind = kind or infer_kind(column)
    values = column.dropna()
    feature = Feature(name, kind, _model_dtype(column), bool(column.isna().any()))
    if kind == "category":
        shares = values.value_counts(normalize=True, sort=False)
        ordered = sorted(shares.index, key=lambda v: (str(type(v)), v))
        feature.categories = _json_list(ordered)
        feature.category_shares = [float(shares[v]) for v in ordered]
        return feature
    numbers = pd.to_numeric(values, errors="coerce").astype(float).dropna().to_numpy()
    if len(numbers):
        feature.stats = numeric_stats(numbers)
    return feature


def numeric_stats(numbers: np.ndarray) -> dict:
    """Range, moments and decile bins (inner edges, and the share of training rows in each of the
    len(bins) + 1 bins) of a number column."""
    edges = np.unique(np.quantile(numbers, QUANTILES))
    return {"min": float(numbers.min()), "max": float(numbers.max()), "mean": float(numbers.mean()),
            "std": float(numbers.std(ddof=1)) if len(numbers) > 1 else 0.0,
            "bins": edges.tolist(), "bin_shares": bin_shares(numbers, edges).tolist()}


def bin_shares(numbers: np.ndarray, edges: np.ndarray | list) -> np.ndarray:
    """Share of values per bin: up to the first edge, between consecutive edges, above the last."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), numbers, side="right"), minlength=len(edges) + 1)
    return counts / max(len(numbers), 1)


def _model_dtype(column) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int64"
    if pd.api.types.is_numeric_dtype(column):
        return "float64"
    return "object"


def _target_stats(y, task: str, classes) -> dict:
    if task == "classification":
        shares = y.value_counts(normalize=True)
        return {"class_shares": [float(shares.get(c, 0.0)) for c in classes]}
    return numeric_stats(np.asarray(y, dtype=float))


def _example_row(X, kinds: dict) -> dict:
    """The first complete training row, as a client sends it (booleans true/false, whole numbers as such)."""
    complete = X.dropna()
    row = (complete if len(complete) else X).iloc[0]
    convert = {"boolean": bool, "integer": int}
    return {str(k): convert.get(kinds.get(str(k)), lambda v: v)(_json_value(v))
            for k, v in row.items() if not _is_missing(v)}


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_value(value):
    return value.item() if isinstance(value, np.generic) else value


def _json_list(values) -> list | None:
    return None if values is None else [_json_value(v) for v in values]


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def describe(signature: Signature) -> t.Iterator[str]:
    """Lines for people: one per feature, as train.py prints them."""
    for f in signature.features:
        extra = f"{len(f.categories)} categories" if f.is_category else \
            (f"{f.stats['min']:g} .. {f.stats['max']:g}" if f.stats else "")
        yield f"  {f.name}: {f.kind}{', missing values' if f.nullable else ''}{', ' + extra if extra else ''}"


def stored_signature(model) -> Signature:
    """A stored model's signature; for a model saved without one, inferred from the estimator."""
    return describe_stored(model)[0]


def describe_stored(model) -> tuple[Signature, str]:
    """A stored model's signature and model kind; a model saved without metadata is loaded once
    to infer both."""
    metadata = model.info.metadata
    found = Signature.from_metadata(metadata)
    if found is not None and "model_kind" in metadata:
        return found, metadata["model_kind"]
    import bentoml

    estimator = bentoml.sklearn.load_model(model)
    return found or Signature.from_estimator(estimator), metadata.get("model_kind") or type(estimator).__name__
