"""Request and response bodies of the public API, typed from the model's signature."""

from __future__ import annotations

import typing as t

import bentoml
import numpy as np
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr, WithJsonSchema

from sklearn_service.signature import Signature

# One JSON scalar: a class to explain, and what a row's values are documented as.
Value = StrictBool | StrictInt | StrictFloat | StrictStr | None
# A row as the request type takes it: its values are checked against the signature (validation.py),
# whose errors name the feature. Checking each value against Value here as well cost 5x parsing the
# body (17 ms against 3.5 ms for 1,000 rows of 30 numbers).
RawRow = list[t.Any] | dict[str, t.Any]
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


class ExplainedPrediction(BaseModel):
    prediction: Label = Field(description="the model's prediction, as /predict answers it")
    output: str = Field(description="the output explained: probability (of explained_class) for forests, log_odds "
                                    "for boosting and logistic classifiers, value for regressors")
    explained_class: Label | None = Field(description="the class whose output is explained (default: the "
                                                           "predicted one); null for regressors")
    value: float = Field(description="that output for this row: base_value + the sum of all contributions")
    base_value: float = Field(description="its expected value over the training data, before any feature is known")
    contributions: dict[str, float] = Field(description="feature -> what it adds to the output (a category "
                                                          "feature is one number), largest magnitude first")
    rest: float = Field(description="the sum of the contributions `top` left out (0 when none are)")


class ExplainedPredictions(BaseModel):
    explanations: list[ExplainedPrediction] = Field(description="one per instance, in request order")
