"""A client for the running service, with BentoML's own HTTP client.

    python client.py                                   # http://localhost:3000
    python client.py --url http://host:3000 --api-key KEY
"""

from __future__ import annotations

import argparse

import bentoml
from sklearn.datasets import load_breast_cancer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:3000")
    parser.add_argument("--api-key", help="when the service was started with API_KEY")
    args = parser.parse_args()

    rows = load_breast_cancer().data[:3].tolist()
    with bentoml.SyncHTTPClient(args.url, token=args.api_key) as client:
        print("metadata:", client.client.get("/metadata").json()["tag"])
        print("predict:", client.predict(features=rows[0]))
        print("predict_proba:", client.predict_proba(features=rows[0]))
        print("predict_batch:", client.predict_batch(instances=rows))


if __name__ == "__main__":
    main()
