"""A numpy evaluation path for imputer/scaler + tree-ensemble pipelines.

scikit-learn's per-call overhead (input checks, one Python call per tree) costs
about 5 ms per RandomForest(100) call whether it holds 1 row or 64. Here all the
trees are packed into flat arrays and walked together, one numpy step per tree
level, with the same float32 inputs, comparisons and summation order as
scikit-learn, so results are identical. Unsupported pipelines return None from
`compile_pipeline` and are served by scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

FORESTS = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)


def _imputer(step: SimpleImputer):
    if step.add_indicator or not np.isnan(step.missing_values) or np.isnan(step.statistics_).any():
        return None  # indicator columns or dropped all-NaN features change the shape: leave to sklearn
    stats = step.statistics_
    return lambda X: np.where(np.isnan(X), stats, X)


def _scaler(step: StandardScaler):
    mean = step.mean_ if step.with_mean else 0.0
    scale = step.scale_ if step.with_std else 1.0
    return lambda X: (X - mean) / scale


TRANSFORMS = {SimpleImputer: _imputer, StandardScaler: _scaler}


class CompiledForest:
    def __init__(self, forest):
        trees = [estimator.tree_ for estimator in forest.estimators_]
        sizes = np.array([tree.node_count for tree in trees])
        self.roots = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        nodes = np.arange(sizes.sum())
        left = np.concatenate([t.children_left + r for t, r in zip(trees, self.roots)])
        right = np.concatenate([t.children_right + r for t, r in zip(trees, self.roots)])
        is_leaf = np.concatenate([t.children_left == -1 for t in trees])
        # children[node] = (left, right); a leaf points to itself, so extra steps stay put
        self.children = np.stack([np.where(is_leaf, nodes, left), np.where(is_leaf, nodes, right)], axis=1)
        self.feature = np.where(is_leaf, 0, np.concatenate([t.feature for t in trees]))
        self.threshold = np.concatenate([t.threshold for t in trees])
        self.depth = max(t.max_depth for t in trees)
        values = np.concatenate([t.value[:, 0, :] for t in trees])
        if hasattr(forest, "classes_"):
            normalizer = values.sum(axis=1, keepdims=True)  # as DecisionTreeClassifier.predict_proba
            normalizer[normalizer == 0.0] = 1.0
            values = values / normalizer
        self.values = values
        self.n_trees = len(trees)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Mean leaf value over the trees: (rows, classes) for classifiers, (rows, 1) for regressors."""
        X = X.astype(np.float32)  # scikit-learn's trees compare float32 inputs
        flat, row_start = X.ravel(), np.arange(len(X)) * X.shape[1]
        node = np.repeat(self.roots[:, None], len(X), axis=1)  # (trees, rows)
        for _ in range(self.depth):
            go_right = flat[row_start + self.feature[node]] > self.threshold[node]
            node = self.children[node, go_right.view(np.uint8)]
        # sum over the tree axis adds tree by tree, the order scikit-learn accumulates in
        return np.add.reduce(self.values[node], axis=0) / self.n_trees


class CompiledPipeline:
    def __init__(self, transforms, forest: CompiledForest, classes):
        self.transforms = transforms
        self.forest = forest
        self.classes_ = classes

    def _leaf_means(self, X: np.ndarray) -> np.ndarray:
        for transform in self.transforms:
            X = transform(X)
        return self.forest(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._leaf_means(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        means = self._leaf_means(X)
        if self.classes_ is None:
            return means[:, 0]
        return self.classes_.take(np.argmax(means, axis=1))


def compile_pipeline(pipeline) -> CompiledPipeline | None:
    steps = list(pipeline.named_steps.values()) if isinstance(pipeline, Pipeline) else [pipeline]
    *preprocessing, final = steps
    if not isinstance(final, FORESTS) or getattr(final, "n_outputs_", 1) != 1:
        return None
    transforms = []
    for step in preprocessing:
        make = TRANSFORMS.get(type(step))
        transform = make(step) if make else None
        if transform is None:
            return None
        transforms.append(transform)
    return CompiledPipeline(transforms, CompiledForest(final), getattr(final, "classes_", None))
