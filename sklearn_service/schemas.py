"""Request and response bodies of the public API, typed from the model's signature."""

from __future__ import annotations

import typing as t

import bentoml
import numpy as np
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr, WithJsonSchema

from sklearn_service.signature import Signature

# One JSON value of a row. Validation against the signature (validation.py) names the
# feature in its error, so the request type itself accepts any scalar.
Value = StrictBool | StrictInt | StrictFloat | StrictStr | None
RawRow = list[Value] | dict[str, Value]
# What the runner's APIs answer. The declared media type spares BentoML a JSON schema of the array
# built for every response just to name it (~12 % of the runner's CPU).
JsonArray = t.Annotated[np.ndarray, bentoml.validators.ContentType("application/json")]
# A prediction: a number, or the class label as trained (numbers as floats, strings as strings).
Label = StrictFloat | StrictStr | StrictBool


def label_value(label):
    """A class label as the API answers it: numbers as floats (the seed's {"prediction": 0.0})."""
    return float(label) if isinstance(label, (int, float)) and not isinstance(label, bool) else label


def row_type(signature: Signature):
    """A row by feature name or in feature order, documented from the signature: what
    /docs.json shows, Swagger's "Try it out" sends and client generators read."""
    named = signature.json_schema()
    by_position = {"type": "array", "minItems": len(signature.features), "maxItems": len(signature.features),
                   "title": "Positional",
                   "description": "feature values in this order: " + ", ".join(signature.names),
                   "items": {"anyOf": [{"type": t} for t in ("number", "string", "boolean", "null")]}}
    # oneOf, not anyOf: BentoML flattens anyOf to its first branch in /schema.json, and its
    # Python client would then reshape a positional row as an object.
    return t.Annotated[RawRow, WithJsonSchema({"oneOf": [named, by_position], "example": named.get("example")})]


class Prediction(BaseModel):
    prediction: Label = Field(description="predicted value; for classifiers the class label as trained")


class Predictions(BaseModel):
    predictions: list[Label] = Field(description="one prediction per instance, in request order")


class Probabilities(BaseModel):
    prediction: Label
    probabilities: dict[str, float] = Field(description="class label -> probability")
