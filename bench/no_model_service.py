"""BentoML's own ceiling: the same API shape and configuration as service.py, no model."""

from __future__ import annotations

import bentoml

from sklearn_service import config
from sklearn_service.schemas import Prediction, RawRow


@bentoml.service(**config.service("SklearnService"))
class NoModelService:
    @bentoml.api
    async def predict(self, features: RawRow) -> Prediction:
        return Prediction(prediction=0.0)
