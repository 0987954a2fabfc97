"""Soak: steady load for a while; prints non-2xx and memory growth of the whole process tree.

    python bench/soak.py                  # 60 s at 32 connections
    python bench/soak.py --seconds 10     # the short version the tests run

Exits 1 when any response was not 2xx or the tree's memory grew by more than --max-growth.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import memory, tree_rss_mb, wrk  # noqa: E402
from bench.run import prepare_model, write_bodies  # noqa: E402
from tests.serving import Server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-growth", type=float, default=0.10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        home = Path(tmp)
        os.environ["BENTOML_HOME"] = str(home)
        prepare_model(home)
        single = write_bodies(home)["single"]
        with Server(home) as server:
            wrk(server.url + "/predict", single, args.connections, 5)  # warm-up: caches, pools, allocator
            start_mb = tree_rss_mb(memory(server.process.pid))
            result = wrk(server.url + "/predict", single, args.connections, args.seconds)
            end_mb = tree_rss_mb(memory(server.process.pid))
    growth = end_mb / start_mb - 1
    failures = result["non_2xx"] + result["timeouts"] + result["socket_errors"]
    print(f"soak: {args.seconds} s at {args.connections} connections: {result['requests']} requests, "
          f"{result['rps']:.0f} rps, p99 {result['p99_ms']:.1f} ms, non-2xx/errors {failures}, "
          f"memory {start_mb:.0f} -> {end_mb:.0f} MB ({growth:+.1%})")
    return 0 if failures == 0 and growth <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
