"""Exact per-feature contributions (SHAP values) for the service's models, in numpy.

For a row, the explained output f(x) = base value + one contribution per feature of the
signature. Contributions are computed per column of the model's input and summed back to
the feature each column came from (a one-hot category is one feature again); Shapley
values are additive, so the sum is exact.

Tree ensembles: path-dependent TreeSHAP (Lundberg et al. 2018), the values
shap.TreeExplainer(model, feature_perturbation="tree_path_dependent") gives. Rather than
walk every tree per row (Algorithm 2's EXTEND/UNWIND), each leaf's path is prepared once:
its d distinct features, each with its zero fraction z (the product of the cover ratios of
its splits on the path, so repeated features are merged as UNWIND would) and the splits a
row must take to reach the leaf. Per row only the one fractions o in {0, 1} change. A leaf
of value v gives feature i

    v (o_i - z_i) sum_{S ⊆ P-{i}} |S|! (d-|S|-1)!/d! prod_{j in S} o_j prod_{j not in S} z_j
  = v (o_i - z_i) ∫_0^1 prod_{j != i} (z_j (1-t) + o_j t) dt                    (Beta integral)

a polynomial of degree < d in t, so Gauss-Legendre with ceil(d/2) nodes is exact. With
G(t) = prod_j (z_j (1-t) + o_j t) the factor of feature i is G / (z_i (1-t) + t) times
(1 - z_i) when o_i = 1, and -G / (1-t) when o_i = 0 (no division by a zero cover). All
leaves of all trees are evaluated together as a few numpy operations per block of rows.

Linear models: coef * (x - mean) in the model's input space, with the mean of background
rows, as shap.LinearExplainer with a mean background ("interventional").
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, HistGradientBoostingClassifier
from sklearn.ensemble import HistGradientBoostingRegressor

from sklearn_service.compiled import _column_kinds
from sklearn_service.compiled_preprocessing import compile_transformer
from sklearn_service.compiled_trees import FORESTS, CompiledForest, CompiledGradientBoosting, PackedTrees
from sklearn_service.compiled_trees import compile_estimator, float32_input

TREE_CELLS_PER_BLOCK = 1 << 20   # rows x leaves x path features x nodes evaluated at once: bounds memory
BLOCK_CELLS = 4096               # what one more block of leaves costs in numpy calls, in cells of work
MAX_TREE_CELLS = 1 << 22         # leaves x path width x quadrature nodes a model may hold (x 3 float64: 100 MB)


TREE_ENSEMBLES = (*FORESTS, GradientBoostingClassifier, GradientBoostingRegressor, HistGradientBoostingClassifier,
                  HistGradientBoostingRegressor)


class NotExplainable(ValueError):
    """The model (or its preprocessing) is not one whose contributions are computed exactly."""


class Explanation(NamedTuple):
    outputs: np.ndarray        # (rows,) the explained output: base_values + contributions.sum(1)
    base_values: np.ndarray    # (rows,) the expected output (the same for every row of a class)
    contributions: np.ndarray  # (rows, features) one per feature of the signature
    output_name: str           # probability, log_odds, value, ...
    class_index: np.ndarray | None  # (rows,) the class each row's output is about; None for regressors


def ranked(names: list[str], contributions: np.ndarray, top: int | None = None) -> list[tuple[str, float]]:
    """(feature, contribution) pairs of one row, largest |contribution| first, at most `top`."""
    order = np.argsort(-np.abs(contributions), kind="stable")[:top]
    return [(names[i], float(contributions[i])) for i in order]


# ---- trees --------------------------------------------------------------------------------------

class _Paths:
    """Every leaf's path from its root, merged by feature into slots (z: the product of the cover
    ratios of the feature's splits on the path), and the splits of each slot, as flat arrays."""

    def __init__(self, trees: PackedTrees, covers: np.ndarray):
        children, nodes = trees.children, np.arange(len(trees.children))
        is_leaf = children[:, 0] == nodes
        self.internal = np.flatnonzero(~is_leaf)
        parent, went_left = np.full(len(nodes), -1), np.zeros(len(nodes), dtype=bool)
        parent[children[self.internal, 0]] = self.internal
        parent[children[self.internal, 1]] = self.internal
        went_left[children[self.internal, 1]] = True
        self.leaves = np.flatnonzero(is_leaf)
        self.tree = np.searchsorted(trees.roots, self.leaves, side="right") - 1
        # walk up from all leaves at once: one (leaf, split node, went left, cover ratio) per step
        steps, at, leaf = [], self.leaves, np.arange(len(self.leaves))
        while len(at):
            up = parent[at]
            keep = up >= 0
            at, leaf, up = at[keep], leaf[keep], up[keep]
            steps.append((leaf, up, went_left[at], covers[at] / covers[up]))
            at = up
        leaf, node, left, ratio = (np.concatenate(column) for column in zip(*steps)) if steps else \
            (np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, bool), np.zeros(0))
        # a slot per (leaf, feature): sort the splits by it
        feature = trees.feature[node]
        key = leaf * (int(trees.feature.max()) + 1) + feature
        order = np.argsort(key, kind="stable")
        key, leaf, node, left, ratio, feature = (np.asarray(a)[order] for a in (key, leaf, node, left, ratio, feature))
        first = np.flatnonzero(np.diff(key, prepend=-1) != 0)  # each slot's first split
        self.split_slot = np.cumsum(np.diff(key, prepend=-1) != 0) - 1
        self.split_rank = np.arange(len(key)) - first[self.split_slot]  # among the slot's splits
        position = np.full(len(nodes), -1)
        position[self.internal] = np.arange(len(self.internal))
        # the split as a column of the routing matrix (_TreeCore._ways): right, then left ways
        self.split_way = position[node] + len(self.internal) * left
        self.slot_leaf, self.slot_feature = leaf[first], feature[first]
        self.slot_z = np.multiply.reduceat(ratio, first) if len(first) else np.zeros(0)
        self.slot_position = np.arange(len(first)) - np.searchsorted(self.slot_leaf, self.slot_leaf)
        self.width = np.bincount(self.slot_leaf, minlength=len(self.leaves))  # distinct features per path

    def block(self, chosen: np.ndarray, values: np.ndarray, column_of_feature: np.ndarray) -> "_LeafBlock":
        """The leaves `chosen` (indices into self.leaves) as one block."""
        local = np.full(len(self.leaves), -1)
        local[chosen] = np.arange(len(chosen))
        slots = np.flatnonzero(local[self.slot_leaf] >= 0)
        splits = np.flatnonzero(local[self.slot_leaf[self.split_slot]] >= 0)
        width = max(1, int(self.width[chosen].max()))
        repeats = int(self.split_rank[splits].max()) + 1 if len(splits) else 1
        z, column = np.ones((width, len(chosen))), np.zeros((width, len(chosen)), dtype=np.intp)
        at = self.slot_position[slots], local[self.slot_leaf[slots]]
        z[at], column[at] = self.slot_z[slots], column_of_feature[self.slot_feature[slots]]
        # padding: the routing matrix's last column, always True
        split = np.full((repeats, width, len(chosen)), 2 * len(self.internal), dtype=np.int32)
        slot = self.split_slot[splits]
        split[self.split_rank[splits], self.slot_position[slot], local[self.slot_leaf[slot]]] = self.split_way[splits]
        return _LeafBlock(z, column, split, values[self.leaves[chosen]])


class _LeafBlock:
    """Leaves whose paths have at most `width` distinct features, padded to it (a padding slot has
    z = o = 1, which changes no value), evaluated with Gauss-Legendre nodes t and weights on [0, 1].
    Arrays are laid out (..., slot, leaf): numpy reduces fastest over leading axes."""

    def __init__(self, z: np.ndarray, column: np.ndarray, split: np.ndarray, values: np.ndarray):
        """z, column (the model input column of the slot's feature): (width, leaves); split: (repeats,
        width, leaves), the routing matrix's columns that make o; values: (leaves, outputs)."""
        self.column, self.split, self.values = column, split, values
        self.reach_share = z.prod(axis=0)  # cover of the leaf / cover of the root
        x, w = np.polynomial.legendre.leggauss((len(z) + 1) // 2)
        t, self.weights = (x + 1) / 2, (w / 2)[:, None]
        t = t[:, None, None]
        zt = z * (1 - t)  # (nodes, width, leaves)
        self.factor = (zt, zt + t)  # z (1-t) + o t for o = 0, 1
        # what G becomes for a slot: -G / (1-t) for o = 0 (the same for every slot), (1-z) G / (z (1-t) + t) for o = 1
        self.share_off, self.share_on = -1 / (1 - t[:, :, 0]), (1 - z) / (zt + t)

    @property
    def cells(self) -> int:
        """Numbers evaluated per row, at most."""
        return self.split.size + self.factor[0].size

    def evaluate(self, ways: np.ndarray, output: int, n_columns: int):
        """ways: the routing matrix of some rows -> (rows,) sum of the reached leaves' values of
        this output, (rows, n_columns) contributions per model column."""
        rows, values = len(ways), self.values[:, output]
        one = ways.take(self.split[0], axis=1)  # o: (rows, width, leaves); take: faster than indexing
        for split in self.split[1:]:
            one &= ways.take(split, axis=1)
        reached = np.logical_and.reduce(one, axis=1)
        one = one[:, None]
        g = np.multiply.reduce(np.where(one, self.factor[1], self.factor[0]), axis=2) * self.weights
        off = (self.share_off * g).sum(axis=1)  # (rows, leaves)
        per_slot = np.where(one[:, 0], (self.share_on * g[:, :, None]).sum(axis=1), off[:, None])
        at = (np.arange(rows)[:, None, None] * n_columns + self.column).ravel()
        phi = np.bincount(at, (per_slot * values).ravel(), minlength=rows * n_columns)
        return reached @ values, phi.reshape(rows, n_columns)


def _by_width(leaves: np.ndarray, width: np.ndarray) -> list[np.ndarray]:
    """Leaves grouped into blocks of similar path width: a block costs its leaves x its widest
    path x its quadrature nodes per row, plus a fixed cost of numpy calls (BLOCK_CELLS);
    the cheapest split of the width-sorted leaves into runs (dynamic programming)."""
    nodes = (width[leaves] + 1) // 2  # quadrature nodes a leaf needs; a block pads to 2 x its largest
    sizes, counts = np.unique(nodes, return_counts=True)
    ends = np.cumsum(counts)
    best, cut = [0.0], [0]
    for j in range(1, len(sizes) + 1):  # best[j]: the cheapest blocks for the j narrowest sizes
        costs = [best[i] + (ends[j - 1] - (ends[i - 1] if i else 0)) * 2 * sizes[j - 1] ** 2 + BLOCK_CELLS
                 for i in range(j)]
        cut.append(int(np.argmin(costs)))
        best.append(min(costs))
    groups, j = [], len(sizes)
    while j:
        groups.append(leaves[np.isin(nodes, sizes[cut[j]:j])])
        j = cut[j]
    return groups[::-1]


class _TreeCore:
    """Path-dependent TreeSHAP of a tree ensemble compiled by compiled_trees.py, whose node arrays
    route rows exactly as scikit-learn does, given the cover of every node."""

    def __init__(self, trees: PackedTrees, covers: np.ndarray, values: np.ndarray, start: np.ndarray,
                 tree_output: np.ndarray, column_of_feature: np.ndarray, read_input, n_columns: int):
        """values: (nodes, outputs), the leaf values that add up to each output; tree_output: per
        tree, the output it adds to (-1: every output); column_of_feature: the model input column
        each tree feature reads; read_input: the model input as the trees read it."""
        self.trees, self.start, self.read_input, self.n_columns = trees, start, read_input, n_columns
        paths = _Paths(trees, covers)
        self.internal = paths.internal
        # per output, the leaves of the trees adding to it, in blocks by path width
        forest = (tree_output == -1).all()  # every output reads the same leaves
        groups = [_by_width(np.flatnonzero((tree_output[paths.tree] == k) | (tree_output[paths.tree] == -1)),
                            paths.width) for k in range(1 if forest else values.shape[1])]
        widest = [int(paths.width[leaves].max(initial=1)) for g in groups for leaves in g]
        cells = sum(len(leaves) * w * ((w + 1) // 2) for g in groups for leaves, w in zip(g, widest))
        if cells > MAX_TREE_CELLS:
            raise NotExplainable(f"cannot explain this model exactly: its {len(paths.leaves)} leaves with paths of up "
                                 f"to {paths.width.max()} features take more than {MAX_TREE_CELLS} cells of memory")
        self.blocks = [[paths.block(leaves, values, column_of_feature) for leaves in g] for g in groups]
        if forest:
            self.blocks *= values.shape[1]
        self.base = np.array([start[k] + sum(block.values[:, k] @ block.reach_share for block in self.blocks[k])
                              for k in range(values.shape[1])])

    def _ways(self, X: np.ndarray) -> np.ndarray:
        """(rows, 2 internal nodes + 1): whether each row goes right at each split, then whether it
        goes left, as PackedTrees.leaves routes it; the last column, always True, is for padding."""
        trees, nodes = self.trees, self.internal
        x = X.take(trees.feature[nodes], axis=1)
        left = x <= trees.threshold[nodes]
        missing = np.isnan(x)
        if missing.any():
            left = np.where(missing, trees.missing_left[nodes], left)
        if trees.category_row is not None:
            row = trees.category_row[nodes]
            categorical = row > 0
            value, nan_slot = x[:, categorical], trees.category_left.shape[1] - 1
            slot = np.where((value >= 0) & (value < nan_slot), value, nan_slot).astype(np.intp)
            left[:, categorical] = trees.category_left[row[categorical], slot]
        return np.hstack([~left, left, np.ones((len(X), 1), dtype=bool)])

    def explain(self, X: np.ndarray, output: int):
        """-> outputs, base values, contributions per model column, of one output of the ensemble."""
        X = self.read_input(X)
        outputs = np.full(len(X), self.start[output])
        contributions = np.zeros((len(X), self.n_columns))
        step = max(1, TREE_CELLS_PER_BLOCK // max(1, sum(block.cells for block in self.blocks[output])))
        for first in range(0, len(X), step):
            rows = slice(first, first + step)
            ways = self._ways(X[rows])
            for block in self.blocks[output]:
                out, phi = block.evaluate(ways, output, self.n_columns)
                outputs[rows] += out
                contributions[rows] += phi
        return outputs, np.full(len(X), self.base[output]), contributions


def _tree_core(model, n_columns: int) -> tuple[_TreeCore, str, object] | None:
    """The TreeSHAP core of a tree ensemble that compile_estimator covers, its output's name and
    its prediction as class indices (classifiers)."""
    compiled = compile_estimator(model)
    if compiled is None:
        if isinstance(model, TREE_ENSEMBLES):
            raise NotExplainable(f"cannot explain this {type(model).__name__} exactly: several targets, a fitted "
                                 "init estimator, or categories given as text to the model itself are not covered")
        return None
    trees = compiled.trees
    sizes = np.diff(np.append(trees.roots, len(trees.children)))
    column_of_feature = np.arange(n_columns)
    classifier = hasattr(model, "classes_")
    if isinstance(compiled, CompiledForest):
        covers = np.concatenate([e.tree_.weighted_n_node_samples for e in model.estimators_])
        values = compiled.values / len(sizes)  # the forest's output is the mean of its trees'
        start, tree_output = np.zeros(values.shape[1]), np.full(len(sizes), -1)
        read_input = partial(float32_input, allow_nan=compiled.allow_nan)
        name = "probability" if classifier else "value"
    else:
        start, n_outputs = compiled.start, compiled.n_outputs
        tree_output = np.arange(len(sizes)) % n_outputs  # trees come iteration by iteration, an output each
        values = np.zeros((len(trees.children), n_outputs))
        values[np.arange(len(values)), np.repeat(tree_output, sizes)] = compiled.values
        if isinstance(compiled, CompiledGradientBoosting):
            covers = np.concatenate([e.tree_.weighted_n_node_samples for e in model.estimators_.flat])
            read_input = partial(float32_input, allow_nan=False)
            identity = True
        else:  # HistGradientBoosting: its trees read its own encoding, categorical features first
            covers = np.concatenate([p.nodes["count"] for iteration in model._predictors for p in iteration])
            read_input = compiled.encode
            if model._preprocessor is not None:
                column_of_feature = np.concatenate([np.flatnonzero(model.is_categorical_),
                                                    np.flatnonzero(~model.is_categorical_)])
            identity = type(model._loss.link).__name__ == "IdentityLink"
        name = "log_odds" if classifier else "value" if identity else "raw_score"
    core = _TreeCore(trees, covers.astype(np.float64), values, start, tree_output, column_of_feature,
                     read_input, n_columns)
    if classifier:
        return core, name, lambda X: np.searchsorted(model.classes_, compiled.predict(X))
    return core, name, None


# ---- linear models --------------------------------------------------------------------------------

class _LinearCore:
    """Contributions coef * (x - mean) of a linear model's raw output, per model input column."""

    def __init__(self, model, mean: np.ndarray):
        self.coef = np.atleast_2d(model.coef_).astype(np.float64)
        self.intercept = np.broadcast_to(np.asarray(model.intercept_, dtype=np.float64), len(self.coef))
        self.mean = mean
        self.base = self.coef @ mean + self.intercept

    def explain(self, X: np.ndarray, output: int):
        contributions = (X - self.mean) * self.coef[output]
        return X @ self.coef[output] + self.intercept[output], np.full(len(X), self.base[output]), contributions

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices, as LinearClassifierMixin.predict decides them."""
        scores = X @ self.coef.T + self.intercept
        return (scores[:, 0] > 0).astype(np.intp) if scores.shape[1] == 1 else scores.argmax(axis=1)


def _linear_core(model, mean: np.ndarray | None) -> tuple[_LinearCore, str, object] | None:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    if not isinstance(model, (LinearModel, LinearClassifierMixin)) or not hasattr(model, "coef_"):
        return None
    classifier = isinstance(model, LinearClassifierMixin)
    if not classifier and np.ndim(model.coef_) > 1 and np.shape(model.coef_)[0] > 1:
        raise NotExplainable(f"cannot explain {type(model).__name__} exactly: it predicts several targets")
    if mean is None:
        raise NotExplainable(f"cannot explain {type(model).__name__} without background rows: its contributions "
                             "are measured from their mean")
    name = "log_odds" if isinstance(model, (LogisticRegression, LogisticRegressionCV)) else \
        "decision_function" if classifier else "value"
    core = _LinearCore(model, mean)
    return core, name, core.predict if classifier else None


# ---- the model's input columns back to the signature's features ------------------------------------

def _sources(step, n_in: int) -> np.ndarray:
    """For each output column of a transformer compile_transformer reproduces, its input column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if isinstance(step, Pipeline):
        sources = np.arange(n_in)
        for _, inner in step.steps:
            if inner is not None and inner != "passthrough":
                sources = sources[_sources(inner, len(sources))]
        return sources
    if isinstance(step, ColumnTransformer):
        parts = [(np.asarray(step._transformer_to_input_indices[name], dtype=np.intp), inner) for name, inner, _, _
                 in step._iter(fitted=True, column_as_labels=False, skip_drop=True, skip_empty_columns=True)]
        return np.concatenate([columns[_sources(inner, len(columns))] for columns, inner in parts])
    if isinstance(step, OneHotEncoder):  # no dropped column: compile_transformer refuses drop
        return np.repeat(np.arange(n_in), [len(c) for c in step.categories_])
    return np.arange(n_in)  # passthrough, imputer (no indicator), scaler, ordinal encoder: column by column


# ---- the explainer ---------------------------------------------------------------------------------

SUPPORTED = ("RandomForest and ExtraTrees, GradientBoosting and HistGradientBoosting (classifiers and "
             "regressors), and linear models (LogisticRegression, LinearRegression, Ridge, ...)")


class Explainer:
    """Exact contributions for rows of the serving matrix (numbers, category codes: category_codes.py)."""

    def __init__(self, prepare, core, predict, output_name: str, classes, to_features: np.ndarray,
                 names: list[str]):
        self.names = names              # the signature's features, the columns of contributions
        self.prepare = prepare          # serving matrix -> the model's input (compiled_preprocessing)
        self.core = core
        self.predict = predict          # model input -> class indices; None for regressors
        self.output_name = output_name
        self.classes = classes
        self.to_features = to_features  # (model input columns, features): 1 where a column comes from a feature
        # per class, the core's output and its sign: a binary model with one raw output scores
        # class 1, and class 0's log-odds are its negative
        n_outputs = len(core.base)
        if classes is None:
            self.output_of, self.sign_of = np.zeros(1, np.intp), np.ones(1)
        elif len(classes) == 2 and n_outputs == 1:
            self.output_of, self.sign_of = np.zeros(2, np.intp), np.array([-1.0, 1.0])
        else:
            self.output_of, self.sign_of = np.arange(n_outputs), np.ones(n_outputs)

    @classmethod
    def for_pipeline(cls, pipeline, signature, background: np.ndarray | None = None) -> "Explainer":
        """pipeline: the fitted model (a Pipeline or a bare estimator) the signature describes;
        background: rows of the serving matrix, e.g. training rows, whose mean linear models are
        explained from (trees use the cover of their nodes instead)."""
        from sklearn.pipeline import Pipeline

        final = pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline
        n_features = len(signature.features)
        kinds = _column_kinds(n_features, signature.category_columns())
        if kinds is None or getattr(pipeline, "n_features_in_", n_features) != n_features:
            raise NotExplainable("cannot explain this model: its input does not match its signature")
        prepared = compile_transformer(pipeline[:-1], kinds) if isinstance(pipeline, Pipeline) and len(pipeline) > 1 \
            else ((lambda X: X), kinds)
        if prepared is None or any(kind is not None for kind in prepared[1]):
            steps = " -> ".join(type(step).__name__ for _, step in pipeline.steps[:-1])
            raise NotExplainable(f"cannot explain this model exactly: its preprocessing ({steps}) is not made of "
                                 "the steps explanations can trace (ColumnTransformer, Pipeline, SimpleImputer, "
                                 "StandardScaler, OneHotEncoder, OrdinalEncoder)")
        prepare = prepared[0]
        sources = _sources(pipeline[:-1], n_features) if isinstance(pipeline, Pipeline) and len(pipeline) > 1 \
            else np.arange(n_features)
        n_columns = len(sources)
        mean = None if background is None else _mean(prepare(np.asarray(background, dtype=np.float64)))
        made = _tree_core(final, n_columns) or _linear_core(final, mean)
        if made is None:
            raise NotExplainable(f"cannot explain {type(final).__name__} exactly: exact contributions are "
                                 f"computed for {SUPPORTED}")
        core, name, predict = made
        to_features = np.zeros((n_columns, n_features))
        to_features[np.arange(n_columns), sources] = 1.0
        return cls(prepare, core, predict, name, getattr(final, "classes_", None), to_features, signature.names)

    def explain(self, rows: np.ndarray, class_index=None) -> Explanation:
        """rows: (rows, features) of the serving matrix. class_index: for a classifier, the class whose
        output is explained, one for all rows or one per row; None: each row's predicted class."""
        X = self.prepare(np.asarray(rows, dtype=np.float64))
        n = len(X)
        if self.classes is None:
            if class_index is not None:
                raise ValueError("a regressor has no classes to choose from")
            chosen = None
            which = np.zeros(n, dtype=np.intp)
        else:
            which = chosen = self.predict(X) if class_index is None else np.broadcast_to(np.asarray(class_index), (n,))
            if chosen.dtype.kind not in "iu" or ((chosen < 0) | (chosen >= len(self.classes))).any():
                raise ValueError(f"class_index must be a whole number in 0..{len(self.classes) - 1}")
        outputs, base, contributions = np.zeros(n), np.zeros(n), np.zeros((n, self.to_features.shape[1]))
        for output in np.unique(self.output_of[which]):
            at = np.flatnonzero(self.output_of[which] == output)
            outputs[at], base[at], phi = self.core.explain(X[at], output)
            contributions[at] = phi @ self.to_features
        sign = self.sign_of[which]
        return Explanation(outputs * sign, base * sign, contributions * sign[:, None], self.output_name,
                           None if chosen is None else np.array(chosen, dtype=np.intp))


def _mean(X: np.ndarray) -> np.ndarray:
    if not len(X) or np.isnan(X).any():
        raise ValueError("background rows must be at least one row without missing values after preprocessing")
    return X.mean(axis=0)


# ---- a stored model --------------------------------------------------------------------------------

def for_stored_model(pipeline, signature, folder) -> Explainer:
    """The Explainer of a model in the store. A linear model is explained from the mean of the
    training rows stored with it (model_store.REFERENCE_FILE), else from the signature's feature means
    (numbers only); trees need no background. Raises NotExplainable."""
    from pathlib import Path

    from sklearn.pipeline import Pipeline

    final = pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline
    background = None
    if not isinstance(final, TREE_ENSEMBLES):  # read only where used: the CSV reader loads pandas' parsers
        from sklearn_service.csv_data import read_csv
        from sklearn_service.drift_report import encode
        from sklearn_service.model_store import REFERENCE_FILE, TARGET_COLUMN

        path = Path(folder) / REFERENCE_FILE
        if path.is_file():
            background, _ = encode(signature, read_csv(path), TARGET_COLUMN)
        elif all(f.stats and not f.is_category for f in signature.features):
            background = np.array([[f.stats["mean"] for f in signature.features]])
    try:
        return Explainer.for_pipeline(pipeline, signature, background)
    except NotExplainable:
        raise
    except ValueError as exc:  # e.g. background rows the preprocessing leaves gaps in
        raise NotExplainable(f"cannot explain this model: {exc}") from None
