"""Benchmark: the seed's FastAPI server, BentoML with no model, and this service, side by side.

Same model, same request body, same load tool (wrk), one machine, each server
started and stopped here. Writes bench/results/latest.{md,json,png}.

    python bench/run.py                   # 10 s per point
    python bench/run.py --duration 3      # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serving import free_port  # noqa: E402

BIN = Path(sys.executable).parent
LUA = ROOT / "bench" / "wrk_post.lua"
SERVERS = {
    "seed (FastAPI+joblib)": lambda port: [str(BIN / "uvicorn"), "bench.seed_app:app", "--port", str(port),
                                           "--workers", "1", "--log-level", "warning"],
    "BentoML, no model": lambda port: [str(BIN / "bentoml"), "serve", "bench.no_model_service:NoModelService",
                                       "--port", str(port)],
    "BentoML, no model, fixed": lambda port: [str(BIN / "bentoml"), "serve",
                                              "bench.no_model_fixed_service:NoModelService", "--port", str(port)],
    "this service": lambda port: [str(BIN / "bentoml"), "serve", "service:SklearnService", "--port", str(port)],
}


def prepare_model(home: Path) -> Path:
    """Trains the default model into `home` and writes the same pipeline as model.pkl for the seed."""
    import joblib

    from sklearn_service.training import load_default_dataset, save_result, train

    result = train(load_default_dataset())
    save_result(result, "sklearn_model")
    pkl = home / "model.pkl"
    joblib.dump(result.pipeline, pkl)
    return pkl


def write_bodies(folder: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data
    single, batch = folder / "single.json", folder / "batch.json"
    single.write_text(json.dumps({"features": X[0].tolist()}))
    batch.write_text(json.dumps({"instances": X[np.arange(1000) % len(X)].tolist()}))
    return single, batch


def wait_first_200(url: str, body: str, process: subprocess.Popen, timeout: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=1).ok:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise TimeoutError(url)


def tree_rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def wrk(url: str, body_file: Path, connections: int, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url],
        env={**os.environ, "BODY_FILE": str(body_file)}, capture_output=True, text=True, timeout=seconds + 60)
    lines = [l for l in out.stdout.splitlines() if l.startswith("WRK_JSON ")]
    if not lines:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    result = json.loads(lines[0].removeprefix("WRK_JSON "))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def run_server(name: str, env: dict, single: Path, batch: Path, args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(SERVERS[name](port), cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cold = wait_first_200(url + "/predict", single.read_text(), process)
        wrk(url + "/predict", single, 16, 2)  # warm-up
        result = {"cold_start_s": cold, "load": {}}
        for c in args.concurrency:
            result["load"][c] = wrk(url + "/predict", single, c, args.duration)
            print(f"{name:24} c={c:<4} {result['load'][c]['rps']:8.0f} rps  p50 {result['load'][c]['p50_ms']:7.2f} ms"
                  f"  p99 {result['load'][c]['p99_ms']:7.2f} ms  non-2xx {result['load'][c]['non_2xx']}", flush=True)
        if name == "this service":
            result["batch"] = wrk(url + "/predict_batch", batch, 4, args.duration)
            result["batch"]["rows_per_s"] = result["batch"]["rps"] * 1000
        result["rss_mb"] = tree_rss_mb(process.pid)
        return result
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def markdown(results: dict, meta: dict) -> str:
    seed, ceiling, fixed = (results[name] for name in ("seed (FastAPI+joblib)", "BentoML, no model",
                                                       "BentoML, no model, fixed"))
    lines = [f"Measured {meta['date']} on {meta['machine']}; wrk, 1 thread, {meta['duration']} s per point, "
             "single-row `POST /predict` with the same RandomForest(100) model.", "",
             "\"fixed\": the same no-model service with `sklearn_service/bentoml_fixes.py` applied.", "",
             "| server | conc. | rps | p50 ms | p99 ms | non-2xx | timeouts | × seed | × no-model | × no-model, fixed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        for c, r in result["load"].items():
            lines.append(f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['non_2xx']} | "
                         f"{r['timeouts']} | {r['rps'] / seed['load'][c]['rps']:.2f} | "
                         f"{r['rps'] / ceiling['load'][c]['rps']:.2f} | {r['rps'] / fixed['load'][c]['rps']:.2f} |")
    lines += ["", "| server | cold start s | RSS of process tree MB |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['cold_start_s']:.2f} | {r['rss_mb']:.0f} |" for name, r in results.items()]
    b = results["this service"]["batch"]
    lines += ["", f"`/predict_batch`, 1000-row requests, 4 connections: **{b['rows_per_s']:.0f} rows/s** "
              f"(p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, non-2xx {b['non_2xx']})."]
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        cs = list(result["load"])
        left.plot(cs, [result["load"][c]["rps"] for c in cs], marker="o", label=name)
        right.plot(cs, [result["load"][c]["p99_ms"] for c in cs], marker="o", label=name)
    concurrency = list(next(iter(results.values()))["load"])
    for axis, title in ((left, "requests/s"), (right, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.set_xlabel("concurrent connections")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(ROOT)}
        os.environ["BENTOML_HOME"] = str(home)
        env["MODEL_PKL"] = str(prepare_model(home))
        single, batch = write_bodies(home)
        results = {name: run_server(name, env, single, batch, args) for name in SERVERS}
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "duration": args.duration,
            "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                       f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / "latest.md").write_text(markdown(results, meta))
    chart(results, args.out / "latest.png")
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
