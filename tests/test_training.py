from __future__ import annotations

import bentoml
import numpy as np
import pandas as pd
import pytest

import train as train_cli
from sklearn_service.csv_data import load_csv_dataset
from sklearn_service.training import DataError, infer_task, load_default_dataset, train


def test_default_training_is_seeded_and_reports_holdout_metrics():
    first, second = train(load_default_dataset()), train(load_default_dataset())
    meta = first.metadata
    assert meta["task"] == "classification"
    signature = first.signature
    assert len(signature.features) == 30 and signature.names[0] == "mean radius"
    assert signature.classes == [0, 1] and not signature.takes_frame
    assert meta["holdout_metrics"]["accuracy"] > 0.9 and meta["holdout_metrics"]["roc_auc"] > 0.95
    assert meta["training"]["test_rows"] == 114 and meta["training"]["data_hash"].startswith("sha256:")
    assert meta["training"]["data_hash"] == second.metadata["training"]["data_hash"]
    stats = signature.features[0].stats
    assert stats["min"] < stats["mean"] < stats["max"] and stats["std"] > 0
    assert len(stats["bins"]) == 9 and sum(stats["bin_shares"]) == pytest.approx(1.0)
    X = load_default_dataset().X
    assert (X == pd.Series(signature.example)).all(axis=1).any()  # a real training row
    X = X.to_numpy()
    np.testing.assert_array_equal(first.pipeline.predict_proba(X), second.pipeline.predict_proba(X))


@pytest.mark.parametrize("kind", ["logistic_regression", "gradient_boosting", "hist_gradient_boosting"])
def test_other_model_kinds_train(kind):
    assert train(load_default_dataset(), kind=kind).metadata["holdout_metrics"]["accuracy"] > 0.9


def write_csv(tmp_path, frame: pd.DataFrame, name="data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_csv_regression_is_inferred(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(y=X @ [1.0, 2.0, -1.0] + 0.5)
    result = train(load_csv_dataset(write_csv(tmp_path, frame), "y"))
    assert result.metadata["task"] == "regression" and result.signature.classes is None
    assert result.signature.prediction_stats["bins"] == sorted(result.signature.prediction_stats["bins"])
    assert result.metadata["holdout_metrics"]["r2"] > 0.8


def test_csv_text_labels_stay_labels(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 2))
    frame = pd.DataFrame(X, columns=["a", "b"]).assign(kind=np.where(X[:, 0] > 0, "yes", "no"))
    result = train(load_csv_dataset(write_csv(tmp_path, frame), "kind"))
    assert result.signature.classes == ["no", "yes"]
    assert set(result.pipeline.predict(X)) <= {"no", "yes"}


def test_infer_task():
    assert infer_task(pd.Series([0, 1, 1, 0])) == "classification"
    assert infer_task(pd.Series(["a", "b"])) == "classification"
    assert infer_task(pd.Series(np.linspace(0, 1, 50))) == "regression"


BAD_CSVS = {
    "missing file": (None, "not found"),
    "empty file": ("", "empty"),
    "missing target": ("a,b\n" + "1,2\n" * 20, "target column 'y' not in"),
    "all-empty column": ("a,b,y\n" + "1,,0\n2,,1\n" * 10, "column 'b' is empty"),
    "one class": ("a,y\n" + "1,0\n2,0\n" * 10, "at least 2 classes"),
    "not CSV": ("a,y\n1,0,3,4\n\x00\x01,\"\n", "not valid CSV"),
    "too few rows": ("a,y\n1,0\n2,1\n", "at least 10"),
    "NaN in target": ("a,y\n" + "1,0\n2,1\n" * 10 + "3,\n", "missing value"),
}


@pytest.mark.parametrize("case", BAD_CSVS)
def test_bad_csv_exits_nonzero_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    content, expected = BAD_CSVS[case]
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=expected):
        train(load_csv_dataset(path, "y"))
    before = {str(m.tag) for m in bentoml.models.list()}
    assert train_cli.main(["--data", str(path), "--target", "y", "--name", "bad_csv_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert {str(m.tag) for m in bentoml.models.list()} == before


def test_if_missing_trains_when_the_store_has_no_such_model(capsys):
    assert train_cli.main(["--if-missing", "--name", "never_trained_before"]) == 0
    assert "saved model: never_trained_before:" in capsys.readouterr().out
    assert len(bentoml.models.list("never_trained_before")) == 1


def test_cli_saves_with_metadata_and_if_missing_skips(tmp_path, capsys):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(60, 2)), columns=["a", "b"]).assign(y=lambda f: (f.a > 0).astype(int))
    path = write_csv(tmp_path, frame)
    assert train_cli.main(["--data", str(path), "--target", "y", "--name", "cli_model"]) == 0
    saved = bentoml.models.get("cli_model:latest")
    assert [f["name"] for f in saved.info.metadata["signature"]["features"]] == ["a", "b"]
    assert saved.info.metadata["training"]["source"] == str(path)
    assert set(saved.info.signatures) == {"predict", "predict_proba"}
    assert saved.info.signatures["predict"].batchable
    assert str(saved.tag) in capsys.readouterr().out
    assert train_cli.main(["--if-missing", "--name", "cli_model"]) == 0
    assert len(bentoml.models.list("cli_model")) == 1


def test_mixed_type_csv_trains_with_kinds_labels_and_missing_values(tmp_path, capsys):
    from tests.mixed_data import FEATURES, write_penguins_csv

    path = tmp_path / "penguins.csv"
    frame = write_penguins_csv(path)
    data = load_csv_dataset(path, "species")
    assert data.kinds == {"island": "category", "bill_length_mm": "number", "flipper_length_mm": "integer",
                          "sex": "category", "tagged": "boolean"}
    for kind in ("random_forest", "hist_gradient_boosting", "logistic_regression"):
        result = train(data, kind=kind)
        signature = result.signature
        assert signature.takes_frame and signature.names == FEATURES
        assert signature.classes == ["Adelie", "Chinstrap", "Gentoo"]
        island = signature.features[0]
        assert island.categories == ["Biscoe", "Dream", "Torgersen"] and not island.nullable
        assert signature.features[3].nullable and signature.features[1].nullable
        assert result.metadata["holdout_metrics"]["accuracy"] > 0.8
        assert set(result.pipeline.predict(data.X)) <= {"Adelie", "Chinstrap", "Gentoo"}
    assert train_cli.main(["--data", str(path), "--target", "species", "--name", "penguins_cli"]) == 0
    out = capsys.readouterr().out
    assert "island: category, 3 categories" in out and "classes: ['Adelie', 'Chinstrap', 'Gentoo']" in out
    assert len(frame) == 300


def test_categorical_and_drop_override_and_identifiers_are_warned_about(tmp_path, capsys):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"id": np.arange(100), "zip": rng.choice([94110, 10001, 60601], 100),
                          "x": rng.normal(size=100)}).assign(y=lambda f: (f.x > 0).astype(int))
    path = write_csv(tmp_path, frame)
    data = load_csv_dataset(path, "y", categorical=["zip"])
    assert data.kinds["zip"] == "category" and set(data.X["zip"]) == {"94110", "10001", "60601"}
    assert any("'id' looks like an identifier" in w for w in data.warnings)
    assert "id" not in load_csv_dataset(path, "y", drop=["id"]).X.columns
    with pytest.raises(DataError, match=r"--drop names column\(s\) not in the data: \['nope'\]"):
        load_csv_dataset(path, "y", drop=["nope"])
    assert train_cli.main(["--data", str(path), "--target", "y", "--drop", "id", "--categorical", "zip",
                           "--name", "zip_model"]) == 0
    assert "identifier" not in capsys.readouterr().err
