"""Benchmark: the seed, Seldon MLServer, BentoML with no model and this service, side by side.

Same model file, same load tool (wrk, 1 thread, 127.0.0.1), one machine, each server
started, measured and stopped in turn. Writes bench/results/latest.{md,json,png}.

    make bench                                  # installs what it needs, then this
    python bench/run.py                         # 10 s per load point, about 6 minutes
    python bench/run.py --readme                # and copy the tables into README.md
    python bench/run.py --duration 2 --only "this service" "MLServer 1.7.1"   # names as printed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from collections.abc import Callable

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import measure, report  # noqa: E402
from harness.serving import free_port, write_config  # noqa: E402

BIN = Path(sys.executable).parent
MODEL_NAME = "sklearn_model"
MIXED_MODEL_NAME = "penguins"
V2_PATH = f"/v2/models/{MODEL_NAME}/infer"
# The switch that turns drift monitoring on (issue 15): section, setting, key. Adapt it here
# if the merged configuration names it differently; unknown to the service, the point is skipped.
DRIFT_SWITCH = ("app", "drift", "enabled")


@dataclass
class Row:
    """One line of the table: a request, sent at each concurrency."""
    name: str
    path: str
    body: Path
    concurrency: tuple[int, ...] = (1, 64)
    optional: bool = False  # an endpoint that may not be in this build: a 404 skips the row


@dataclass
class Server:
    name: str
    command: Callable[[int], list[str]]  # port -> command line
    rows: list[Row]
    env: dict = field(default_factory=dict)
    batch: Path | None = None  # a /predict_batch body: measure rows/s too
    v2_batch: tuple[Path, int] | None = None  # the same rows as one binary V2 tensor, and its JSON header's length
    skip: str | None = None


def bentoml_serve(target: str) -> Callable[[int], list[str]]:
    return lambda port: [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)]


def seed_command(port: int) -> list[str]:
    return [str(BIN / "uvicorn"), "bench.seed_app:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning"]


def mlserver_command(venv: Path, folder: Path, model_file: Path) -> Callable[[int], list[str]]:
    """MLServer's defaults, serving the same model file as the seed under the same name as ours."""
    def command(port: int) -> list[str]:
        (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(
            {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}))
        (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(
            {"name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
             "parameters": {"uri": str(model_file)}}))
        return [str(venv / "bin" / "mlserver"), "start", str(folder)]
    return command


def prepare_model(home: Path) -> Path:
    """The default numeric model into the store, and as a joblib file for the seed and MLServer."""
    import joblib

    from sklearn_service.model_store import save_result
    from sklearn_service.training import load_default_dataset, train

    result = train(load_default_dataset())
    save_result(result, MODEL_NAME)
    model_file = home / "model.joblib"
    joblib.dump(result.pipeline, model_file)
    return model_file


def prepare_mixed_model(home: Path) -> dict:
    """A pipeline trained on a table like the public penguins one (text categories, booleans, gaps)
    into the store; returns one of its rows, by feature name, to send."""
    from sklearn_service.csv_data import load_csv_dataset
    from sklearn_service.model_store import save_result
    from sklearn_service.training import train
    from harness.mixed_data import write_penguins_csv

    csv = home / "penguins.csv"
    frame = write_penguins_csv(csv, rows=344)
    save_result(train(load_csv_dataset(str(csv), "species", [], [])), MIXED_MODEL_NAME)
    return json.loads(frame.drop(columns="species").iloc[[0]].to_json(orient="records"))[0]


def write_bodies(folder: Path, mixed_row: dict | None = None) -> dict[str, Path]:
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data
    bodies = {"single": {"features": X[0].tolist()},
              "v2": {"inputs": [{"name": "input-0", "shape": [1, X.shape[1]], "datatype": "FP64",
                                 "data": X[0].tolist()}]},
              "batch": {"instances": X[np.arange(1000) % len(X)].tolist()},
              "explain_batch": {"instances": X[:100].tolist()},
              **({"mixed": {"features": mixed_row}} if mixed_row else {})}
    paths = {}
    for name, body in bodies.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(body))
    return paths


def write_v2_binary_batch(folder: Path) -> tuple[Path, int]:
    """/predict_batch's 1,000 rows as one FP64 tensor in the binary extension (tritonclient's default):
    the body, and the length of its JSON header."""
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data[np.arange(1000) % 569]
    header = json.dumps({"inputs": [{"name": "input-0", "shape": list(X.shape), "datatype": "FP64",
                                     "parameters": {"binary_data_size": X.size * 8}}],
                         "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]}).encode()
    path = folder / "v2_batch.bin"
    path.write_bytes(header + X.astype("<f8").tobytes())
    return path, len(header)


def drift_toggle(folder: Path) -> tuple[Path, bool] | None:
    """A configuration with drift monitoring switched the other way from the shipped one, and whether
    it is on there; None while the service does not know the switch."""
    from sklearn_service.config import APP_DEFAULTS

    section, setting, key = DRIFT_SWITCH
    shipped = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    current = (shipped.get(section) or {}).get(setting) or (APP_DEFAULTS.get(setting) if section == "app" else None)
    if not isinstance(current, dict) or key not in current:
        return None
    on = not current[key]
    folder.mkdir()
    return write_config(folder, lambda s: s.setdefault(section, {}).setdefault(setting, {}).update({key: on})), on


def scaled_config(folder: Path, workers: int) -> Path:
    def change(settings: dict) -> None:
        for service in ("SklearnService", "ModelRunner"):
            settings["services"][service]["workers"] = workers
    folder.mkdir()
    return write_config(folder, change)


def servers(home: Path, bodies: dict[str, Path], model_file: Path, args) -> list[Server]:
    single, v2, mixed = bodies["single"], bodies["v2"], bodies["mixed"]
    venv = args.mlserver_venv
    drift = drift_toggle(home / "drift")
    drift_row = f"this service, drift {'off' if drift and not drift[1] else 'on'}"
    return [
        Server("seed (FastAPI+joblib)", seed_command, [Row("seed (FastAPI+joblib)", "/predict", single)]),
        Server("MLServer 1.7.1", mlserver_command(venv, home / "mlserver", model_file),
               [Row("MLServer 1.7.1, V2", V2_PATH, v2)],
               skip=None if (venv / "bin" / "mlserver").exists() else
               f"no MLServer at {venv}: `make bench` installs it from bench/requirements-mlserver.txt"),
        Server("BentoML, no model", bentoml_serve("bench.no_model_service:NoModelService"),
               [Row("BentoML, no model", "/predict", single)]),
        Server("BentoML, no model, fixed", bentoml_serve("bench.no_model_fixed_service:NoModelService"),
               [Row("BentoML, no model, fixed", "/predict", single)]),
        Server("this service", bentoml_serve("service:SklearnService"),
               [Row("this service", "/predict", single, (1, 64, 256)),
                Row("this service, V2", V2_PATH, v2, optional=True),
                # an explanation at c=1 beside /predict's; the batch row's rps x 100 is rows explained per second
                Row("this service, /explain", "/explain", single, (1,), optional=True),
                Row("this service, /explain_batch 100", "/explain_batch", bodies["explain_batch"], (1,),
                    optional=True)], batch=bodies["batch"], v2_batch=write_v2_binary_batch(home)),
        Server("this service, mixed-type model", bentoml_serve("service:SklearnService"),
               [Row("this service, mixed-type", "/predict", mixed)], env={"MODEL_TAG": f"{MIXED_MODEL_NAME}:latest"}),
        # the shipped configuration is "this service"; this is the same with drift monitoring switched over
        Server("this service, drift switched", bentoml_serve("service:SklearnService"),
               [Row(drift_row, "/predict", single)], env={"SERVICE_CONFIG": str(drift[0]) if drift else ""},
               skip=None if drift else f"the service does not know `{'.'.join(DRIFT_SWITCH)}` yet "
                                       "(bench/run.py DRIFT_SWITCH)"),
        Server("this service, 2 API workers + 2 runners", bentoml_serve("service:SklearnService"),
               [Row("this service, 2+2 workers", "/predict", single, (1, 64, 256))],
               env={"SERVICE_CONFIG": str(scaled_config(home / "scaled", 2))}),
    ]


def print_point(name: str, c: int | str, r: dict) -> None:
    print(f"  {name:32} c={c:<4} {r['rps']:8.0f} rps  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.1f} ms"
          f"  non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}  timeouts {r['timeouts']}", flush=True)


def measure_row(row: Row, url: str, pid: int, duration: int) -> dict:
    if row.optional:
        answer = measure.post(url + row.path, row.body.read_text())
        if answer.status_code != 200:
            return {"skipped": f"`POST {row.path}` answers {answer.status_code}"
                               + (" (not in this build)" if answer.status_code == 404 else f": {answer.text[:200]}")}
    measure.wrk(url + row.path, row.body, 16, 2)  # warm-up
    load = {}
    for c in row.concurrency:
        load[c] = measure.wrk(url + row.path, row.body, c, duration, pid)
        print_point(row.name, c, load[c])
    return {"load": load}


def measure_server(server: Server, env: dict, home: Path, duration: int) -> tuple[dict, dict]:
    """Cold start, load on each row, batch, and memory per process after the load."""
    print(f"{server.name}", flush=True)
    if server.skip:
        print(f"  skipped: {server.skip}")
        return {"skipped": server.skip}, {row.name: {"skipped": server.skip} for row in server.rows}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / f"{server.name.replace(' ', '_')}.log"
    started = time.monotonic()
    process = measure.start(server.command(port), {**env, **server.env}, ROOT, log)
    try:
        first = server.rows[0]
        cold = measure.wait_first_200(url + first.path, first.body.read_text(), process, started, timeout=120)
        rows = {row.name: {"server": server.name, **measure_row(row, url, process.pid, duration)}
                for row in server.rows}
        for name, row in rows.items():
            if "skipped" in row:
                print(f"  {name}: skipped, {row['skipped']}")
        if server.batch:
            batch = measure.wrk(url + "/predict_batch", server.batch, 4, duration, process.pid)
            batch["rows_per_s"] = batch["rps"] * 1000
            rows[first.name]["batch"] = batch
            print_point(first.name + ", batch of 1000", 4, batch)
        if server.v2_batch:
            body, header_length = server.v2_batch
            v2_batch = measure.wrk(url + V2_PATH, body, 4, duration, process.pid, "application/octet-stream",
                                   f"Inference-Header-Content-Length: {header_length}")
            v2_batch["rows_per_s"] = v2_batch["rps"] * 1000
            rows[first.name]["v2_batch"] = v2_batch
            print_point(first.name + ", V2 binary batch of 1000", 4, v2_batch)
        processes = measure.memory(process.pid)
        return {"cold_start_s": cold, "processes": processes, "rss_mb": measure.tree_rss_mb(processes),
                "pss_mb": sum(p["pss_mb"] for p in processes)}, rows
    except Exception as exc:  # one server failing should not lose the others' figures
        traceback.print_exc()
        print(log.read_text(errors="replace")[-3000:])
        reason = f"failed: {exc}"
        return {"failed": reason}, {row.name: {"skipped": reason} for row in server.rows}
    finally:
        measure.stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per load point")
    parser.add_argument("--only", nargs="+", metavar="SERVER", help="measure only these servers (names as printed)")
    parser.add_argument("--mlserver-venv", type=Path, default=ROOT / "bench" / ".venv-mlserver")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--readme", action="store_true", help="copy latest.md into README.md's Performance section")
    args = parser.parse_args()
    began, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(ROOT)}
        os.environ["BENTOML_HOME"] = str(home)
        model_file = prepare_model(home)
        env["MODEL_PKL"] = str(model_file)
        bodies = write_bodies(home, prepare_mixed_model(home))
        server_results, row_results = {}, {}
        chosen = servers(home, bodies, model_file, args)
        if unknown := set(args.only or ()) - {s.name for s in chosen}:
            parser.error(f"no server named {sorted(unknown)}; the servers: {[s.name for s in chosen]}")
        for server in chosen:
            if args.only and server.name not in args.only:
                continue
            server_results[server.name], rows = measure_server(server, env, home, args.duration)
            row_results.update(rows)
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "duration": args.duration,
            "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                       f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
            "load_average_before": load_before, "wall_s": round(time.monotonic() - began)}
    shipped = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    meta["overload_p99_bound_ms"] = shipped["services"]["ModelRunner"]["batching"]["max_latency_ms"]
    # through JSON once, so that the report reads the same structure here as from latest.json
    results = json.loads(json.dumps({"meta": meta, "servers": server_results, "rows": row_results}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=1))
    text = report.markdown(results)
    (args.out / "latest.md").write_text(text)
    report.chart(results, args.out / "latest.png")
    if args.readme:
        report.into_readme(text)
    print(text)
    return 1 if any("failed" in s for s in server_results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
