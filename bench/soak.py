"""Soak: steady mixed load (/predict, /predict_proba, /predict_batch) on one server; prints errors,
API-to-runner calls and memory growth of the whole process tree.

    python bench/soak.py                                   # 150 s at 64 connections
    python bench/soak.py --seconds 10 --connections 16     # a quick look

BentoML's dependency client renews its session every `runner_connection.max_requests` calls
(100 by default), and a renewal aborts the calls in flight (upstream issue #5540);
configuration.yaml turns renewal off. The summary says how many renewals BentoML's default would
have made in the same run, so a clean soak is evidence against that failure.

Exits 1 when any response was not 2xx or the tree's memory grew by more than --max-growth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.measure import memory, tree_rss_mb  # noqa: E402
from bench.run import prepare_model, write_bodies  # noqa: E402
from harness.prometheus_text import scrape, total  # noqa: E402
from harness.serving import Server  # noqa: E402

DEFAULT_MAX_REQUESTS = 100  # BentoML's services.<Name>.runner_connection.max_requests


def wrk_mixed(url: str, bodies: Path, connections: int, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
         "-s", str(ROOT / "bench" / "wrk_mixed.lua"), url],
        env={**os.environ, "BODY_DIR": str(bodies)}, capture_output=True, text=True, timeout=seconds + 60)
    lines = [line for line in out.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if not lines:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    result = json.loads(lines[0].removeprefix("WRK_JSON "))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def runner_calls(url: str) -> float:
    return total(scrape(url), "ml_runner_call_rows_count")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=150)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-growth", type=float, default=0.10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        home = Path(tmp)
        os.environ["BENTOML_HOME"] = str(home)
        prepare_model(home)
        single = write_bodies(home)["single"]
        rows = json.loads(single.read_text())["features"]
        (home / "small_batch.json").write_text(json.dumps({"instances": [rows] * 20}))
        with Server(home) as server:
            wrk_mixed(server.url, home, args.connections, 5)  # warm-up: caches, pools, allocator
            start_mb, calls_before = tree_rss_mb(memory(server.process.pid)), runner_calls(server.url)
            result = wrk_mixed(server.url, home, args.connections, args.seconds)
            end_mb, calls = tree_rss_mb(memory(server.process.pid)), runner_calls(server.url) - calls_before
            log = server.log_path.read_text(errors="replace")
    growth = end_mb / start_mb - 1
    failures = result["non_2xx"] + result["timeouts"] + result["socket_errors"]
    print(f"soak: {args.seconds} s at {args.connections} connections: {result['requests']} requests, "
          f"{result['rps']:.0f} rps, p99 {result['p99_ms']:.1f} ms, non-2xx/errors {failures}, "
          f"memory {start_mb:.0f} -> {end_mb:.0f} MB ({growth:+.1%})")
    print(f"runner calls {calls:.0f}: BentoML's default would have renewed the session "
          f"{calls // DEFAULT_MAX_REQUESTS:.0f} times; disconnects logged {log.count('ServerDisconnectedError')}")
    return 0 if failures == 0 and growth <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
