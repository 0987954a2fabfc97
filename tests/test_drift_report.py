"""The offline drift report: a payload log with a known shift against the reference kept with the model;
the summary names exactly the shifted features, and the HTML renders in headless Chromium; a feature
with no logged values is named, not fatal; hostile category values and feature names run nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import bentoml
import numpy as np
import pandas as pd
import pytest

import train as train_cli
from sklearn_service import drift_report
from sklearn_service.drift_html import SCRIPT
from sklearn_service.drift_report import REPORT_PYTHON, load_model, read_log, summarize
from sklearn_service.payload_log import decoded_columns
from sklearn_service.signature import Signature
from sklearn_service.csv_data import load_csv_dataset
from sklearn_service.validation import RowEncoder
from tests.mixed_data import FEATURES, json_rows, penguins, write_penguins_csv
from tests.serving import ROOT
from tests.test_first_contact import CHROMIUM, CHROMIUM_FLAGS
from tests.test_mixed_serving import CHROMIUM_ARGS

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


def test_a_feature_never_logged_is_reported_not_fatal(penguin_log, tmp_path, capsys):
    """"sex" null in every logged row, "bill_length_mm" left out of every line: both named, the rest compared."""
    frame = penguins(300, seed=5)
    frame["sex"] = None
    write_payload_log(tmp_path / "logs", penguin_log["signature"], json_rows(frame[FEATURES]), ["Adelie"] * 300)
    log = next((tmp_path / "logs").rglob("data.1.log"))
    log.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "bill_length_mm"}) + "\n"
                           for line in log.read_text().splitlines()))
    signature, reference = load_model(penguin_log["tag"])
    summary = summarize(signature, reference, read_log(tmp_path / "logs")).set_index("feature")
    assert summary.loc[["sex", "bill_length_mm"], "values"].tolist() == [0, 0]
    assert not summary.loc[["sex", "bill_length_mm"], "drifted"].any()
    assert summary.loc["island", "values"] == 300

    if not REPORT_PYTHON.exists():
        pytest.skip("Evidently's environment missing (make report-env)")
    out = tmp_path / "drift.html"
    assert drift_report.main(["--log", str(tmp_path / "logs"), "--model", penguin_log["tag"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\n\s*sex .* no values logged\n", printed), printed
    assert "no values logged: bill_length_mm, sex" in printed
    html = out.read_text()
    assert "Not in this report: bill_length_mm: no values logged; sex: no values logged" in html
    assert "flipper_length_mm" in html


# Each would run script (a dialog) or leave an element with a handler if it reached the page as markup: closing
# the data <script>, an HTML comment opening inside it, JavaScript line separators, plotly's own link markup.
HOSTILE_CATEGORIES = ["</script><img src=x onerror=alert('category')>", "<!--<script>", "plain",
                      "a\u2028b\u2029</script><svg onload=alert('separator')>",
                      "<a href=\"javascript:alert('link')\">link</a>"]
HOSTILE_NUMBER = "<img src=x onerror=alert('feature')>"
HOSTILE_CATEGORY = "</script><script>alert('feature name')</script>"
HOSTILE_EMPTY = "<b onmouseover=alert('empty')>empty</b>"  # nullable, null in every logged row
HOSTILE_CLASSES = ["<svg onload=alert('class')>", "</script><script>alert('class')</script>"]


@pytest.mark.skipif(not REPORT_PYTHON.exists(), reason="Evidently's environment missing (make report-env)")
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system-deps)")
def test_hostile_values_and_names_run_nothing_in_the_report(bentoml_home, tmp_path):
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(3)
    rows = 400
    frame = pd.DataFrame({HOSTILE_CATEGORY: rng.choice(HOSTILE_CATEGORIES, rows), HOSTILE_NUMBER: rng.normal(size=rows),
                          HOSTILE_EMPTY: np.where(rng.random(rows) < 0.2, np.nan, rng.normal(size=rows)),
                          "label": rng.choice(HOSTILE_CLASSES, rows)})
    frame.to_csv(tmp_path / "train.csv", index=False)
    assert train_cli.main(["--data", str(tmp_path / "train.csv"), "--target", "label", "--name", "hostile_report"]) == 0
    tag = str(bentoml.models.get("hostile_report:latest").tag)
    signature, _ = load_model(tag)
    served = frame.drop(columns="label").assign(**{HOSTILE_EMPTY: None})
    served[HOSTILE_NUMBER] += 2  # drift, so the report has something to draw
    write_payload_log(tmp_path / "logs", signature, json_rows(served), frame["label"].tolist())
    out = tmp_path / "drift.html"
    assert drift_report.main(["--log", str(tmp_path / "logs"), "--model", tag, "--out", str(out)]) == 0
    html = out.read_text()
    for value in [*HOSTILE_CATEGORIES, HOSTILE_NUMBER, HOSTILE_CATEGORY, HOSTILE_EMPTY, *HOSTILE_CLASSES]:
        if value != "plain":
            assert value not in html, f"{value!r} is in the page as markup"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.add_init_script("window.blocked = []; document.addEventListener('securitypolicyviolation', "
                             "e => window.blocked.push(e.violatedDirective + ': ' + e.sample))")
        page.goto(out.as_uri())
        assert dialogs == [], dialogs  # an element injected by the page's markup has fired by its load event
        toggles = page.get_by_role("button", name="Detail panel visibility toggle")
        toggles.first.wait_for(timeout=60_000)
        for toggle in toggles.all():  # each feature's plots: category values as plotly axis labels
            toggle.click()
        page.locator(".main-svg").first.wait_for(timeout=30_000)
        page.mouse.move(100, 60)  # over the note naming the empty feature
        page.wait_for_timeout(1000)
        text = page.inner_text("body")
        injected = page.evaluate("""() => [...document.querySelectorAll('*')].filter(e =>
            [...e.attributes].some(a => a.name.startsWith('on') || /^\\s*javascript:/i.test(a.value)))
            .map(e => e.outerHTML.slice(0, 200))""")
        scripts = page.evaluate("() => [...document.scripts].map(s => s.textContent)")
        blocked = page.evaluate("window.blocked")
        page.screenshot(path=str(tmp_path / "hostile.png"))
        browser.close()
    assert dialogs == [] and injected == [] and blocked == [], (dialogs, injected, blocked)
    assert scripts == SCRIPT.findall(html)  # Evidently's own, whole: none added, none cut short
    # shown as the text they are
    assert HOSTILE_NUMBER in text and HOSTILE_CATEGORY in text and f"Not in this report: {HOSTILE_EMPTY}" in text
