"""The offline drift report: a payload log with a known shift against the reference kept with the model;
the summary names exactly the shifted features, and the HTML renders in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import bentoml
import numpy as np
import pandas as pd
import pytest

import train as train_cli
from sklearn_service.drift_report import REPORT_PYTHON, load_model, read_log, summarize
from sklearn_service.payload_log import decoded_columns
from sklearn_service.signature import Signature
from sklearn_service.training import load_csv_dataset
from sklearn_service.validation import RowEncoder
from tests.mixed_data import FEATURES, json_rows, penguins, write_penguins_csv
from tests.serving import ROOT
from tests.test_first_contact import CHROMIUM, CHROMIUM_FLAGS

ARTIFACTS = ROOT / "test-artifacts"


def write_payload_log(folder, signature: Signature, rows: list, predictions: list, worker: int = 1) -> None:
    """What the service's payload log writes (BentoML's default monitor): one JSON line per row."""
    path = folder / "predictions" / "data" / f"data.{worker}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = decoded_columns(signature, RowEncoder(signature).matrix(rows, len(rows)))
    with open(path, "a") as f:
        for i, prediction in enumerate(predictions):
            line = {"endpoint": "/predict_batch", **{name: values[i] for name, values in columns.items()},
                    "prediction": prediction, "timestamp": "2026-11-25T12:00:00", "request_id": str(i), "trace_id": "0"}
            f.write(json.dumps(line) + "\n")


@pytest.fixture(scope="module")
def penguin_log(tmp_path_factory, bentoml_home):
    """A mixed-type model, and a log of 800 rows: flipper lengths 25 mm longer, 90% males (50% in training)."""
    folder = tmp_path_factory.mktemp("report")
    write_penguins_csv(folder / "train.csv", rows=3000, seed=0)
    assert train_cli.main(["--data", str(folder / "train.csv"), "--target", "species", "--name", "report_penguins"]) == 0
    tag = str(bentoml.models.get("report_penguins:latest").tag)
    frame = penguins(800, seed=12)
    frame["flipper_length_mm"] = frame["flipper_length_mm"].map(lambda v: v if v is None else v + 25)
    frame["sex"] = np.where(np.arange(800) % 10 < 9, "male", frame["sex"])
    frame.to_csv(folder / "served.csv", index=False)
    predictions = bentoml.sklearn.load_model(tag).predict(load_csv_dataset(folder / "served.csv", "species").X)
    signature, _ = load_model(tag)
    write_payload_log(folder / "logs", signature, json_rows(frame[FEATURES]), predictions.tolist())
    return {"tag": tag, "logs": folder / "logs", "signature": signature}


def test_the_summary_names_exactly_the_shifted_features(penguin_log):
    signature, reference = load_model(penguin_log["tag"])
    summary = summarize(signature, reference, read_log(penguin_log["logs"])).set_index("feature")
    assert set(summary.index) == {*FEATURES, "prediction"}
    drifted = set(summary.index[summary["drifted"]]) - {"prediction"}
    assert drifted == {"flipper_length_mm", "sex"}, summary
    assert (summary.loc[["flipper_length_mm", "sex"], "p_value"] < 1e-6).all()
    assert (summary.loc[["island", "bill_length_mm", "tagged"], "psi"] < 0.1).all(), summary
    assert summary.loc[["sex", "tagged", "prediction"], "test"].tolist() == ["chi-squared"] * 3
    assert summary.loc["bill_length_mm", "test"] == "KS"


def test_a_numeric_model_without_drift_reads_no_drift_and_a_shift_is_found(trained, cancer, tmp_path):
    signature, reference = load_model(trained["tag"])
    X = cancer["X"][:300].copy()
    predictions = trained["pipeline"].predict(X).tolist()
    write_payload_log(tmp_path / "same", signature, X.tolist(), predictions)
    same = summarize(signature, reference, read_log(tmp_path / "same"))
    assert not same["drifted"].any(), same
    X[:, 3] *= 1.5  # "mean area"
    write_payload_log(tmp_path / "shifted", signature, X.tolist(), predictions)
    shifted = summarize(signature, reference, read_log(tmp_path / "shifted"))
    assert shifted.loc[shifted["drifted"], "feature"].tolist() == ["mean area"], shifted


@pytest.mark.skipif(not REPORT_PYTHON.exists(), reason="Evidently's environment missing (make report-env)")
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system-deps)")
def test_the_command_prints_the_summary_and_writes_an_html_report_chromium_renders(penguin_log, bentoml_home,
                                                                                   tmp_path):
    out = tmp_path / "drift.html"
    result = subprocess.run([sys.executable, "-m", "sklearn_service.drift_report", "--log", str(penguin_log["logs"]),
                             "--model", penguin_log["tag"], "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "BENTOML_HOME": str(bentoml_home)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "800 logged rows" in result.stdout and "drifted (PSI > 0.2): flipper_length_mm, sex" in result.stdout
    html = out.read_text()
    assert "flipper_length_mm" in html and "<html" in html.lower()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "drift-report.png"
    shutil.copy(out, ARTIFACTS / "drift-report.html")
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2200",
                    f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=180)
    print(f"drift report screenshot: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
