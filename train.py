"""Train a seeded scikit-learn pipeline and save it into the BentoML model store.

    python train.py                                   # RandomForest on scikit-learn's breast-cancer data
    python train.py --model logistic_regression
    python train.py --data my.csv --target label      # your own CSV; task inferred unless --task is given
    python train.py --if-missing                      # train only when the store has no such model
"""

from __future__ import annotations

import argparse
import json
import sys

from sklearn_service.training import MODEL_KINDS, TASKS, DataError, load_csv_dataset
from sklearn_service.training import load_default_dataset, save_to_store, train

DEFAULT_MODEL_NAME = "sklearn_model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name in the store")
    parser.add_argument("--model", choices=MODEL_KINDS, default="random_forest")
    parser.add_argument("--data", help="CSV file with a header row; default: breast-cancer data")
    parser.add_argument("--target", help="target column of --data")
    parser.add_argument("--task", choices=("auto", *TASKS), default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--if-missing", action="store_true", help="do nothing if the store has a model of this name")
    args = parser.parse_args(argv)
    if args.data and not args.target:
        parser.error("--data needs --target")
    if not 0 < args.test_size < 1:
        parser.error("--test-size must be between 0 and 1")
    return args


def existing_model(name: str):
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(f"{name}:latest")
    except NotFound:  # also what an empty store answers
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.if_missing and (found := existing_model(args.name)):
        print(f"model store already has {found.tag}; not training")
        return 0
    try:
        data = load_csv_dataset(args.data, args.target) if args.data else load_default_dataset()
        result = train(data, kind=args.model, task=args.task, seed=args.seed, test_size=args.test_size)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = result.metadata
    print(f"task: {meta['task']} ({'given' if args.task != 'auto' else 'inferred'}), "
          f"model: {meta['model_kind']}, rows: {meta['training']['rows']}, "
          f"features: {len(meta['feature_names'])}")
    print("holdout metrics: " + json.dumps(meta["holdout_metrics"]))
    saved = save_to_store(result, args.name)
    print(f"saved model: {saved.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
