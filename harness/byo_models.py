"""Models as users fit them themselves: DataFrame-fitted pipelines with a ColumnTransformer."""

from __future__ import annotations

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from harness.mixed_data import penguins

NUMBERS = ["bill_length_mm", "flipper_length_mm"]
CATEGORIES = ["island", "sex"]
# what --trust-types must name for an XGBoost or LightGBM model in a pipeline
XGBOOST_TYPES = ["xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"]
LIGHTGBM_TYPES = ["collections.OrderedDict", "lightgbm.basic.Booster", "lightgbm.sklearn.LGBMRegressor"]


def penguin_frame(rows: int = 300, seed: int = 0):
    """Features as a user's DataFrame holds them (numbers float, text object, booleans bool)."""
    frame = penguins(rows, seed)
    X = frame.drop(columns=["species"]).astype({"flipper_length_mm": float})
    return X, frame["species"]


def penguin_classifier():
    X, y = penguin_frame()
    prepare = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         CATEGORIES),
        ("flag", "passthrough", ["tagged"])])
    model = RandomForestClassifier(n_estimators=30, random_state=0)
    return Pipeline([("prepare", prepare), ("model", model)]).fit(X, y)


def flipper_regressor():
    X, _ = penguin_frame()
    X = X.dropna(subset=["flipper_length_mm"])
    y = X.pop("flipper_length_mm")
    prepare = ColumnTransformer([
        ("num", SimpleImputer(strategy="mean"), ["bill_length_mm"]),
        ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="unknown"),
                              OneHotEncoder(handle_unknown="ignore")), CATEGORIES)], remainder="drop")
    model = Pipeline([("prepare", prepare), ("model", GradientBoostingRegressor(random_state=0))])
    return model.fit(X, y), X.assign(flipper_length_mm=y)


def numpy_classifier():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return RandomForestClassifier(n_estimators=10, random_state=0).fit(X, X[:, 0] > 0), X
