"""Request and response bodies of the public API."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, Field, StrictFloat

# A row is either positional values or {feature name: value}. StrictFloat refuses
# strings and booleans; NaN and infinities are refused later with a clearer message.
Row = t.Union[t.List[StrictFloat], t.Dict[str, StrictFloat]]


class Prediction(BaseModel):
    prediction: float = Field(description="predicted value; for classifiers the class index (see /metadata)")


class Predictions(BaseModel):
    predictions: t.List[float] = Field(description="one prediction per instance, in request order")


class Probabilities(BaseModel):
    prediction: float
    probabilities: t.Dict[str, float] = Field(description="class name -> probability")
