"""A signature from a fitted estimator alone, for a model that comes without reference data.

Names and count come from the estimator; a feature that a fitted encoder (OneHotEncoder,
OrdinalEncoder in a ColumnTransformer) encodes is a category with that encoder's categories,
every other feature a number.
"""

from __future__ import annotations

import numpy as np

from sklearn_service.category_codes import is_missing_value
from sklearn_service.signature import Feature, Signature, json_list, json_value


def signature_from_estimator(model) -> Signature:
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        names = [f"x{i}" for i in range(int(model.n_features_in_))]
    names = [str(n) for n in names]
    encoded = _encoded_categories(model, names)
    # Whether the model takes missing values is unknown: let it decide (a row it raises on
    # gets a 422 of its own, see ServingModel).
    features = [Feature(name, "category", "object", True, [v for v in encoded[name] if not is_missing_value(v)])
                if name in encoded else Feature(name, nullable=True) for name in names]
    classes = getattr(model, "classes_", None)
    task = "classification" if classes is not None else "regression"
    signature = Signature(features, task, json_list(classes), hasattr(model, "feature_names_in_"))
    signature.example = {f.name: f.category_list[0] if f.is_category else 0.0 for f in features}
    return signature


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
                found.update({c: [json_value(v) for v in cats] for c, cats in zip(columns, encoder.categories_)})
        break  # only the first step sees the model's own features
    return found
