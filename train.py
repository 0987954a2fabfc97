"""Put a scikit-learn model into the BentoML model store, with its input signature.

    python train.py                                   # RandomForest on scikit-learn's breast-cancer data
    python train.py --model hist_gradient_boosting
    python train.py --data my.csv --target label      # your own CSV: numbers, booleans, text, missing values
    python train.py --data my.csv --target y --categorical zip --drop id
    python train.py --import-model model.skops --reference-data sample.csv --target label
    python train.py --import-model model.joblib --trust-pickle   # pickles run code when loaded
    python train.py --if-missing                      # train only when the store has no such model
"""

from __future__ import annotations

import argparse
import json
import sys

from sklearn_service.csv_data import load_csv_dataset
from sklearn_service.model_store import save_result
from sklearn_service.signature import Signature
from sklearn_service.training import MODEL_KINDS, TASKS, load_default_dataset, train
from sklearn_service.user_input import DataError, Limits, shown_list

DEFAULT_MODEL_NAME = "sklearn_model"


def names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name in the store")
    parser.add_argument("--model", choices=MODEL_KINDS, default="random_forest")
    parser.add_argument("--data", help="CSV file with a header row; default: breast-cancer data")
    parser.add_argument("--target", help="target column of --data or --reference-data")
    parser.add_argument("--categorical", type=names, default=[], help="columns to treat as categories: a,b")
    parser.add_argument("--drop", type=names, default=[], help="columns to leave out: id,ts")
    parser.add_argument("--task", choices=("auto", *TASKS), default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--import-model", metavar="FILE", help="a fitted estimator or Pipeline: .skops, or "
                        ".joblib/.pkl with --trust-pickle")
    parser.add_argument("--reference-data", metavar="FILE.csv", help="rows like the ones the model was fitted "
                        "on: feature kinds, categories and statistics (with --target: metrics too)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow loading a pickle (runs its code)")
    parser.add_argument("--trust-types", type=names, default=[], help="exact names (types, functions) a .skops "
                        "file may hold beyond what is trusted by default, once you have checked them: a.b,c.d")
    parser.add_argument("--max-columns", type=int, default=Limits.max_columns, help="most CSV columns taken in "
                        "(default %(default)s)")
    parser.add_argument("--max-cells", type=int, default=Limits.max_cells, help="most CSV rows x columns held in "
                        "memory (default %(default)s)")
    parser.add_argument("--max-model-bytes", type=int, default=Limits.max_model_bytes, help="most bytes a .skops "
                        "file may inflate to (default %(default)s)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if the store has a model of this name")
    args = parser.parse_args(argv)
    if args.data and not args.target:
        parser.error("--data needs --target")
    if args.import_model and args.data:
        parser.error("--import-model takes --reference-data, not --data")
    if args.reference_data and not args.import_model:
        parser.error("--reference-data goes with --import-model")
    if not 0 < args.test_size < 1:
        parser.error("--test-size must be between 0 and 1")
    if min(args.max_columns, args.max_cells, args.max_model_bytes) < 1:
        parser.error("caps must be positive")
    args.limits = Limits(args.max_columns, args.max_cells, args.max_model_bytes)
    return args


def describe(signature: Signature) -> list[str]:
    """One line per feature, for people."""
    lines = []
    for f in signature.features:
        extra = f"{len(f.category_list)} categories" if f.is_category else \
            (f"{f.stats['min']:g} .. {f.stats['max']:g}" if f.stats else "")
        lines.append(f"  {f.name}: {f.kind}{', missing values' if f.nullable else ''}{', ' + extra if extra else ''}")
    return lines


def existing_model(name: str):
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(f"{name}:latest")
    except NotFound:  # also what an empty store answers
        return None


def build(args: argparse.Namespace):
    """The model and its metadata, and lines to tell the user; nothing is saved yet."""
    if args.import_model:
        from sklearn_service.model_import import import_model

        return import_model(args.import_model, args.trust_pickle, args.reference_data, args.target, args.trust_types,
                            args.limits)
    data = (load_csv_dataset(args.data, args.target, args.categorical, args.drop, args.limits) if args.data
            else load_default_dataset())
    return train(data, kind=args.model, task=args.task, seed=args.seed, test_size=args.test_size), \
        [f"warning: {w}" for w in data.warnings]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.if_missing and (found := existing_model(args.name)):
        print(f"model store already has {found.tag}; not training")
        return 0
    try:
        result, notes = build(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, file=sys.stderr)
    meta, signature = result.metadata, result.signature
    print(f"task: {meta['task']}, model: {meta['model_kind']}, features: {len(signature.features)}"
          + (f", rows: {meta['training']['rows']}" if "rows" in meta["training"] else ""))
    print("features:", *describe(signature), sep="\n")
    if signature.classes is not None:
        print(f"classes: {shown_list(signature.classes, 50)}")
    if meta["holdout_metrics"]:
        print("holdout metrics: " + json.dumps(meta["holdout_metrics"]))
    saved = save_result(result, args.name)
    if args.import_model:
        from sklearn_service.model_import import check_in_fresh_process

        try:
            check_in_fresh_process(saved.tag)
        except DataError as exc:
            import bentoml

            bentoml.models.delete(saved.tag)
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"saved model: {saved.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
