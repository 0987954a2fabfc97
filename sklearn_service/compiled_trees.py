"""Tree ensembles evaluated with numpy, bit for bit as scikit-learn evaluates them.

All the trees of a model are packed into flat node arrays and walked together,
one numpy step per tree level. From NATIVE_MIN_ROWS rows on, the trees that are
scikit-learn `Tree` objects (forests, GradientBoosting) find their leaves with
their own C walk instead (`Tree.apply`, what their predict uses): the same leaves,
without scikit-learn's per-tree Python overhead. Each model reads its input as scikit-learn does
(float32 for `tree_`-based models, float64 for HistGradientBoosting), sends NaN
where scikit-learn sends it, and adds the trees up one at a time starting from
the same initial value, so sums round exactly as scikit-learn's loops round them.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, GradientBoostingClassifier
from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingClassifier
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestClassifier, RandomForestRegressor

FORESTS = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
# HistGradientBoosting's categories are bytes; slot 256 stands for NaN and any value outside [0, 256)
CATEGORY_SLOTS = 257
# From this many rows a Tree's own C walk beats the numpy one: ~6 µs a call per tree, then ~0.04 µs a
# row, against ~1.3 µs a row for all the trees walked in numpy (RandomForest(100), depth 10).
NATIVE_MIN_ROWS = 32


class PackedTrees:
    """The nodes of many trees in flat arrays; `leaves(X)` gives each row's leaf in every tree."""

    def __init__(self, trees: list[dict], native: list | None = None):
        """trees: per tree, node arrays `left`, `right` (-1 at leaves), `feature`, `threshold`,
        `missing_go_to_left`, and optionally `is_categorical` with `category_left`: for each
        categorical node, whether each category slot goes left. native: the same trees as
        scikit-learn `Tree` objects, whose `apply` takes float32 rows."""
        self.native = native
        sizes = np.array([len(tree["left"]) for tree in trees])
        self.roots = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        nodes = np.arange(sizes.sum())
        is_leaf = np.concatenate([tree["left"] == -1 for tree in trees])
        self.is_leaf = is_leaf

        def joined(field, offset_by_root=False):
            return np.concatenate([t[field] + r if offset_by_root else t[field] for t, r in zip(trees, self.roots)])

        # children[node] = (right, left); a leaf points to itself, so extra steps stay put
        self.children = np.stack([np.where(is_leaf, nodes, joined("right", True)),
                                  np.where(is_leaf, nodes, joined("left", True))], axis=1)
        self.feature = np.where(is_leaf, 0, joined("feature"))
        self.threshold = joined("threshold")
        self.missing_left = joined("missing_go_to_left").astype(bool)
        self.depth = max(tree["depth"] for tree in trees)
        self.category_row = None  # node -> its row in category_left; 0 for numeric nodes
        if "is_categorical" in trees[0]:
            categorical = joined("is_categorical")
            self.category_row = np.where(categorical, np.cumsum(categorical), 0)
            self.category_left = np.concatenate([np.zeros((1, CATEGORY_SLOTS), bool), joined("category_left")])

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """Leaf node of every (tree, row): shape (trees, rows)."""
        if self.native is not None and len(X) >= NATIVE_MIN_ROWS:
            X = np.ascontiguousarray(X, dtype=np.float32)
            return np.stack([tree.apply(X) for tree in self.native]) + self.roots[:, None]
        flat, row_start = X.ravel(), np.arange(len(X)) * X.shape[1]
        has_nan = np.isnan(flat).any()
        if self.category_row is not None:
            # the byte a categorical node reads: C truncation of the value, as scikit-learn casts it
            slots = np.where((flat >= 0) & (flat < CATEGORY_SLOTS - 1), flat, CATEGORY_SLOTS - 1).astype(np.intp)
        node = np.repeat(self.roots[:, None], len(X), axis=1)
        for step in range(self.depth):
            # every walk at a leaf: the steps left would stay put (most leaves lie above the deepest one)
            if step % 2 and self.is_leaf[node].all():
                break
            at = row_start + self.feature[node]
            x = flat[at]
            go_left = x <= self.threshold[node]
            if has_nan:
                go_left = np.where(np.isnan(x), self.missing_left[node], go_left)
            if self.category_row is not None:
                row = self.category_row[node]
                go_left = np.where(row > 0, self.category_left[row, slots[at]], go_left)
            node = self.children[node, go_left.view(np.uint8)]
        return node


def sum_in_order(start: np.ndarray, terms) -> np.ndarray:
    """start + terms[0] + terms[1] + ..., one term at a time like scikit-learn's loops, C-ordered.

    np.add.reduce may sum pairwise (it does for a single row), which rounds differently. `terms`: an
    array, or the terms one at a time (a large batch then never holds a (trees, rows, outputs) array)."""
    if isinstance(terms, np.ndarray):
        return np.ascontiguousarray(np.add.accumulate(np.concatenate([start[None], terms]), axis=0)[-1])
    total = np.array(start, dtype=np.float64, order="C")
    for term in terms:
        total += term
    return total


def float32_input(X: np.ndarray, allow_nan: bool) -> np.ndarray:
    """X as the float32 matrix scikit-learn's trees read, refusing what its input check refuses."""
    with np.errstate(over="ignore"):
        X = X.astype(np.float32)
    if np.isinf(X).any() or (not allow_nan and np.isnan(X).any()):
        raise ValueError("Input X contains infinity, NaN or a value too large for dtype('float32').")
    return X


def _sklearn_tree(tree, values: np.ndarray) -> dict:
    return {"left": tree.children_left, "right": tree.children_right, "feature": tree.feature,
            "threshold": tree.threshold, "missing_go_to_left": tree.missing_go_to_left,
            "depth": tree.max_depth, "values": values}


class CompiledForest:
    max_rows = None  # any number: from NATIVE_MIN_ROWS rows the trees' own C walk finds the leaves

    def __init__(self, forest):
        self.allow_nan = forest.estimators_[0]._support_missing_values(np.zeros((1, forest.n_features_in_)))
        trees = []
        for estimator in forest.estimators_:
            values = estimator.tree_.value[:, 0, :]
            if hasattr(forest, "classes_"):
                normalizer = values.sum(axis=1, keepdims=True)  # as DecisionTreeClassifier.predict_proba
                normalizer[normalizer == 0.0] = 1.0
                values = values / normalizer
            trees.append(_sklearn_tree(estimator.tree_, values))
        self.trees = PackedTrees(trees, [estimator.tree_ for estimator in forest.estimators_])
        self.values = np.concatenate([tree["values"] for tree in trees])
        self.classes_ = getattr(forest, "classes_", None)

    def _means(self, X):
        leaves = self.trees.leaves(float32_input(X, self.allow_nan))
        start = np.zeros((len(X), self.values.shape[1]))
        terms = self.values[leaves] if len(X) < NATIVE_MIN_ROWS else (self.values[tree] for tree in leaves)
        return sum_in_order(start, terms) / len(self.trees.roots)

    def predict_proba(self, X):
        return self._means(X)

    def predict(self, X):
        means = self._means(X)
        if self.classes_ is None:
            return means[:, 0]
        return self.classes_.take(np.argmax(means, axis=1))  # as scikit-learn's forests: from the probabilities

    def predict_and_proba(self, X):
        means = self._means(X)
        return self.classes_.take(np.argmax(means, axis=1)), means


class _Boosting:
    """Raw scores: a start value plus the trees' leaf values, iteration by iteration."""

    def _raw(self, leaves, n_rows):
        per_iteration = self.values[leaves].reshape(-1, self.n_outputs, n_rows).transpose(0, 2, 1)
        return sum_in_order(np.broadcast_to(self.start, (n_rows, self.n_outputs)), per_iteration)


class CompiledGradientBoosting(_Boosting):
    max_rows = None  # as CompiledForest

    def __init__(self, model):
        self.model = model
        n_features = model.n_features_in_
        with warnings.catch_warnings():  # a model fitted on a DataFrame warns about the nameless row
            warnings.simplefilter("ignore")
            # the init estimator is constant (checked by `compile_estimator`): its score for one row is every row's
            self.start = model._raw_predict_init(np.zeros((1, n_features), dtype=np.float32))[0]
        self.n_outputs = model.estimators_.shape[1]
        # each stage adds learning_rate * leaf value, the product scikit-learn computes
        trees = [_sklearn_tree(e.tree_, model.learning_rate * e.tree_.value[:, 0, 0]) for e in model.estimators_.flat]
        self.trees = PackedTrees(trees, [e.tree_ for e in model.estimators_.flat])
        self.values = np.concatenate([tree["values"] for tree in trees])

    def decision_function(self, X):
        leaves = self.trees.leaves(float32_input(X, allow_nan=False))
        raw = self._raw(leaves, len(X))
        return raw.ravel() if self.n_outputs == 1 else raw

    def predict_proba(self, X):
        return self.model._loss.predict_proba(self.decision_function(X))

    def predict(self, X):
        raw = self.decision_function(X)
        return raw if not hasattr(self.model, "classes_") else self._labels(raw)

    def _labels(self, raw):
        encoded = (raw >= 0).astype(int) if raw.ndim == 1 else np.argmax(raw, axis=1)
        return self.model.classes_[encoded]

    def predict_and_proba(self, X):
        raw = self.decision_function(X)
        return self._labels(raw), self.model._loss.predict_proba(raw)


class CompiledHistGradientBoosting(_Boosting):
    max_rows = 512  # walked in numpy alone: above this many rows scikit-learn's C loop is faster

    def __init__(self, model, encode):
        self.model = model
        self.start = model._baseline_prediction.ravel()
        self.n_outputs = model.n_trees_per_iteration_
        self.encode = encode  # the model's own category encoding
        known = _known_categories(model)
        trees = [_hist_tree(predictor, known) for iteration in model._predictors for predictor in iteration]
        self.trees = PackedTrees(trees)
        self.values = np.concatenate([tree["values"] for tree in trees])

    def _raw_scores(self, X):
        X = self.encode(X)
        # scikit-learn keeps raw scores Fortran-ordered; softmax's row sums depend on the layout
        return np.asfortranarray(self._raw(self.trees.leaves(X), len(X)))

    def predict_proba(self, X):
        return self.model._loss.predict_proba(self._raw_scores(X))

    def predict(self, X):
        raw = self._raw_scores(X)
        if not hasattr(self.model, "classes_"):
            return self.model._loss.link.inverse(raw.ravel())
        return self._labels(raw)

    def _labels(self, raw):
        encoded = (raw.ravel() > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
        return self.model.classes_[encoded]

    def predict_and_proba(self, X):
        raw = self._raw_scores(X)
        return self._labels(raw), self.model._loss.predict_proba(raw)


def _bits(bitsets: np.ndarray) -> np.ndarray:
    """(rows, 8) uint32 bitsets -> (rows, 256) bools, as sklearn.utils._bitset reads them."""
    values = np.arange(CATEGORY_SLOTS - 1)
    return ((bitsets[:, values >> 5] >> (values & 31).astype(np.uint32)) & 1).astype(bool)


def _known_categories(model) -> np.ndarray | None:
    """(features, 256) bools: the categories each categorical feature saw in training, as predict builds them."""
    if model.is_categorical_ is None:
        return None
    known, feature_to_row = model._bin_mapper.make_known_categories_bitsets()
    return _bits(known)[feature_to_row]


def _hist_tree(predictor, known) -> dict:
    nodes = predictor.nodes
    tree = {"left": np.where(nodes["is_leaf"], -1, nodes["left"].astype(np.intp)),
            "right": nodes["right"].astype(np.intp), "feature": nodes["feature_idx"].astype(np.intp),
            "threshold": nodes["num_threshold"], "missing_go_to_left": nodes["missing_go_to_left"],
            "depth": int(nodes["depth"].max()), "values": nodes["value"]}
    if known is not None:
        # left set -> left; another known category -> right; unknown, negative or NaN -> as missing
        categorical = nodes["is_categorical"].astype(bool)
        in_left = _bits(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][categorical]])
        as_missing = nodes["missing_go_to_left"][categorical].astype(bool)[:, None]
        go_left = in_left | (~known[tree["feature"][categorical]] & as_missing)
        tree.update(is_categorical=categorical, category_left=np.hstack([go_left, as_missing]))
    return tree


def _numeric_categories(model) -> list[np.ndarray] | None:
    """The categories of HistGradientBoosting's own OrdinalEncoder, without NaN; None unless all are numbers."""
    categories = model._preprocessor.named_transformers_["encoder"].categories_
    if any(np.asarray(c).dtype.kind != "f" for c in categories):
        return None  # strings from a DataFrame: not numbers in the serving matrix
    categories = [c[~np.isnan(c)] for c in categories]  # missing stays NaN: encoded_missing_value is NaN
    return categories if all(len(c) for c in categories) else None


def _category_encoding(model, known: list[np.ndarray]):
    """HistGradientBoosting's own OrdinalEncoder step: categorical columns first, as codes; the rest after."""
    categorical = np.flatnonzero(model.is_categorical_)
    numeric = np.flatnonzero(~model.is_categorical_)

    def encode(X):
        codes = X[:, categorical]
        if np.isinf(codes).any():
            raise ValueError("Input X contains infinity.")  # the encoder's input check
        for j, categories in enumerate(known):
            position = np.searchsorted(categories, codes[:, j]).clip(max=len(categories) - 1)
            found = categories[position] == codes[:, j]
            codes[:, j] = np.where(found, position, np.nan)  # unseen -> unknown_value NaN
        return np.hstack([codes, X[:, numeric]])
    return encode


def compile_estimator(model):
    """A compiled stand-in for a fitted tree ensemble, or None."""
    if isinstance(model, FORESTS) and model.n_outputs_ == 1:
        return CompiledForest(model)
    if isinstance(model, (GradientBoostingClassifier, GradientBoostingRegressor)):
        constant_start = model.init_ == "zero" or isinstance(model.init_, DummyRegressor) or (
            isinstance(model.init_, DummyClassifier) and model.init_.strategy in ("prior", "most_frequent", "constant"))
        return CompiledGradientBoosting(model) if constant_start else None
    if isinstance(model, (HistGradientBoostingClassifier, HistGradientBoostingRegressor)):
        if model._preprocessor is None:
            return CompiledHistGradientBoosting(model, lambda X: X)
        categories = _numeric_categories(model)
        return CompiledHistGradientBoosting(model, _category_encoding(model, categories)) if categories else None
    return None
