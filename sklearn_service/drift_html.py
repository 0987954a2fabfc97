"""Writes Evidently's data drift report (HTML). Run by drift_report.py with the report environment's
Python (pandas 2 + Evidently, requirements-report.txt); the service never imports it.

    python drift_html.py spec.json   # {"reference": csv, "current": csv, "out": html, "numerical": [...], "categorical": [...]}
"""

import json
import sys

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    definition = DataDefinition(numerical_columns=spec["numerical"], categorical_columns=spec["categorical"])
    current, reference = (Dataset.from_pandas(pd.read_csv(spec[name], dtype={c: str for c in spec["categorical"]}),
                                              data_definition=definition) for name in ("current", "reference"))
    Report([DataDriftPreset()]).run(current, reference).save_html(spec["out"])


if __name__ == "__main__":
    main(sys.argv[1])
