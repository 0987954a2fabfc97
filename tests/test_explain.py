"""Exact contributions: equal to shap's on the pipelines training.py builds, additive, refused
for models they cannot be exact for. shap is a test tool only; the service never imports it."""

from __future__ import annotations

import functools
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shap
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, GradientBoostingRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestClassifier
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from harness.mixed_data import FEATURES, penguins
from sklearn_service import explain
from sklearn_service.category_codes import UNSEEN_CODE
from sklearn_service.csv_data import Dataset, prepare_features
from sklearn_service.drift_report import encode
from sklearn_service.explain import Explainer, NotExplainable, ranked
from sklearn_service.signature import Signature
from sklearn_service.training import load_default_dataset, train

HELD_OUT = 25
TOLERANCE = 1e-6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """HistGradientBoosting's OpenMP threads crawl on a busy machine once shap (numba) is loaded."""
    with threadpool_limits(1):
        yield


# ---- data and models --------------------------------------------------------------------------------

def numbers(bunch) -> Dataset:
    return Dataset(bunch.data, bunch.target, "sklearn", {str(c): "number" for c in bunch.data.columns})


def mixed(task: str) -> Dataset:
    frame = penguins(300, seed=0)
    X, kinds, _ = prepare_features(frame[FEATURES])
    if task == "classification":
        return Dataset(X, frame["species"].astype(object), "penguins", kinds)
    rng = np.random.default_rng(0)  # a number that depends on the island, the sex and the flipper
    y = (frame["island"].map({"Biscoe": 3.0, "Dream": 1.0, "Torgersen": 0.0}) + (frame["sex"] == "male")
         + 0.05 * pd.to_numeric(frame["flipper_length_mm"]).fillna(200) + rng.normal(0, 0.3, len(frame)))
    return Dataset(X, y, "penguins", kinds)


DATA = {"binary": lambda: load_default_dataset(), "multiclass": lambda: numbers(load_iris(as_frame=True)),
        "regression": lambda: numbers(load_diabetes(as_frame=True)),
        "mixed": lambda: mixed("classification"), "mixed_regression": lambda: mixed("regression")}


@functools.cache
def fitted(data: str, kind: str):
    """A model trained as train.py trains it on all but the last rows; those rows, encoded as the
    runner receives them, with missing values and (mixed data) unseen categories added."""
    dataset = DATA[data]()
    keep = slice(None, -HELD_OUT)
    result = train(Dataset(dataset.X.iloc[keep], dataset.y.iloc[keep], dataset.source, dataset.kinds), kind)
    signature = result.signature
    rows, _ = encode(signature, dataset.X.iloc[-HELD_OUT:], "none")
    rng = np.random.default_rng(1)
    gaps = rows.copy()  # in every column: trees without missing values in training route them too
    gaps[rng.random(gaps.shape) < 0.2] = np.nan
    if data.startswith("mixed"):
        unseen = rows[:8].copy()
        for i, f in enumerate(signature.features):
            if f.is_category:
                unseen[::2, i] = UNSEEN_CODE
        rows = np.concatenate([rows, unseen])
    background, _ = encode(signature, dataset.X.iloc[keep], "none")
    return result.pipeline, signature, np.concatenate([rows, gaps[:10]]), background


def model_input(pipeline, signature: Signature, rows: np.ndarray) -> np.ndarray:
    """What the pipeline's final step reads, computed by scikit-learn."""
    X = signature.to_model_input(rows)
    return np.asarray(pipeline[:-1].transform(X) if len(pipeline) > 1 else X, dtype=np.float64)


def source_matrix(pipeline, signature: Signature) -> np.ndarray:
    """(model input columns, features): which feature each column comes from, by the names
    scikit-learn gives the columns ("num__bill_length_mm", "cat__island_Biscoe")."""
    names = signature.names
    if len(pipeline) == 1 or signature.numeric_only:
        return np.eye(len(names))
    columns = [c.split("__", 1)[1] for c in pipeline[:-1].get_feature_names_out()]
    matrix = np.zeros((len(columns), len(names)))
    for j, column in enumerate(columns):
        owner = [i for i, name in enumerate(names) if column == name or column.startswith(name + "_")]
        assert len(owner) == 1, column
        matrix[j, owner[0]] = 1.0
    return matrix


def gradient_boosting_class(model, k: int, X: np.ndarray) -> dict:
    """Class k's trees of a multi-class GradientBoostingClassifier, in the model format
    shap.TreeExplainer takes (it refuses the multi-class model itself), as it reads binary ones."""
    trees = [{"children_left": t.children_left, "children_right": t.children_right,
              "children_default": np.where(t.missing_go_to_left, t.children_left, t.children_right),
              "features": t.feature, "thresholds": t.threshold, "values": model.learning_rate * t.value[:, 0, :],
              "node_sample_weight": t.weighted_n_node_samples} for t in (e.tree_ for e in model.estimators_[:, k])]
    return {"trees": trees, "base_offset": model._raw_predict_init(X[:1].astype(np.float32))[0, k],
            "input_dtype": np.float32, "tree_output": "raw_value"}


def shap_tree(pipeline, signature, rows):
    """shap.TreeExplainer's contributions per feature (rows, features, outputs) and base values."""
    model, X = pipeline[-1], model_input(pipeline, signature, rows)
    if hasattr(model, "estimators_") and np.ndim(model.estimators_) == 2 and model.estimators_.shape[1] > 1:
        models = [gradient_boosting_class(model, k, X) for k in range(model.estimators_.shape[1])]
    else:
        models = [model]
    values, base = [], []
    for one in models:
        explainer = shap.TreeExplainer(one, feature_perturbation="tree_path_dependent")
        found = np.asarray(explainer.shap_values(X, check_additivity=False))
        values.append(found[..., None] if found.ndim == 2 else found)
        base.append(np.atleast_1d(explainer.expected_value))
    per_feature = np.einsum("rco,cf->rfo", np.concatenate(values, axis=2), source_matrix(pipeline, signature))
    return per_feature, np.concatenate(base)


def explained_output(pipeline, signature, rows, name: str) -> np.ndarray:
    """The model's own output that the explanation names, (rows, outputs)."""
    X = signature.to_model_input(rows)
    if name == "probability":
        return pipeline.predict_proba(X)
    if name == "log_odds":
        raw = pipeline.decision_function(X)
        return raw[:, None] if raw.ndim == 1 else raw
    return pipeline.predict(X)[:, None]


def explain_each_class(explainer: Explainer, rows: np.ndarray, n_classes: int):
    """Per class (or the one output of a regressor): contributions, base values, outputs, checked additive."""
    results = []
    for k in range(n_classes) if explainer.classes is not None else [None]:
        e = explainer.explain(rows, class_index=k)
        np.testing.assert_allclose(e.base_values + e.contributions.sum(axis=1), e.outputs, rtol=0, atol=TOLERANCE)
        assert e.contributions.shape == (len(rows), len(explainer.to_features.T))
        results.append(e)
    return results


def assert_matches(expected_contributions, expected_base, expected_outputs, e):
    np.testing.assert_allclose(e.contributions, expected_contributions, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(e.base_values, expected_base, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(e.outputs, expected_outputs, rtol=0, atol=TOLERANCE)


# ---- trees: equal to shap.TreeExplainer ----------------------------------------------------------------

TREE_CASES = [(data, kind) for data in ("binary", "multiclass", "regression", "mixed", "mixed_regression")
              for kind in ("random_forest", "gradient_boosting", "hist_gradient_boosting")
              if not (data.startswith("mixed") and kind == "hist_gradient_boosting")]  # shap: no categorical splits


@pytest.mark.parametrize("data,kind", TREE_CASES)
def test_tree_contributions_equal_shap_on_held_out_rows_with_gaps_and_unseen_categories(data, kind):
    pipeline, signature, rows, _ = fitted(data, kind)
    explainer = Explainer.for_pipeline(pipeline, signature)
    classifier = signature.task == "classification"
    assert explainer.output_name == ("value" if not classifier else
                                     "probability" if kind == "random_forest" else "log_odds")
    values, base = shap_tree(pipeline, signature, rows)
    model_output = explained_output(pipeline, signature, rows, explainer.output_name)
    n_classes = len(signature.classes) if classifier else 1
    for k, e in enumerate(explain_each_class(explainer, rows, n_classes)):
        # a binary boosting model has one raw output, class 1's log-odds; class 0's are their negative
        output, sign = (0, 2 * k - 1) if values.shape[2] == 1 and classifier else (k, 1)
        assert_matches(sign * values[:, :, output], sign * base[output], sign * model_output[:, output], e)


def test_the_default_class_is_the_predicted_one_and_top_ranks_by_size():
    pipeline, signature, rows, _ = fitted("mixed", "random_forest")
    explainer = Explainer.for_pipeline(pipeline, signature)
    e = explainer.explain(rows)
    assert explainer.names == signature.names
    predicted = np.searchsorted(pipeline.classes_, pipeline.predict(signature.to_model_input(rows)))
    np.testing.assert_array_equal(e.class_index, predicted)
    np.testing.assert_allclose(e.outputs, pipeline.predict_proba(signature.to_model_input(rows)).max(axis=1))
    top = ranked(signature.names, e.contributions[0], top=2)
    assert len(top) == 2 and abs(top[0][1]) >= abs(top[1][1]) >= np.sort(np.abs(e.contributions[0]))[-2]
    assert [name for name, _ in ranked(signature.names, e.contributions[0])] == \
        [signature.names[i] for i in np.argsort(-np.abs(e.contributions[0]), kind="stable")]


@pytest.mark.parametrize("forest", [ExtraTreesRegressor, ExtraTreesClassifier, RandomForestClassifier])
def test_bare_forests_trained_with_missing_values_equal_shap(forest):
    """Fitted on arrays with NaN, which scikit-learn's forests route by each split's missing_go_to_left."""
    dataset = numbers(load_diabetes(as_frame=True))
    X, y = dataset.X.to_numpy().copy(), dataset.y.to_numpy()
    X[np.random.default_rng(0).random(X.shape) < 0.1] = np.nan
    classifier = forest is not ExtraTreesRegressor
    y, task = (y > 140, "classification") if classifier else (y, "regression")
    model = forest(n_estimators=30, random_state=0).fit(X[:-HELD_OUT], y[:-HELD_OUT])
    signature = Signature.from_frame(dataset.X, task, getattr(model, "classes_", None), takes_frame=False)
    explainer = Explainer.for_pipeline(model, signature)
    rows, pipeline = X[-HELD_OUT:], make_pipeline(model)
    values, base = shap_tree(pipeline, signature, rows)
    model_output = explained_output(pipeline, signature, rows, explainer.output_name)
    for k, e in enumerate(explain_each_class(explainer, rows, 2)):
        assert_matches(values[:, :, k], base[k], model_output[:, k], e)


# ---- HistGradientBoosting's native categories: shap ignores categorical splits, so the reference
# is the definition: Shapley values of the path-dependent game, over all subsets of features ----------

def path_dependent_shapley(model, X: np.ndarray, output: int):
    """(contributions per column of X, base value) of the model's raw output `output`, by enumerating
    every subset S: E[f | x_S] follows the row at splits on S and averages by count elsewhere. Which
    way a row goes at a split is asked of scikit-learn's own predictor."""
    encoded = model._preprocess_X(X, reset=False)  # the trees read categorical columns first
    n = encoded.shape[1]
    known, f_idx_map = model._bin_mapper.make_known_categories_bitsets()
    games = np.zeros((2 ** n, len(X)))
    for predictor in [iteration[output] for iteration in model._predictors]:
        nodes, left = predictor.nodes, {}
        for node in np.flatnonzero(nodes["is_leaf"] == 0):
            split = nodes[[node, node, node]].copy()  # this split alone, leaves 0 (left) and 1 (right)
            split["left"][0], split["right"][0], split["is_leaf"][1:], split["value"][1:] = 1, 2, 1, [0, 1]
            one = TreePredictor(split, predictor.binned_left_cat_bitsets, predictor.raw_left_cat_bitsets)
            left[node] = one.predict(encoded, known, f_idx_map, 1) == 0

        def expectation(node, subset, nodes=nodes, left=left):
            at = nodes[node]
            if at["is_leaf"]:
                return np.full(len(X), at["value"])
            lo, hi = expectation(at["left"], subset, nodes, left), expectation(at["right"], subset, nodes, left)
            if subset >> int(at["feature_idx"]) & 1:
                return np.where(left[node], lo, hi)
            return (nodes[at["left"]]["count"] * lo + nodes[at["right"]]["count"] * hi) / at["count"]
        for subset in range(2 ** n):
            games[subset] += expectation(0, subset)
    phi = np.zeros((len(X), n))
    for i, subset in itertools.product(range(n), range(2 ** n)):
        if not subset >> i & 1:
            size = bin(subset).count("1")
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            phi[:, i] += weight * (games[subset | 1 << i] - games[subset])
    order = np.concatenate([np.flatnonzero(model.is_categorical_), np.flatnonzero(~model.is_categorical_)]) \
        if model.is_categorical_ is not None else np.arange(n)
    contributions = np.zeros_like(phi)
    contributions[:, order] = phi
    return contributions, games[0, 0] + model._baseline_prediction.ravel()[output]


def test_the_subset_enumeration_agrees_with_shap_on_numeric_splits_with_gaps():
    dataset = mixed("regression")
    X = dataset.X[["bill_length_mm", "flipper_length_mm", "tagged"]].to_numpy(dtype=np.float64)
    model = HistGradientBoostingRegressor(max_iter=15, random_state=0).fit(X[:-20], dataset.y[:-20])
    rows = X[-20:]
    contributions, base = path_dependent_shapley(model, rows, 0)
    explainer = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    np.testing.assert_allclose(contributions, explainer.shap_values(rows), rtol=0, atol=TOLERANCE)
    assert base == pytest.approx(float(np.ravel(explainer.expected_value)[0]), abs=TOLERANCE)


def test_hist_gradient_boosting_on_numeric_category_codes_equals_the_definition():
    """A bare model told which column is categorical: values it never saw, negative, huge, NaN."""
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=600), rng.choice([3.0, 7.0, 10.0, 250.0], 600), rng.normal(size=600)])
    X[rng.random(600) < 0.1, 0] = np.nan
    y = (np.nan_to_num(X[:, 0]) + (X[:, 1] > 8) + rng.normal(size=600) > 0.5).astype(int)
    model = HistGradientBoostingClassifier(max_iter=20, categorical_features=[1], random_state=0).fit(X, y)
    rows = np.concatenate([X[:20], [[0.1, v, 0.0] for v in (5.0, -1.0, 7.5, 1e9, np.nan)]])
    signature = Signature.from_frame(pd.DataFrame(X, columns=["a", "b", "c"]), "classification", [0, 1],
                                     takes_frame=False)
    explainer = Explainer.for_pipeline(model, signature)
    raw = model._raw_predict(rows)
    for k, e in enumerate(explain_each_class(explainer, rows, 2)):
        contributions, base = path_dependent_shapley(model, rows, 0)
        sign = 2 * k - 1
        assert_matches(sign * contributions, sign * base, sign * raw[:, 0], e)


@pytest.mark.parametrize("data", ["mixed", "mixed_regression"])
def test_native_categorical_hist_gradient_boosting_equals_the_definition(data):
    pipeline, signature, rows, _ = fitted(data, "hist_gradient_boosting")
    explainer = Explainer.for_pipeline(pipeline, signature)
    X = model_input(pipeline, signature, rows)
    raw = pipeline[-1]._raw_predict(X)
    to_features = source_matrix(pipeline, signature)
    for k, e in enumerate(explain_each_class(explainer, rows, len(signature.classes or [0]))):
        contributions, base = path_dependent_shapley(pipeline[-1], X, k)
        assert_matches(contributions @ to_features, base, raw[:, k], e)


# ---- linear models: equal to shap.LinearExplainer from the training mean ---------------------------------

@pytest.mark.parametrize("data", ["binary", "multiclass", "regression", "mixed", "mixed_regression"])
def test_linear_contributions_equal_shap_from_the_training_mean(data):
    pipeline, signature, rows, background = fitted(data, "logistic_regression")
    explainer = Explainer.for_pipeline(pipeline, signature, background)
    classifier = signature.task == "classification"
    assert explainer.output_name == ("log_odds" if classifier else "value")
    train_input = model_input(pipeline, signature, background)
    reference = shap.LinearExplainer(pipeline[-1], (train_input.mean(axis=0), np.cov(train_input.T)))
    values = np.asarray(reference.shap_values(model_input(pipeline, signature, rows)))
    values = np.einsum("rco,cf->rfo", values[..., None] if values.ndim == 2 else values,
                       source_matrix(pipeline, signature))
    base = np.atleast_1d(reference.expected_value)
    raw = pipeline.decision_function(signature.to_model_input(rows)) if classifier else \
        pipeline.predict(signature.to_model_input(rows))
    raw = raw[:, None] if raw.ndim == 1 else raw
    for k, e in enumerate(explain_each_class(explainer, rows, len(signature.classes or [0]))):
        output, sign = (0, 2 * k - 1) if values.shape[2] == 1 and classifier else (k, 1)
        assert_matches(sign * values[:, :, output], sign * base[output], sign * raw[:, output], e)


def test_a_linear_model_needs_its_background():
    pipeline, signature, _, _ = fitted("binary", "logistic_regression")
    with pytest.raises(ValueError, match="background rows"):
        Explainer.for_pipeline(pipeline, signature)


# ---- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,message", [
    (SVC(), "cannot explain SVC exactly"), (KNeighborsRegressor(), "cannot explain KNeighborsRegressor exactly"),
    (GradientBoostingRegressor(n_estimators=5, init=LinearRegression()),
     "cannot explain this GradientBoostingRegressor exactly: .*init estimator")])
def test_models_that_cannot_be_explained_exactly_are_refused_by_name(model, message):
    dataset = load_default_dataset()
    model.fit(dataset.X.to_numpy(), dataset.y.to_numpy())
    signature = Signature.from_frame(dataset.X, "classification", [0, 1], takes_frame=False)
    with pytest.raises(NotExplainable, match=message):
        Explainer.for_pipeline(make_pipeline(model), signature)


def test_a_forest_too_large_for_its_memory_budget_is_refused(monkeypatch):
    pipeline, signature, _, _ = fitted("binary", "random_forest")
    monkeypatch.setattr(explain, "MAX_TREE_CELLS", 10_000)
    with pytest.raises(NotExplainable, match="leaves with paths of up to"):
        Explainer.for_pipeline(pipeline, signature)


def test_explaining_imports_neither_shap_nor_numba():
    code = ("import sys, numpy as np; from sklearn.ensemble import RandomForestClassifier; "
            "from sklearn_service.explain import Explainer; from sklearn_service.signature import Feature, Signature; "
            "X = np.random.default_rng(0).random((50, 3)); m = RandomForestClassifier(5).fit(X, X[:, 0] > 0.5); "
            "Explainer.for_pipeline(m, Signature([Feature(n) for n in 'abc'], classes=[False, True])).explain(X); "
            "print(sorted({'shap', 'numba'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_preprocessing_it_cannot_trace_is_refused():
    dataset = load_default_dataset()
    X, y = dataset.X.to_numpy()[:, :3], dataset.y.to_numpy()
    pipeline = make_pipeline(PolynomialFeatures(2), ExtraTreesClassifier(n_estimators=5, random_state=0)).fit(X, y)
    signature = Signature.from_frame(dataset.X.iloc[:, :3], "classification", [0, 1], takes_frame=False)
    with pytest.raises(NotExplainable, match="PolynomialFeatures"):
        Explainer.for_pipeline(pipeline, signature)


def test_a_class_out_of_range_or_for_a_regressor_is_refused():
    pipeline, signature, rows, _ = fitted("binary", "random_forest")
    explainer = Explainer.for_pipeline(pipeline, signature)
    for bad in (2, -1, 0.5):
        with pytest.raises(ValueError, match="class_index"):
            explainer.explain(rows, class_index=bad)
    pipeline, signature, rows, _ = fitted("regression", "random_forest")
    with pytest.raises(ValueError, match="regressor"):
        Explainer.for_pipeline(pipeline, signature).explain(rows, class_index=0)
