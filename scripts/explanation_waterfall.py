"""A waterfall picture of one served explanation: from the base value, each feature's contribution,
to the explained output. The numbers are the service's own (POST /explain), not recomputed here.

    python scripts/explanation_waterfall.py --out docs/explanation.png              # the README's row
    python scripts/explanation_waterfall.py --url http://host:3000 --features row.json --top 8

--features: a JSON file holding one row (a list in feature order, or an object by name); by default
the first row of scikit-learn's breast cancer data, the default model's. Needs matplotlib
(requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import requests


def default_row() -> list[float]:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer().data[0].tolist()


def explain(url: str, row, top: int, api_key: str | None) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    answer = requests.post(url.rstrip("/") + "/explain", json={"features": row, "top": top}, headers=headers,
                           timeout=30)
    if answer.status_code != 200:
        raise SystemExit(f"error: POST /explain answered {answer.status_code}: {answer.text[:300]}")
    return answer.json()


def draw(explanation: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(explanation["contributions"].items())
    if explanation["rest"]:  # the features `top` left out, as one bar
        steps.append(("all other features", explanation["rest"]))
    base, value = explanation["base_value"], explanation["value"]
    fig, axis = plt.subplots(figsize=(8, 1.4 + 0.38 * len(steps)))
    start, ends = base, [base]
    for y, (_, amount) in enumerate(steps):
        axis.barh(y, amount, left=start, height=0.6, color="#d62728" if amount > 0 else "#1f77b4")
        axis.text(max(start, start + amount), y, f" {amount:+.3f}", va="center", fontsize=8)
        start += amount
        ends.append(start)
    axis.set_yticks(range(len(steps)), [name for name, _ in steps], fontsize=8)
    axis.invert_yaxis()
    for x, label in ((base, f"base value {base:.3f}"), (value, f"{explanation['output']} {value:.3f}")):
        axis.axvline(x, color="grey", linewidth=0.8, linestyle="--")
        axis.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=8, ha="center", va="bottom")
    of_class = "" if explanation["explained_class"] is None else f" of class {explanation['explained_class']!r}"
    axis.set_xlabel(f"{explanation['output']}{of_class}: base value + contributions = {value:.3f} "
                    f"(prediction {explanation['prediction']!r})", fontsize=8)
    low, high = min(ends), max(ends)
    axis.set_xlim(low - 0.08 * (high - low), high + 0.15 * (high - low))  # room for the labels
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:3000", help="the running service")
    parser.add_argument("--features", type=Path, help="JSON file with one row (default: the README's row)")
    parser.add_argument("--top", type=int, default=10, help="features drawn; the others as one bar")
    parser.add_argument("--out", type=Path, default=Path("docs/explanation.png"))
    args = parser.parse_args(argv)
    row = json.loads(args.features.read_text()) if args.features else default_row()
    draw(explain(args.url, row, args.top, os.environ.get("API_KEY")), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
