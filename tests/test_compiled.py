"""The compiled path must give exactly scikit-learn's answers, and step aside when it cannot."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, make_classification
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from sklearn_service import serving_model
from sklearn_service.compiled import compile_pipeline
from sklearn_service.serving_model import ServingModel
from sklearn_service.signature import Signature
from sklearn_service.training import load_default_dataset, train

UNSEEN = "<unseen>"  # what the serving side decodes code -1 to: in no encoder's categories
NEVER_TRAINED = "never-trained"  # in the category list, absent from the training data


def split(loader):
    X, y = loader(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0)


# --- mixed-type data: the serving matrix and the frame scikit-learn sees ---------------------------

def mixed_frame(loader, n_numeric: int):
    """Numeric columns first, then two string columns (one binned from the data, one random); 5% NaN."""
    data = loader()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(data.data[:, :n_numeric], columns=[f"x{i}" for i in range(n_numeric)])
    binned = pd.qcut(data.data[:, n_numeric], 4, labels=["low", "mid", "high", "top"]).astype(object)
    frame["level"] = pd.Series(binned, dtype=object)  # object columns, as the serving side decodes them
    frame["colour"] = pd.Series(rng.choice(["red", "green", "blue"], len(frame)), dtype=object)
    for column in frame.columns:
        frame.loc[rng.random(len(frame)) < 0.05, column] = np.nan
    target = data.target_names[data.target] if loader is load_iris else data.target  # iris: string class labels
    return train_test_split(frame, target, test_size=0.3, random_state=0)


def category_lists(frame: pd.DataFrame) -> dict[int, list]:
    """Each string column's values, in an order unlike the encoders' sorted one."""
    return {i: sorted(frame[c].dropna().unique(), reverse=True) + [NEVER_TRAINED]
            for i, c in enumerate(frame.columns) if frame[c].dtype == object}


def encode(frame: pd.DataFrame, categories: dict[int, list]) -> np.ndarray:
    X = frame.to_numpy(dtype=object)
    out = np.full(X.shape, np.nan)
    for i in range(X.shape[1]):
        for row, value in enumerate(X[:, i]):
            if i not in categories:
                out[row, i] = value
            elif not pd.isna(value):
                out[row, i] = categories[i].index(value) if value in categories[i] else -1
    return out


def decode(X: np.ndarray, categories: dict[int, list], columns) -> pd.DataFrame:
    frame = pd.DataFrame(X, columns=columns)
    for i, values in categories.items():
        frame[columns[i]] = pd.Series([np.nan if np.isnan(code) else UNSEEN if code == -1 else values[int(code)]
                                       for code in X[:, i]], dtype=object)
    return frame


def edge_rows(X: np.ndarray, categories: dict[int, list], splits) -> np.ndarray:
    """All missing; unseen and never-trained categories; numeric values on, just below and above split points."""
    missing = np.full((1, X.shape[1]), np.nan)
    unseen, never_trained = X[:2].copy(), X[:2].copy()
    for i, values in categories.items():
        unseen[:, i] = -1
        never_trained[:, i] = values.index(NEVER_TRAINED)
    rows = [missing, unseen, never_trained]
    for k, (column, threshold) in enumerate(splits[:: max(1, len(splits) // 40)]):
        for value in (threshold, np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf),
                      float(np.float32(threshold))):
            row = X[k % len(X)].copy()
            row[column] = value
            rows.append(row[None])
    return np.concatenate(rows)


def numeric_splits(model, n_numeric: int) -> list[tuple[int, float]]:
    """(numeric input column, threshold) of the model's numeric splits; numeric columns lead its input."""
    if hasattr(model, "_predictors"):  # HistGradientBoosting moves its categorical features first
        shift = 0 if model.is_categorical_ is None else int(model.is_categorical_.sum())
        nodes = np.concatenate([p.nodes for iteration in model._predictors for p in iteration])
        nodes = nodes[(nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)]
        return [(int(f) - shift, float(t)) for f, t in zip(nodes["feature_idx"], nodes["num_threshold"])]
    if not hasattr(model, "estimators_"):
        return []
    trees = [estimator.tree_ for estimator in np.ravel(model.estimators_)]
    return [(int(f), float(t)) for tree in trees for f, t in zip(tree.feature, tree.threshold) if 0 <= f < n_numeric]


def assert_same_answers(pipeline, compiled, X, decoded):
    assert compiled is not None
    methods = [m for m in ("predict", "predict_proba") if hasattr(pipeline, m)]
    for method in methods:
        np.testing.assert_array_equal(getattr(compiled, method)(X), getattr(pipeline, method)(decoded(X)))
    for row in X[:: max(1, len(X) // 15)]:  # one row at a time, as most requests come
        for method in methods:
            np.testing.assert_array_equal(getattr(compiled, method)(row[None]),
                                          getattr(pipeline, method)(decoded(row[None])))


# --- the pipelines train.py builds for mixed-type data ---------------------------------------------

def prepare(num_cols, cat_cols, scale: bool):
    num = Pipeline([("impute", SimpleImputer(strategy="median"))] + ([("scale", StandardScaler())] if scale else []))
    cat = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                    ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    return ColumnTransformer([("num", num, num_cols), ("cat", cat, cat_cols)])


def prepare_for_hist(num_cols, cat_cols):
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan)
    return ColumnTransformer([("num", "passthrough", num_cols), ("cat", ordinal, cat_cols)])


TASKS = {"binary": (load_breast_cancer, 6), "multiclass": (load_iris, 3), "regression": (load_diabetes, 5)}
MODELS = {
    "forest": lambda task: (RandomForestRegressor if task == "regression" else RandomForestClassifier)(
        n_estimators=25, random_state=0),
    "boosting": lambda task: (GradientBoostingRegressor if task == "regression" else GradientBoostingClassifier)(
        n_estimators=25, random_state=0),
    "hist": lambda task: (HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier)(
        max_iter=25, random_state=0),
    "linear": lambda task: Ridge() if task == "regression" else LogisticRegression(max_iter=5000),
}


def fitted_mixed_pipeline(task: str, model: str):
    loader, n_numeric = TASKS[task]
    X_train, X_test, y_train, _ = mixed_frame(loader, n_numeric)
    num_cols, cat_cols = list(X_train.columns[:n_numeric]), list(X_train.columns[n_numeric:])
    estimator = MODELS[model](task)
    if model == "hist":
        pre = prepare_for_hist(num_cols, cat_cols)
        estimator.set_params(categorical_features=list(range(n_numeric, len(X_train.columns))))
    else:
        pre = prepare(num_cols, cat_cols, scale=model == "linear")
    pipeline = Pipeline([("prepare", pre), ("model", estimator)]).fit(X_train, y_train)
    return pipeline, X_test, n_numeric


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("task", list(TASKS))
def test_mixed_type_pipelines_match_sklearn_on_held_out_and_edge_rows(task, model):
    pipeline, X_test, n_numeric = fitted_mixed_pipeline(task, model)
    categories = category_lists(X_test)
    compiled = compile_pipeline(pipeline, categories)
    X = encode(X_test, categories)
    X = np.concatenate([X, edge_rows(X, categories, numeric_splits(pipeline[-1], n_numeric))])
    assert_same_answers(pipeline, compiled, X, lambda rows: decode(rows, categories, X_test.columns))
    if model == "linear":  # scikit-learn's own final step, fed the compiled preprocessing's matrix
        assert compiled.model is pipeline[-1]


def test_other_encoder_settings_match():
    """Columns by index, remainder passthrough, a constant fill value the categories lack, integer codes."""
    X_train, X_test, y_train, _ = mixed_frame(load_breast_cancer, 6)
    fill = Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="absent")),
                     ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2)
    pre = ColumnTransformer([("fill", fill, [6]), ("ordinal", ordinal, [7, 6]), ("gone", "drop", [0]),
                             ("scale", StandardScaler(), [1, 2])], remainder="passthrough")
    pipeline = make_pipeline(pre, ExtraTreesClassifier(n_estimators=20, random_state=0)).fit(X_train, y_train)
    categories = category_lists(X_test)
    X = encode(X_test, categories)
    X = np.concatenate([X, edge_rows(X, categories, [])])
    assert_same_answers(pipeline, compile_pipeline(pipeline, categories), X,
                        lambda rows: decode(rows, categories, X_test.columns))


def test_hist_gradient_boosting_on_numeric_category_codes():
    """Categories given as arbitrary numbers: unseen, negative, fractional and huge values, NaN."""
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=600), rng.choice([3.0, 7.0, 10.0, 250.0, 300.0], 600)])
    X[rng.random(600) < 0.1, 0] = np.nan
    y = (np.nan_to_num(X[:, 0]) + (X[:, 1] > 8) + rng.normal(size=600) > 0.5).astype(int)
    model = HistGradientBoostingClassifier(max_iter=20, categorical_features=[1], random_state=0).fit(X, y)
    probe = np.array([[0.1, v] for v in (3.0, 5.0, -1.0, 7.5, 300.0, 1e9, np.nan, 250.0)] + [[np.nan, np.nan]])
    assert_same_answers(model, compile_pipeline(model), np.concatenate([X[:50], probe]), lambda rows: rows)


def test_default_pipeline_matches_sklearn_on_the_test_split():
    X_train, X_test, _, _ = split(load_breast_cancer)
    pipeline = train(load_default_dataset()).pipeline
    assert_same_answers(pipeline, compile_pipeline(pipeline), X_test, lambda rows: rows)


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(StandardScaler(), ExtraTreesClassifier(n_estimators=30, random_state=0)),
    lambda: make_pipeline(SimpleImputer(), RandomForestClassifier(n_estimators=20, max_features=None, random_state=3)),
    lambda: make_pipeline(SimpleImputer(strategy="median"), GradientBoostingClassifier(n_estimators=20)),
    lambda: RandomForestClassifier(n_estimators=20, random_state=0),  # NaN follows each node's missing_go_to_left
])
def test_numeric_classifier_pipelines_match_with_missing_values(make):
    X_train, X_test, y_train, _ = split(load_breast_cancer)
    rng = np.random.default_rng(0)
    X_train, X_test = X_train.copy(), X_test.copy()
    X_train[rng.random(X_train.shape) < 0.05] = np.nan
    X_test[rng.random(X_test.shape) < 0.1] = np.nan
    pipeline = make().fit(X_train, y_train)
    assert_same_answers(pipeline, compile_pipeline(pipeline), X_test, lambda rows: rows)


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(SimpleImputer(), RandomForestRegressor(n_estimators=40, random_state=0)),
    lambda: GradientBoostingRegressor(n_estimators=30, random_state=0),
    lambda: HistGradientBoostingRegressor(max_iter=30, random_state=0),
])
def test_numeric_regressors_match_one_row_at_a_time(make):
    X_train, X_test, y_train, _ = split(load_diabetes)
    pipeline = make().fit(X_train, y_train)
    assert_same_answers(pipeline, compile_pipeline(pipeline), X_test, lambda rows: rows)


@pytest.mark.parametrize("make", [
    lambda: HistGradientBoostingClassifier(max_iter=10, random_state=0),
    lambda: GradientBoostingClassifier(n_estimators=10, random_state=0),
])
def test_many_classes_match(make):
    """Ten classes: softmax sums eight or more scores per row, where the memory layout changes the rounding."""
    X, y = make_classification(n_samples=800, n_features=12, n_informative=10, n_classes=10, random_state=0)
    model = make().fit(X[:600], y[:600])
    assert_same_answers(model, compile_pipeline(model), X[600:], lambda rows: rows)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_gradient_boosting_refuses_what_sklearn_refuses(bad):
    X_train, X_test, y_train, _ = split(load_diabetes)
    model = GradientBoostingRegressor(n_estimators=5).fit(X_train, y_train)
    X_test[0, 0] = bad
    with pytest.raises(ValueError):
        model.predict(X_test)
    with pytest.raises(ValueError):
        compile_pipeline(model).predict(X_test)


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(SimpleImputer(add_indicator=True), GradientBoostingClassifier(n_estimators=5)),
    lambda: KNeighborsClassifier(),
    lambda: GradientBoostingClassifier(n_estimators=5, init=DummyClassifier(strategy="stratified", random_state=0)),
])
def test_unsupported_pipelines_are_left_to_sklearn(make):
    X_train, X_test, y_train, _ = split(load_breast_cancer)
    pipeline = make().fit(X_train, y_train)
    assert compile_pipeline(pipeline) is None
    model = ServingModel(pipeline, Signature.from_estimator(pipeline))
    assert model.compiled is None
    np.testing.assert_array_equal(model.predict(X_test), pipeline.predict(X_test))


@pytest.mark.parametrize("categorical", [
    OneHotEncoder(handle_unknown="ignore", min_frequency=60, sparse_output=False),  # infrequent categories
    OneHotEncoder(handle_unknown="error", sparse_output=False),
    OrdinalEncoder(),  # handle_unknown="error"
    "passthrough",  # strings reach the forest
])
def test_unsupported_category_handling_is_left_to_sklearn(categorical):
    X_train, _, y_train, _ = mixed_frame(load_breast_cancer, 6)
    X_train = X_train.fillna({"level": "low", "colour": "red"})
    pre = ColumnTransformer([("num", SimpleImputer(), list(range(6))), ("cat", categorical, [6, 7])])
    pipeline = make_pipeline(pre, RandomForestClassifier(n_estimators=3))
    if categorical == "passthrough":
        pipeline.steps.insert(1, ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)))
    assert compile_pipeline(pipeline.fit(X_train, y_train), category_lists(X_train)) is None


def test_string_categories_without_category_lists_are_left_to_sklearn():
    X_train, _, y_train, _ = mixed_frame(load_breast_cancer, 6)
    X_train = X_train.astype({"level": "category", "colour": "category"})
    model = HistGradientBoostingClassifier(max_iter=5, categorical_features="from_dtype").fit(X_train, y_train)
    assert compile_pipeline(model) is None
    assert compile_pipeline(model, {9: ["a"]}) is None  # no such column


def routes(model: ServingModel, monkeypatch, sizes) -> list[str]:
    used: list[str] = []
    monkeypatch.setattr(model.pipeline, "predict", lambda X: used.append("sklearn") or np.zeros(len(X), int))
    monkeypatch.setattr(model.compiled, "predict", lambda X: used.append("compiled") or np.zeros(len(X), int))
    for rows in sizes:
        model.predict(np.zeros((rows, len(model.signature.features))))
    return used


def test_serving_model_routes_calls_by_size_and_checks_agreement(monkeypatch):
    """A forest is compiled at every size (its leaves found by scikit-learn's own C walk from
    NATIVE_MIN_ROWS rows); HistGradientBoosting, walked in numpy alone, and a pipeline ending in
    scikit-learn's own estimator, up to their max_rows."""
    result = train(load_default_dataset())
    model = ServingModel(result.pipeline, result.signature)
    assert model.compiled is not None and model.compiled.max_rows is None
    assert routes(model, monkeypatch, [1, 1000]) == ["compiled", "compiled"]

    X, y = load_breast_cancer(return_X_y=True)
    hist = ServingModel(HistGradientBoostingClassifier(max_iter=5).fit(X, y), result.signature)
    limit = hist.compiled.max_rows
    assert limit and routes(hist, monkeypatch, [limit, limit + 1]) == ["compiled", "sklearn"]

    linear = ServingModel(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), result.signature)
    limit = linear.compiled.max_rows
    assert limit and routes(linear, monkeypatch, [limit, limit + 1]) == ["compiled", "sklearn"]

    class Wrong:
        def predict_proba(self, X):
            return np.zeros((len(X), 2))

    monkeypatch.setattr(serving_model, "compile_pipeline", lambda *args, **kwargs: Wrong())
    assert ServingModel(result.pipeline, result.signature).compiled is None
    assert ServingModel(result.pipeline, result.signature, compiled=False).compiled is None


@pytest.mark.parametrize("make", [
    lambda: RandomForestClassifier(n_estimators=10, random_state=0),
    lambda: ExtraTreesClassifier(n_estimators=10, random_state=0),
    lambda: GradientBoostingRegressor(n_estimators=10, random_state=0),
])
def test_native_and_numpy_walks_find_the_same_leaves(make):
    """Batches from NATIVE_MIN_ROWS rows find leaves with Tree.apply, smaller ones walk in numpy: the
    same leaves for every row, missing values included where the model takes them."""
    from sklearn_service.compiled_trees import NATIVE_MIN_ROWS, compile_estimator, float32_input

    X, y = load_breast_cancer(return_X_y=True)
    takes_nan = not isinstance(make(), GradientBoostingRegressor)
    if takes_nan:
        X = X.copy()
        X[np.random.RandomState(0).rand(*X.shape) < 0.1] = np.nan
    compiled = compile_estimator(make().fit(X, y))
    rows = float32_input(X[:200], allow_nan=takes_nan)
    small = NATIVE_MIN_ROWS - 1
    walked = np.hstack([compiled.trees.leaves(rows[i:i + small]) for i in range(0, len(rows), small)])
    np.testing.assert_array_equal(compiled.trees.leaves(rows), walked)


def test_serving_model_compiles_mixed_pipelines_trained_here():
    from harness.mixed_data import penguins
    from sklearn_service.csv_data import Dataset, prepare_features

    frame = penguins(300)
    X, kinds, _ = prepare_features(frame.drop(columns=["species"]))
    for kind in ("random_forest", "hist_gradient_boosting", "gradient_boosting"):
        result = train(Dataset(X, frame["species"].astype(object), "penguins", kinds), kind=kind)
        model = ServingModel(result.pipeline, result.signature)
        assert model.compiled is not None, kind
        rows = serving_model.probe_rows(result.signature, 64, seed=3)
        expected = result.pipeline.predict_proba(result.signature.to_model_input(rows))
        np.testing.assert_array_equal(model.predict_proba(rows), expected)
        labels = result.pipeline.predict(result.signature.to_model_input(rows))
        np.testing.assert_array_equal(np.asarray(result.pipeline.classes_)[model.predict(rows).astype(int)], labels)


def per_call_ms(predict, X, calls: int = 15) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict(X)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


@pytest.mark.parametrize("model", list(MODELS))
def test_compiled_calls_are_several_times_faster_than_sklearn(model):
    """What the compiled path is for: one call of 1 or 64 rows takes a fraction of scikit-learn's
    (50-600 times less when measured on a busy 2-core machine; 5 times is the bound), same answers."""
    pipeline, X_test, _ = fitted_mixed_pipeline("binary", model)
    categories = category_lists(X_test)
    compiled = compile_pipeline(pipeline, categories)
    X = encode(X_test, categories)[:64]
    for rows in (X[:1], X):
        frame = decode(rows, categories, X_test.columns)
        np.testing.assert_array_equal(compiled.predict_proba(rows), pipeline.predict_proba(frame))
        fast, reference = per_call_ms(compiled.predict_proba, rows), per_call_ms(pipeline.predict_proba, frame)
        assert 5 * fast < reference, f"{model}, {len(rows)} rows: compiled {fast:.3f} ms, scikit-learn {reference:.3f} ms"
