"""The seed document's FastAPI server, unchanged but for where model.pkl is read from."""

import os

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
model = joblib.load(os.environ.get("MODEL_PKL", "model.pkl"))


class PredictionInput(BaseModel):
    features: list[float]


@app.post("/predict")
async def predict(input_data: PredictionInput):
    features = np.array(input_data.features).reshape(1, -1)
    prediction = model.predict(features)
    return {"prediction": float(prediction[0])}
