""".skops trust: exact names only, never a prefix; no code from the file runs unless named; tree contents checked.

The crafted files are real skops dumps whose schema.json is rewritten inside the zip, as an attacker would.
"""

from __future__ import annotations

import json
import subprocess
import zipfile

import bentoml
import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import (GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier,
                              StackingClassifier)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, SplineTransformer

import train as train_cli
from harness.import_cli import refused


def rewrite_schema(path, edit) -> None:
    """Rewrites schema.json inside a .skops zip with edit(schema dict)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(members["schema.json"])
    edit(schema)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def nodes(schema, loader):
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("__loader__") == loader:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    return found


def test_a_function_re_exported_under_sklearn_is_not_trusted(tmp_path, capsys):
    """The reported gadget: subprocess.check_output renamed sklearn.utils._testing.check_output in a
    FunctionTransformer, with shell=True it runs the column name on every predict."""
    marker = tmp_path / "ran"
    frame = pd.DataFrame({f"touch {marker}": [1.0, 2.0, 3.0, 4.0]})
    gadget = Pipeline([("f", FunctionTransformer()), ("m", DummyClassifier())]).fit(frame, [0, 1, 0, 1])
    gadget[0].func, gadget[0].kw_args = subprocess.check_output, {"shell": True}
    path = tmp_path / "gadget.skops"
    skops.io.dump(gadget, path)

    def rename(schema):
        (function,) = nodes(schema, "FunctionNode")
        assert function["__module__"] == "subprocess"
        function["__module__"] = "sklearn.utils._testing"
    rewrite_schema(path, rename)
    err = refused(["--import-model", str(path), "--name", "gadget"], capsys)
    assert "sklearn.utils._testing.check_output" in err and "--trust-types" in err
    assert not marker.exists()


def _json(value):
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True}


def load_time_call(module: str, name: str, args: list):
    """A ConstructorFromReduceNode: skops calls module.name(*args) while loading, if it trusts the name."""
    values = [{"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
               "content": [_json(v) for v in a]} if isinstance(a, list) else _json(a) for a in args]
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": values}}


def function_transformer_file(tmp_path, **function):
    """A FunctionTransformer pipeline dumped with skops, its function's node replaced by `function`."""
    X = np.arange(8.0).reshape(4, 2)
    model = make_pipeline(FunctionTransformer(np.log1p), DummyClassifier()).fit(X, [0, 1, 0, 1])
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)

    def replace(schema):
        (node,) = nodes(schema, "FunctionNode")
        node.update(function)
    rewrite_schema(path, replace)
    return path


# callables found under sklearn.* (and elsewhere) that are functions from os, subprocess, importlib, builtins
CALLS = {
    "os.makedirs as sklearn.datasets._base.makedirs": ("sklearn.datasets._base", "makedirs", ["{marker}"]),
    "os.remove as sklearn.datasets._california_housing.remove": ("sklearn.datasets._california_housing",
                                                                  "remove", ["{victim}"]),
    "subprocess.check_output as sklearn.utils._testing.check_output": ("sklearn.utils._testing", "check_output",
                                                                       [["sh", "-c", "touch {marker}"]]),
    "importlib.import_module as sklearn.utils.discovery.import_module": ("sklearn.utils.discovery",
                                                                        "import_module", ["evil_module_on_path"]),
    "open as numpy.lib._datasource._open": ("numpy.lib._datasource", "_open", ["{marker}", "w"]),
    "builtins.eval": ("builtins", "eval", ["__import__('pathlib').Path('{marker}').touch()"]),
}


@pytest.mark.parametrize("case", CALLS)
def test_re_exported_callables_are_refused_by_name_and_never_run(case, tmp_path, capsys, monkeypatch):
    module, name, args = CALLS[case]
    marker, victim = tmp_path / "ran", tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "evil_module_on_path.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [[v.format(marker=marker) for v in a] if isinstance(a, list) else a.format(marker=marker, victim=victim)
            for a in args]
    path = function_transformer_file(tmp_path, **load_time_call(module, name, args))
    err = refused(["--import-model", str(path), "--name", "gadget"], capsys)
    assert f"code (functions or callables it would run): ['{module}.{name}']" in err
    assert not marker.exists() and victim.read_text() == "keep me"


def test_trust_types_are_exact_names_not_prefixes(tmp_path, capsys):
    path = function_transformer_file(tmp_path, __module__="sklearn.utils._testing", __class__="check_output")
    err = refused(["--import-model", str(path), "--name", "gadget", "--trust-types", "sklearn.utils._testing"],
                  capsys)
    assert "code (functions or callables it would run): ['sklearn.utils._testing.check_output']" in err


def _frame(rows=200, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                      "c": rng.choice(["x", "y", "z"], rows)})
    return X, (X["a"] + (X["c"] == "x") > 0).astype(int)


def _numbers(rows=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 4))
    return X, (X[:, 0] > 0).astype(int)


def ordinary_models():
    X, y = _numbers()
    frame, fy = _frame()
    columns = ColumnTransformer([("n", SimpleImputer(), ["a", "b"]), ("c", OneHotEncoder(handle_unknown="ignore"),
                                                                       ["c"])])
    return {
        "random forest": (RandomForestClassifier(10, random_state=0).fit(X, y), []),
        "gradient boosting": (GradientBoostingClassifier(n_estimators=10).fit(X, y), []),
        "hist gradient boosting": (HistGradientBoostingClassifier(max_iter=10).fit(X, y), []),
        "ColumnTransformer + OneHotEncoder pipeline": (
            make_pipeline(columns, RandomForestClassifier(10, random_state=0)).fit(frame, fy), []),
        "logistic regression": (LogisticRegression().fit(X, y), []),
        "stacking": (StackingClassifier([("lr", LogisticRegression())]).fit(X, y), []),
        "spline": (make_pipeline(SplineTransformer(), Ridge()).fit(X, X[:, 1]),
                   ["scipy.interpolate._bsplines.BSpline", "scipy._lib.array_api_compat.numpy._aliases.asarray"]),
        "hist gradient boosting, categorical": (
            make_pipeline(ColumnTransformer([("n", "passthrough", ["a", "b"]), ("c", OrdinalEncoder(), ["c"])]),
                          HistGradientBoostingClassifier(max_iter=10, categorical_features=[2])).fit(frame, fy),
            ["functools.partial", "sklearn.utils.validation.check_array"]),
    }


@pytest.mark.parametrize("case", list(ordinary_models()))
def test_ordinary_models_import_with_the_trust_the_readme_names(case, tmp_path, capsys):
    model, needed = ordinary_models()[case]
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    if needed:
        err = refused(["--import-model", str(path), "--name", "ordinary"], capsys)
        assert all(name in err for name in needed), err
    code = train_cli.main(["--import-model", str(path), "--name", "ordinary", "--trust-types", ",".join(needed)])
    assert code == 0, capsys.readouterr().err
    loaded = bentoml.sklearn.load_model("ordinary:latest")
    assert type(loaded) is type(model)


def _forest_file(tmp_path):
    X, y = _numbers()
    path = tmp_path / "forest.skops"
    skops.io.dump(RandomForestClassifier(3, max_depth=3, random_state=0).fit(X, y), path)
    return path


def edit_node_arrays(path, field: str, edit) -> None:
    """Rewrites, inside the zip, the first stored node array (an .npy member) that has `field`."""
    import io

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name, data in members.items():
        array = np.load(io.BytesIO(data), allow_pickle=False) if name.endswith(".npy") else None
        if array is not None and array.dtype.names and field in array.dtype.names:
            edit(array)
            out = io.BytesIO()
            np.save(out, array)
            members[name] = out.getvalue()
            break
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


TREE_EDITS = {
    "child out of range": ("left_child", 10**6),
    "child pointing back up (a cycle)": ("right_child", 0),
    "feature beyond the fitted ones": ("feature", 10**6),
}


@pytest.mark.parametrize("case", TREE_EDITS)
def test_trees_whose_indices_point_outside_are_refused_before_anything_predicts(case, tmp_path, capsys):
    path = _forest_file(tmp_path)
    field, value = TREE_EDITS[case]
    edit_node_arrays(path, field, lambda nodes: nodes[field].__setitem__(0, value))
    err = refused(["--import-model", str(path), "--name", "crafted"], capsys)
    assert "the file is damaged or crafted" in err


def test_hist_gradient_boosting_nodes_are_checked(tmp_path, capsys):
    X, y = _numbers()
    path = tmp_path / "hgb.skops"
    skops.io.dump(HistGradientBoostingClassifier(max_iter=3).fit(X, y), path)
    edit_node_arrays(path, "feature_idx", lambda nodes: nodes["left"].__setitem__(0, 10**6))
    assert "the file is damaged or crafted" in refused(["--import-model", str(path), "--name", "crafted"], capsys)


def test_trusting_partial_never_trusts_the_function_it_wraps(tmp_path, capsys):
    """HistGradientBoosting with categories needs functools.partial named; the partial's function is a
    node of its own, so a file that swaps it for another is still refused."""
    model, needed = ordinary_models()["hist gradient boosting, categorical"]
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)

    def swap(schema):
        for node in nodes(schema, "FunctionNode"):
            if node["__class__"] == "check_array":
                node.update({"__module__": "sklearn.utils._testing", "__class__": "check_output"})
    rewrite_schema(path, swap)
    err = refused(["--import-model", str(path), "--name", "partial", "--trust-types", ",".join(needed)], capsys)
    assert "['sklearn.utils._testing.check_output']" in err


@pytest.mark.parametrize("name", ["sklearn.utils._bunch.Bunch", "numpy.dtype", "sklearn.tree._tree.Tree",
                                  "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"])
def test_an_implicitly_trusted_name_stored_as_a_function_is_refused(name, tmp_path, capsys):
    """The implicit names are trusted as data; as a FunctionTransformer's func they would be called."""
    X = np.random.RandomState(0).rand(40, 3)
    path = tmp_path / "callable.skops"
    skops.io.dump(make_pipeline(FunctionTransformer(np.negative), LogisticRegression()).fit(X, X[:, 0] > .5), path)
    module, _, cls = name.rpartition(".")

    def retarget(schema):
        for node in nodes(schema, "FunctionNode"):
            node.update({"__module__": module, "__class__": cls})
    rewrite_schema(path, retarget)
    err = refused(["--import-model", str(path), "--name", "callable"], capsys)
    assert f"code (functions or callables it would run): ['{name[:50]}" in err, err


def _crafted_svm(make, sparse, edit):
    import scipy.sparse as sp

    X = np.random.RandomState(0).rand(40, 3)
    y = np.arange(40) % 2
    model = make().fit(sp.csr_matrix(X) if sparse else X, *([] if make.__name__ == "OneClassSVM" else [y]))
    edit(model)
    return model


@pytest.mark.parametrize("make, sparse, edit, words", [
    # scikit-learn's own check (CVE-2020-28975) skips sparse models: this one crashed the process
    ("SVC", True, lambda m: setattr(m, "_n_support", np.array([2**30, 2**30], dtype=np.int32)), "counts do not add up"),
    ("SVC", False, lambda m: setattr(m, "_n_support", np.array([2**30, 2**30], dtype=np.int32)), "counts do not add up"),
    ("SVC", False, lambda m: setattr(m, "support_", m.support_ + 1000), "indices point outside"),
    ("NuSVC", False, lambda m: setattr(m, "_intercept_", np.zeros(3)), "coefficients"),
    ("SVR", True, lambda m: setattr(m, "_dual_coef_", m._dual_coef_[:, :2]), "coefficients"),
    ("NuSVR", False, lambda m: setattr(m, "support_vectors_", m.support_vectors_[:, :2]), "shape its counts say"),
    ("OneClassSVM", True, lambda m: setattr(m, "_sparse", False), "sparse flag"),
])
def test_libsvm_models_whose_counts_disagree_with_their_arrays_are_refused(make, sparse, edit, words, tmp_path,
                                                                           capsys):
    import sklearn.svm

    path = tmp_path / "svm.skops"
    skops.io.dump(_crafted_svm(getattr(sklearn.svm, make), sparse, edit), path)
    err = refused(["--import-model", str(path), "--name", "svm", "--trust-types",
                   "scipy.sparse._csr.csr_matrix"], capsys)
    assert f"the model holds a {make} whose" in err and words in err, err


@pytest.mark.parametrize("make", ["SVC", "NuSVC", "SVR", "NuSVR", "OneClassSVM"])
@pytest.mark.parametrize("sparse", [False, True])
def test_fitted_libsvm_models_pass_the_checks(make, sparse):
    import sklearn.svm

    from sklearn_service.skops_load import check_contents

    check_contents(_crafted_svm(getattr(sklearn.svm, make), sparse, lambda m: None))
