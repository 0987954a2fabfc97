"""Bring your own model: train.py --import-model, every refusal leaving the store untouched."""

from __future__ import annotations

import pickle
from pathlib import Path

import bentoml
import joblib
import pytest
import skops.io
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import train as train_cli
from harness.byo_models import flipper_regressor, numpy_classifier, penguin_classifier, penguin_frame
from sklearn_service.signature import Signature


def store_tags() -> set[str]:
    return {str(m.tag) for m in bentoml.models.list()}


@pytest.fixture(scope="module")
def classifier():
    return penguin_classifier()


@pytest.fixture
def reference_csv(tmp_path):
    X, y = penguin_frame(120, seed=5)
    path = tmp_path / "reference.csv"
    X.assign(species=y).to_csv(path, index=False)
    return path


def run(args, capsys) -> tuple[int, str, str]:
    code = train_cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_skops_import_with_reference_data_records_signature_and_metrics(classifier, tmp_path, reference_csv, capsys):
    path = tmp_path / "penguins.skops"
    skops.io.dump(classifier, path)
    code, out, _ = run(["--import-model", str(path), "--reference-data", str(reference_csv),
                        "--target", "species", "--name", "byo_skops"], capsys)
    assert code == 0, out
    saved = bentoml.models.get("byo_skops:latest")
    meta = saved.info.metadata
    signature = Signature.from_metadata(meta)
    assert signature.takes_frame and signature.classes == ["Adelie", "Chinstrap", "Gentoo"]
    kinds = {f.name: f.kind for f in signature.features}
    assert kinds == {"island": "category", "bill_length_mm": "number", "flipper_length_mm": "integer",
                     "sex": "category", "tagged": "boolean"}
    assert signature.features[0].stats is None and signature.features[1].stats["bins"]
    assert meta["holdout_metrics"]["accuracy"] > 0.8
    assert meta["training"]["file_sha256"].startswith("sha256:") and meta["training"]["format"] == "skops"
    assert meta["training"]["made_with_scikit_learn"] == sklearn.__version__
    assert Path(saved.path_of("reference.csv")).is_file() and "accuracy" in out


def test_import_without_reference_data_reads_categories_from_the_encoder(classifier, tmp_path, capsys):
    path = tmp_path / "penguins.skops"
    skops.io.dump(classifier, path)
    assert run(["--import-model", str(path), "--name", "byo_bare"], capsys)[0] == 0
    signature = Signature.from_metadata(bentoml.models.get("byo_bare:latest").info.metadata)
    island = signature.features[signature.names.index("island")]
    assert island.kind == "category" and island.categories == ["Biscoe", "Dream", "Torgersen"]


def test_pickles_load_only_when_trusted(classifier, tmp_path, capsys):
    path = tmp_path / "penguins.joblib"
    joblib.dump(classifier, path)
    before = store_tags()
    code, _, err = run(["--import-model", str(path), "--name", "byo_pickle"], capsys)
    assert code == 2 and "runs any code it holds when loaded" in err and "--trust-pickle" in err
    assert store_tags() == before
    assert run(["--import-model", str(path), "--trust-pickle", "--name", "byo_pickle"], capsys)[0] == 0
    assert bentoml.models.get("byo_pickle:latest").info.metadata["training"]["format"] == "pickle"


def test_a_different_scikit_learn_version_is_recorded_and_warned_about(tmp_path, capsys):
    model, _ = numpy_classifier()
    data = pickle.dumps(model)
    old = sklearn.__version__.encode()
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(old, b"0" * (len(old) - 2) + b".0", 1))
    code, _, err = run(["--import-model", str(path), "--trust-pickle", "--name", "byo_old"], capsys)
    assert code == 0 and "was made with scikit-learn '0" in err
    assert bentoml.models.get("byo_old:latest").info.metadata["training"]["made_with_scikit_learn"] != \
        sklearn.__version__


def doubled(X):
    return X * 2


def _untrusted_pipeline():
    X = numpy_classifier()[1]
    return make_pipeline(FunctionTransformer(doubled), RandomForestClassifier(n_estimators=3)).fit(X, X[:, 0] > 0)


def _unfitted():
    return RandomForestClassifier()


BAD_IMPORTS = {
    "not an estimator": (lambda p: skops.io.dump({"weights": [1, 2]}, p), ".skops", [],
                         "not a scikit-learn estimator"),
    "not fitted": (lambda p: skops.io.dump(_unfitted(), p), ".skops", [], "is not fitted"),
    "untrusted type": (lambda p: skops.io.dump(_untrusted_pipeline(), p), ".skops", [],
                       "code (functions or callables it would run): ['tests.test_model_import.doubled']"),
    "corrupt skops": (lambda p: p.write_bytes(b"PK\x03\x04 not really"), ".skops", [], "not a valid .skops file"),
    "neither format": (lambda p: p.write_text("weights"), ".txt", [], "neither a .skops nor a .joblib/.pkl"),
    "missing file": (lambda p: None, ".skops", [], "model file not found"),
    "reference mismatch": (lambda p: skops.io.dump(penguin_classifier(), p), ".skops", ["--reference-data", "WRONG"],
                           "do not match the model's features: missing ['sex']"),
    "reference the model cannot take": (lambda p: skops.io.dump(penguin_classifier(), p), ".skops",
                                        ["--reference-data", "STRINGS"], "the model cannot predict on"),
}


@pytest.mark.parametrize("case", BAD_IMPORTS)
def test_bad_imports_fail_with_one_line_and_save_nothing(case, tmp_path, capsys):
    make, suffix, extra, expected = BAD_IMPORTS[case]
    path = tmp_path / f"model{suffix}"
    make(path)
    X, y = penguin_frame(40, seed=7)
    (tmp_path / "wrong.csv").write_text(X.drop(columns=["sex"]).assign(species=y).to_csv(index=False))
    (tmp_path / "strings.csv").write_text(X.assign(bill_length_mm="long").to_csv(index=False))
    extra = [str(tmp_path / "wrong.csv") if a == "WRONG" else str(tmp_path / "strings.csv") if a == "STRINGS"
             else a for a in extra]
    before = store_tags()
    code, _, err = run(["--import-model", str(path), *extra, "--name", "bad_import"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert store_tags() == before


def test_named_types_can_be_trusted(tmp_path, capsys):
    path = tmp_path / "custom.skops"
    skops.io.dump(_untrusted_pipeline(), path)
    assert run(["--import-model", str(path), "--trust-types", "tests.test_model_import.doubled",
                "--name", "byo_trusted"], capsys)[0] == 0


def test_regression_import_records_the_target_distribution(tmp_path, capsys):
    model, frame = flipper_regressor()
    path, reference = tmp_path / "flipper.skops", tmp_path / "flipper.csv"
    skops.io.dump(model, path)
    frame.to_csv(reference, index=False)
    assert run(["--import-model", str(path), "--reference-data", str(reference), "--target", "flipper_length_mm",
                "--name", "byo_regressor"], capsys)[0] == 0
    meta = bentoml.models.get("byo_regressor:latest").info.metadata
    assert meta["task"] == "regression" and meta["holdout_metrics"]["r2"] > 0
    assert Signature.from_metadata(meta).prediction_stats["bins"]


def test_categories_the_encoder_knows_are_kept_when_the_reference_rows_lack_them(classifier, tmp_path, capsys):
    X, y = penguin_frame(120, seed=5)
    keep = X["island"] != "Torgersen"
    reference = tmp_path / "no_torgersen.csv"
    X[keep].assign(species=y[keep]).to_csv(reference, index=False)
    path = tmp_path / "penguins.skops"
    skops.io.dump(classifier, path)
    assert run(["--import-model", str(path), "--reference-data", str(reference), "--target", "species",
                "--name", "byo_partial"],
               capsys)[0] == 0
    island = Signature.from_metadata(bentoml.models.get("byo_partial:latest").info.metadata).features[0]
    assert island.categories == ["Biscoe", "Dream", "Torgersen"] and island.category_shares[2] == 0.0
