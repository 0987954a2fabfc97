"""Offline drift report: the rows payload logging wrote, against the training data kept with the model.

    python -m sklearn_service.drift_report --log payload_logs/ [--model TAG] [--out drift.html]

The summary (printed; `summarize` returns it) has one line per feature and one for the prediction:
PSI on the same training bins the live gauges use (drift.py), and a two-sample test against the
model's reference sample (Kolmogorov-Smirnov for numbers, chi-squared for categories, booleans, classes)
with its p-value. "drifted" means PSI > 0.2, the alert's threshold, so report and alert agree;
p-values shrink toward 0 on large logs even for harmless shifts, so they inform, they do not decide.

The HTML is Evidently's DataDriftPreset. Evidently needs pandas 2 (the service pins pandas 3) and
some 80 packages the serving image must not carry, so it runs in an environment of its own
(`make report-env`: .venv-report from requirements-report.txt, or DRIFT_REPORT_PYTHON) as a
subprocess that gets both tables as CSV files (drift_html.py). The summary needs none of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from sklearn_service import category_codes
from sklearn_service.drift import Bins
from sklearn_service.signature import Signature
from sklearn_service.csv_data import as_category, read_csv
from sklearn_service.model_store import REFERENCE_FILE, TARGET_COLUMN

THRESHOLD = 0.2
PREDICTION = "prediction"
NO_VALUES = "no values logged"
ROOT = Path(__file__).resolve().parent.parent
REPORT_PYTHON = ROOT / ".venv-report" / "bin" / "python"
HTML_SCRIPT = Path(__file__).with_name("drift_html.py")


def read_log(path: str | Path) -> pd.DataFrame:
    """Every row of one log file, or of all under a folder (payload_logs/), rotated files included."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("data.*.log*"))
    if not files:
        raise SystemExit(f"no payload log files (data.*.log) under {path}: is monitoring enabled in "
                         "configuration.yaml (services.SklearnService.monitoring)?")
    return pd.DataFrame([json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()])


def _numbers(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column.map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v),
                         errors="coerce").to_numpy(dtype=float)


def _codes(column: pd.Series, categories: list) -> np.ndarray:
    """Category values (text or numbers, as logged or read from CSV) as codes (category_codes.py),
    compared as text: 3.0 read from a CSV with gaps is the category 3."""
    return category_codes.encode(as_category(column), list(as_category(pd.Series(categories, dtype=object))))


def encode(signature: Signature, frame: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    """A table of decoded values as the service encodes rows (category_codes.py), and its target column.
    A feature the log never holds (every value null, so a log line may leave it out) is all missing."""
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *signature.names])))
    rows = np.column_stack([_codes(frame[f.name], f.category_list) if f.is_category else _numbers(frame[f.name])
                            for f in signature.features])
    y = frame[target] if target in frame else pd.Series(np.nan, index=frame.index)
    labels = _codes(y, signature.classes) if signature.classes is not None else _numbers(y)
    return rows, labels


def _test(reference: np.ndarray, current: np.ndarray, by_category: bool) -> tuple[str, float, float]:
    from scipy import stats

    if by_category:  # reference and current: counts per bin
        seen = (reference + current) > 0
        if reference.sum() == 0 or current.sum() == 0 or seen.sum() < 2:
            return "chi-squared", np.nan, np.nan
        result = stats.chi2_contingency(np.vstack([reference[seen], current[seen]]))
        return "chi-squared", float(result.statistic), float(result.pvalue)
    reference, current = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if not len(reference) or not len(current):
        return "KS", np.nan, np.nan
    result = stats.ks_2samp(reference, current)
    return "KS", float(result.statistic), float(result.pvalue)


def summarize(signature: Signature, reference: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Per tracked feature and the prediction: values logged, test, statistic, p-value, PSI and whether it
    drifted (never, without logged values: nothing to compare)."""
    bins = Bins(signature)
    ref_rows, ref_y = encode(signature, reference, TARGET_COLUMN)
    cur_rows, cur_y = encode(signature, current, PREDICTION)
    ref_index, cur_index = bins.index(ref_rows, ref_y), bins.index(cur_rows, cur_y)
    ref_counts, cur_counts = bins.counts(ref_index), bins.counts(cur_index)
    psi = bins.psi(cur_counts)
    lines = []
    for j, (name, source) in enumerate(zip(bins.names, bins.sources)):
        by_category = signature.classes is not None if source is None else \
            signature.features[source].is_category or signature.features[source].kind == "boolean"
        segment = (bins.column == j) & bins.counted
        reference_values, current_values = (ref_counts[segment], cur_counts[segment]) if by_category else \
            ((ref_y, cur_y) if source is None else (ref_rows[:, source], cur_rows[:, source]))
        test, statistic, p_value = _test(reference_values, current_values, by_category)
        logged = int(np.count_nonzero(~np.isnan(cur_y if source is None else cur_rows[:, source])))
        lines.append({"feature": name, "values": logged, "test": test, "statistic": statistic, "p_value": p_value,
                      "psi": float(psi[j]), "drifted": bool(logged and psi[j] > THRESHOLD)})
    return pd.DataFrame(lines)


def format_summary(summary: pd.DataFrame, rows: int) -> str:
    empty = summary["values"] == 0
    shown = summary.assign(drifted=np.where(empty, NO_VALUES, summary["drifted"].map({True: "yes", False: "no"})))
    table = shown.drop(columns="values").to_string(
        index=False, formatters={"statistic": "{:.3f}".format, "p_value": "{:.2g}".format, "psi": "{:.3f}".format})
    drifted = summary.loc[summary["drifted"], "feature"].tolist()
    verdict = (f"drifted (PSI > {THRESHOLD}): {', '.join(drifted)}" if drifted
               else f"no drift (every PSI <= {THRESHOLD})")
    if empty.any():
        verdict += f"\n{NO_VALUES}: {', '.join(summary.loc[empty, 'feature'])}"
    return f"{rows} logged rows against the training reference\n{table}\n{verdict}"


def write_html(signature: Signature, reference: pd.DataFrame, current: pd.DataFrame, out: Path,
               python: str | Path) -> None:
    """Evidently's data drift report, in its own environment."""
    categorical = [f.name for f in signature.features if f.is_category or f.kind == "boolean"]
    numerical = [f.name for f in signature.features if f.name not in categorical]
    (categorical if signature.classes is not None else numerical).append(PREDICTION)

    def table(frame: pd.DataFrame, target: str) -> pd.DataFrame:
        columns = {f.name: frame.get(f.name, np.nan) for f in signature.features}
        columns[PREDICTION] = frame.get(target, np.nan)
        frame = pd.DataFrame(columns, index=frame.index)
        for name in categorical:  # one spelling per category: True and 1.0 both "1"
            frame[name] = as_category(frame[name].map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v))
        return frame

    reference, current = table(reference, TARGET_COLUMN), table(current, PREDICTION)
    # Evidently fails on a column without values; such a column is named in the report instead
    left_out = {name: NO_VALUES for name in current.columns[current.isna().all()]}
    left_out |= {name: "no values in the training reference" for name in reference.columns[reference.isna().all()]}
    numerical, categorical = ([name for name in names if name not in left_out] for names in (numerical, categorical))
    with tempfile.TemporaryDirectory() as folder:
        spec = {"reference": f"{folder}/reference.csv", "current": f"{folder}/current.csv", "out": str(out),
                "numerical": numerical, "categorical": categorical, "left_out": left_out}
        reference.drop(columns=list(left_out)).to_csv(spec["reference"], index=False)
        current.drop(columns=list(left_out)).to_csv(spec["current"], index=False)
        Path(f"{folder}/spec.json").write_text(json.dumps(spec))
        result = subprocess.run([str(python), str(HTML_SCRIPT), f"{folder}/spec.json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"Evidently's report failed:\n{result.stderr[-3000:]}")


def bentoml_tag(tag: str):
    import bentoml

    return bentoml.models.get(tag).tag


def of_model(log: pd.DataFrame, tag: str) -> pd.DataFrame:
    """The logged rows this version of the model answered (a log of several models holds them all)."""
    if "model_tag" not in log.columns:  # written before logs named the model
        return log
    rows = log[log["model_tag"] == tag]
    if rows.empty:
        there = ", ".join(map(str, log["model_tag"].unique()))
        raise SystemExit(f"no rows of {tag} in the payload log; it holds rows of: {there}")
    return rows.reset_index(drop=True)


def load_model(tag: str) -> tuple[Signature, pd.DataFrame]:
    import bentoml

    from sklearn_service.model_store import stored_signature

    model = bentoml.models.get(tag)
    path = Path(model.path) / REFERENCE_FILE
    if not path.is_file():
        raise SystemExit(f"{model.tag} has no training reference ({REFERENCE_FILE}): save it with train.py, "
                         "or import it with --reference-data")
    return stored_signature(model), read_csv(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sklearn_service.drift_report", description=__doc__.split("\n")[0])
    parser.add_argument("--log", required=True, help="payload log folder (monitoring.options.log_path)")
    parser.add_argument("--model", default=os.environ.get("MODEL_TAG", "sklearn_model:latest"),
                        help="the model that served the logged rows (default: $MODEL_TAG or sklearn_model:latest)")
    parser.add_argument("--out", default="drift.html", help="HTML report (default: drift.html)")
    args = parser.parse_args(argv)

    signature, reference = load_model(args.model)
    current = of_model(read_log(args.log), str(bentoml_tag(args.model)))
    print(format_summary(summarize(signature, reference, current), len(current)))
    python = os.environ.get("DRIFT_REPORT_PYTHON") or REPORT_PYTHON
    if not Path(python).exists():
        print(f"no HTML report: Evidently's environment {python} is missing (make report-env)", file=sys.stderr)
        return 2
    write_html(signature, reference, current, Path(args.out).resolve(), python)
    print(f"HTML report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
