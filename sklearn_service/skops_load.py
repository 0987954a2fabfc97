"""Loading a user's .skops file: its size capped, only trusted types, tree contents checked.

What loads without --trust-types is what skops trusts by default plus the exact names in
IMPLICIT_TYPES, never a prefix: a name under `sklearn.` can be a function from elsewhere
(`sklearn.utils._testing.check_output` is `subprocess.check_output`). Each implicit name is a class
that only holds data, whatever node of the file names it; no function, partial or other callable is
trusted implicitly. The tree types are trusted only because their node indices, which scikit-learn
follows without bounds checks (the reason skops leaves them out), are checked here after loading,
before anything predicts.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np

from sklearn_service.model_requirements import children, missing_module
from sklearn_service.user_input import DataError, shown, shown_list

TREE = "sklearn.tree._tree.Tree"
HIST_TREE = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
IMPLICIT_TYPES = {
    TREE: "decision trees, forests, gradient boosting (node indices checked after loading)",
    HIST_TREE: "HistGradientBoosting (node indices checked after loading)",
    "numpy.dtype": "SimpleImputer and encoders record the dtype they were fitted on",
    "sklearn.utils._bunch.Bunch": "a dict: Stacking and Voting ensembles' named_estimators_",
}
# skops nodes whose object is code, or is called while loading: a function or type, a partial, an
# operator, a constructor called with arguments from the file. (A bound method is named below.)
CODE_NODES = {"FunctionNode", "PartialNode", "OperatorFuncNode", "TypeNode", "ConstructorFromReduceNode"}
CHUNK = 1 << 20


def read_capped(path, max_bytes: int) -> bytes:
    """The file's bytes, once its zip members are known to inflate to at most max_bytes: the sizes
    the zip declares, then the bytes they really inflate to (a header can lie)."""
    if path.stat().st_size > max_bytes:
        raise DataError(f"{shown(path.name)} is {path.stat().st_size:,} bytes; the cap is {max_bytes:,} "
                        "(--max-model-bytes)")
    data = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:
                raise DataError(f"{shown(path.name)} inflates to {declared:,} bytes; the cap is {max_bytes:,} "
                                "(--max-model-bytes)")
            total = 0
            for member in members:
                with archive.open(member) as stream:
                    while block := stream.read(CHUNK):
                        total += len(block)
                        if total > max_bytes:
                            raise DataError(f"{shown(path.name)} inflates to more than {max_bytes:,} bytes "
                                            "(--max-model-bytes)")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{shown(path.name)} is not a valid .skops file ({type(exc).__name__}: {shown(exc)})") \
            from None
    return data


def _code_names(data: bytes) -> set[str]:
    """The names the file stores as code (functions, partials, methods, types), from its schema."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            if node.get("__loader__") in CODE_NODES:
                found.add(f"{node.get('__module__')}.{node.get('__class__')}")
            if node.get("__loader__") == "MethodNode":  # skops names a bound method by its owner's type
                found.add(f"{node.get('__module__')}.{node.get('__class__')}.{node.get('content', {}).get('func')}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        walk(json.loads(archive.read("schema.json")))
    return found


def untrusted(data: bytes, trust_types) -> tuple[list[str], list[str]]:
    """Everything in the file trusted neither by skops, IMPLICIT_TYPES nor the user: (code, types)."""
    import skops.io

    listed = skops.io.get_untrusted_types(data=data)
    code = _code_names(data)
    # an implicit name is trusted as data only: as a function or type node it would be called
    refused = sorted(n for n in listed if n not in trust_types and (n not in IMPLICIT_TYPES or n in code))
    return [n for n in refused if n in code], [n for n in refused if n not in code]


def load(path, trust_types, max_bytes: int):
    import skops.io

    data = read_capped(path, max_bytes)
    try:
        code, types = untrusted(data, trust_types)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{shown(path.name)} is not a valid .skops file ({type(exc).__name__}: {shown(exc)})") \
            from None
    if code or types:
        held = "; ".join(part for part in (f"code (functions or callables it would run): {shown_list(code)}"
                                           if code else "", f"types: {shown_list(types)}" if types else "") if part)
        raise DataError(f"refusing to load {shown(path.name)}: it holds what skops does not trust by default: "
                        f"{held} (after checking each, name it with --trust-types)")
    try:
        # every name the file lists is now trusted by skops, IMPLICIT_TYPES or the user
        model = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    except ModuleNotFoundError as exc:
        raise DataError(missing_module(shown(path.name), exc)) from None
    except Exception as exc:
        raise DataError(f"{shown(path.name)} could not be loaded ({type(exc).__name__}: {shown(exc)})") from None
    check_contents(model)
    return model


# -- contents: what scikit-learn and SciPy follow without bounds checks ----------------------------

def check_contents(model) -> None:
    """Refuses trees whose node indices point outside their arrays or back up the tree (which
    would read outside memory or never end), and B-splines SciPy would not build from their data."""
    try:
        _check_contents(model)
    except DataError:
        raise
    except Exception as exc:  # a field or attribute missing, of the wrong type or shape
        raise DataError(f"the model's trees or splines are malformed ({type(exc).__name__}: {shown(exc)}): "
                        "the file is damaged or crafted") from None


def _check_contents(model) -> None:
    from scipy.interpolate import BSpline
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.svm._base import BaseLibSVM
    from sklearn.tree._tree import Tree

    seen, checked = set(), set()
    # (object, the n_features_in_ an ensemble holding it checks its rows against)
    stack = [(model, None)]
    while stack:
        obj, bound = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        own = getattr(obj, "n_features_in_", None) if hasattr(obj, "fit") else None
        if isinstance(getattr(obj, "tree_", None), Tree):
            limits = [x for x in (own, bound) if x is not None]
            _check_tree(obj.tree_, min(limits) if limits else None)
            checked.add(id(obj.tree_))
        if getattr(obj, "_predictors", None) is not None and hasattr(obj, "_bin_mapper"):
            _check_hist_trees(obj, own)
            checked.update(id(p) for trees in obj._predictors for p in trees)
        if isinstance(obj, (Tree, TreePredictor)) and id(obj) not in checked:
            raise DataError("the model holds a tree outside a fitted tree estimator")
        if isinstance(obj, BaseLibSVM):
            _check_libsvm(obj)
        if isinstance(obj, BSpline):
            try:
                BSpline(obj.t, obj.c, obj.k, extrapolate=obj.extrapolate, axis=obj.axis)
            except Exception as exc:
                raise DataError(f"the model holds a B-spline SciPy refuses: {shown(exc)}") from None
        for name, child in children(obj):
            # an ensemble's members take its rows unchecked: they inherit its n_features_in_
            stack.append((child, own if name in ("estimators_", "estimator_") else bound if name is None else None))
    return None


def _check_libsvm(svm) -> None:
    """libsvm (SVC, SVR, NuSVC, NuSVR, OneClassSVM) indexes its arrays by these counts without checking
    them; scikit-learn's own check (CVE-2020-28975) skips sparse models, and a crafted one crashed
    the process. Every count and shape libsvm follows must agree with the arrays it reads."""
    import scipy.sparse as sp
    from sklearn.svm._base import LIBSVM_IMPL

    def refuse(why: str):
        raise DataError(f"the model holds a {type(svm).__name__} whose {why}: the file is damaged or crafted")

    if svm._impl not in LIBSVM_IMPL:
        refuse("libsvm type is unknown")
    classifier = svm._impl in ("c_svc", "nu_svc")
    vectors, support, n_support = svm.support_vectors_, np.asarray(svm.support_), np.asarray(svm._n_support)
    n_rows, n_columns = (int(n) for n in svm.shape_fit_)
    precomputed = svm.kernel == "precomputed"
    if bool(svm._sparse) != sp.issparse(vectors):
        refuse("support vectors are not stored as its sparse flag says")
    for matrix in (vectors, svm._dual_coef_):
        if sp.issparse(matrix):
            sp.csr_matrix(matrix).check_format(full_check=True)  # indices within shape, indptr ordered
    n_classes = len(n_support) if classifier else 1
    count = len(support)
    if support.ndim != 1 or n_support.ndim != 1 or np.any(n_support < 0) or int(svm.n_support_.sum()) != count or \
            (classifier and n_classes < 2) or (not classifier and len(n_support) != 2):
        refuse("support vector counts do not add up")
    if np.any((support < 0) | (support >= n_rows)):
        refuse("support indices point outside the training rows")
    if not precomputed and (vectors.ndim != 2 or vectors.shape != (count, n_columns)
                            or n_columns != svm.n_features_in_):
        refuse("support vectors do not have the shape its counts say")
    pairs = n_classes * (n_classes - 1) // 2 if classifier else 1
    if svm._dual_coef_.shape != (max(n_classes - 1, 1), count) or np.shape(svm._intercept_) != (pairs,):
        refuse("coefficients do not have the shape its counts say")
    if np.size(svm._probA) not in (0, pairs) or np.size(svm._probB) != np.size(svm._probA):
        refuse("probability parameters do not have the shape its counts say")
    if classifier and len(getattr(svm, "class_weight_", ())) != n_classes:
        refuse("class weights do not match its classes")


def _refuse_tree(why: str):
    raise DataError(f"the model holds a tree whose {why}: the file is damaged or crafted")


def _check_tree(tree, n_features) -> None:
    if n_features is None:
        _refuse_tree("estimator records no n_features_in_")
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    count, at = tree.node_count, np.arange(tree.node_count)
    if count < 1 or len(left) != count:
        _refuse_tree("node count does not match its nodes")
    inner = left != -1
    if np.any(inner != (right != -1)):
        _refuse_tree("nodes have one child")
    if np.any((left[inner] <= at[inner]) | (right[inner] <= at[inner]) | (left[inner] >= count)
              | (right[inner] >= count)):
        _refuse_tree("child indices point outside the tree or back up it")
    if np.any((feature[inner] < 0) | (feature[inner] >= min(n_features, tree.n_features))):
        _refuse_tree(f"splits name features beyond the {n_features} it was fitted on")


def _check_hist_trees(estimator, n_features) -> None:
    if n_features is None:
        _refuse_tree("estimator records no n_features_in_")
    try:
        known, f_idx_map = estimator._bin_mapper.make_known_categories_bitsets()
    except Exception:
        _refuse_tree("bin mapper is inconsistent")
    for trees in estimator._predictors:
        for predictor in trees:
            nodes, bitsets = predictor.nodes, predictor.raw_left_cat_bitsets
            count, at = len(nodes), np.arange(len(nodes))
            if count < 1 or bitsets.ndim != 2 or bitsets.shape[1] != 8 or known.shape[1:] != (8,):
                _refuse_tree("arrays have the wrong shape")
            inner = nodes["is_leaf"] == 0
            left, right = nodes["left"][inner].astype(np.int64), nodes["right"][inner].astype(np.int64)
            if np.any((left <= at[inner]) | (right <= at[inner]) | (left >= count) | (right >= count)):
                _refuse_tree("child indices point outside the tree or back up it")
            feature = nodes["feature_idx"][inner].astype(np.int64)
            if np.any((feature < 0) | (feature >= n_features)) or len(f_idx_map) < n_features:
                _refuse_tree(f"splits name features beyond the {n_features} it was fitted on")
            categorical = inner & (nodes["is_categorical"] != 0)
            if np.any(nodes["bitset_idx"][categorical] >= len(bitsets)) or \
                    np.any(f_idx_map[nodes["feature_idx"][categorical]] >= len(known)):
                _refuse_tree("category sets point outside their arrays")
