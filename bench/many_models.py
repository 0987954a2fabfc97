"""Benchmark: one service serving 20 models (10 numeric forests, 10 mixed-type pipelines) against the
same service with one model, a live version swap under load, and Seldon MLServer serving the same 20
model files in its multi-model mode.

Everything is trained here into a throwaway BENTOML_HOME from data that ships with scikit-learn or is
generated (harness/mixed_data.py); nothing is downloaded. Writes bench/results/many_models.{md,json}.

    make bench-models                                   # installs what it needs, then this (~4 min)
    python bench/many_models.py                         # 10 s per load point
    python bench/many_models.py --duration 5 --no-mlserver
    python bench/many_models.py --report bench/results/many_models.json   # re-render many_models.md

Measured, each server started, measured and stopped in turn (never two at once):
- memory: RSS summed over the server's process tree after warm-up requests to every model it serves;
- rps at 64 connections, one model (/predict) vs the 20 in turn (/models/{name}/predict,
  bench/wrk_rotate.lua);
- a live version swap: 64 connections on /models/{name}/predict while POST /v2/repository/models/{name}/load
  brings in a version trained just before; errors and p99 against the same run without the swap;
- MLServer 1.7.1 with the same joblib files: numeric forests take one [1, F] FP64 tensor, mixed-type
  pipelines one named column each through MLServer's pandas codec (`content_type: pd`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import measure  # noqa: E402
from harness.serving import Server, free_port  # noqa: E402

ROTATE = Path(__file__).resolve().parent / "wrk_rotate.lua"
OURS_ONE, OURS_MANY = "this service, 1 model", "this service, 20 models"
MLSERVER_ONE, MLSERVER_MANY = "MLServer 1.7.1, 1 model", "MLServer 1.7.1, 20 models"
# the issue's targets
MEMORY_RATIO_MAX = 1.25  # 20 models' tree RSS ÷ one model's
RPS_RATIO_MIN = 0.8      # c=64 over the 20 models ÷ c=64 on the one-model service
SWAP_P99_RATIO_MAX = 2.0  # p99 of the run with the swap ÷ the same run without it

# (dataset, rows, leading features, seed): every forest a different model, sizes and shapes apart
FOREST_SPECS = [
    ("breast_cancer", None, None, 0),
    ("wine", None, None, 1),
    ("iris", None, None, 2),
    ("digits", None, None, 3),
    ("breast_cancer", 400, 20, 4),
    ("wine", 150, None, 5),
    ("iris", 120, 3, 6),
    ("digits", 1000, 32, 7),
    ("breast_cancer", None, 10, 8),
    ("digits", 600, None, 9),
]
MIXED_SPECS = [(200 + 30 * i, i) for i in range(10)]  # (rows, seed) of a penguins-like table


@dataclass
class Model:
    """One model as trained here: its store name, what it is, one row to send both servers,
    and its joblib file for MLServer."""
    name: str
    kind: str  # "numeric forest" or "mixed-type pipeline"
    source: str
    features: int
    rows: int
    ours_body: dict     # {"features": ...} for /models/{name}/predict and /predict
    v2_body: dict       # MLServer's V2 infer request
    joblib_file: Path
    version: str = ""

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "source": self.source, "features": self.features,
                "rows": self.rows, "version": self.version,
                "joblib_kb": round(self.joblib_file.stat().st_size / 1024, 1) if self.joblib_file.exists() else None}


# ---------------------------------------------------------------- pure parts (tests/test_many_models.py)

def numeric_v2_body(row: list[float]) -> dict:
    return {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}


def pandas_v2_body(row: dict, kinds: dict[str, str]) -> dict:
    """One named column per feature, decoded by MLServer's pandas codec into the DataFrame the pipeline
    was fitted on: categories as strings, every other kind (numbers, whole numbers, booleans) as floats."""
    inputs = []
    for name, value in row.items():
        if kinds[name] == "category":
            inputs.append({"name": name, "shape": [1], "datatype": "BYTES", "data": [str(value)],
                           "parameters": {"content_type": "str"}})
        else:
            inputs.append({"name": name, "shape": [1], "datatype": "FP64", "data": [float(value)]})
    return {"parameters": {"content_type": "pd"}, "inputs": inputs}


def plan_text(requests_: list[tuple[str, dict]]) -> str:
    """wrk_rotate.lua's plan: one request a line, the path, a tab, the body as one line of JSON."""
    lines = []
    for path, body in requests_:
        text = json.dumps(body, separators=(",", ":"))
        if "\t" in path or "\n" in text or "\t" in text:
            raise ValueError(f"{path}: a path or body with a tab or newline cannot go in the plan")
        lines.append(f"{path}\t{text}")
    return "\n".join(lines) + "\n"


def model_settings(name: str, uri: Path) -> dict:
    return {"name": name, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": str(uri)}}


def errors(r: dict) -> int:
    return r["non_2xx"] + r["socket_errors"] + r["timeouts"]


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _get(results: dict, server: str, *keys):
    value = results["servers"].get(server, {})
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met); met is None when it was not measured."""
    def check(label, value, ok, spec=".2f", suffix=""):
        return label, fmt(value, spec, suffix), None if value is None else ok(value)

    many_load = _get(results, OURS_MANY, "load")
    swap = _get(results, OURS_MANY, "swap") or {}
    during, baseline = swap.get("during"), swap.get("baseline")
    call = swap.get("load_call") or {}
    swapped = (None if not during else
               call.get("status") == 200 and swap.get("version_after") == swap.get("new_version")
               and call.get("finished_s", 1e9) <= during["seconds"])
    return [
        check(f"20 models: tree RSS ≤ {MEMORY_RATIO_MAX} × one model's",
              _ratio(_get(results, OURS_MANY, "rss_mb"), _get(results, OURS_ONE, "rss_mb")),
              lambda v: v <= MEMORY_RATIO_MAX, suffix=" ×"),
        check(f"c=64 over the 20 models: rps ≥ {RPS_RATIO_MIN} × one model's",
              _ratio(_get(results, OURS_MANY, "load", "rps"), _get(results, OURS_ONE, "load", "rps")),
              lambda v: v >= RPS_RATIO_MIN, suffix=" ×"),
        check("c=64 over the 20 models: 0 errors", many_load and errors(many_load), lambda v: v == 0, "d"),
        check("live swap under c=64: 0 non-2xx", during and during["non_2xx"], lambda v: v == 0, "d"),
        check("live swap under c=64: 0 socket errors (and timeouts)",
              during and during["socket_errors"] + during["timeouts"], lambda v: v == 0, "d"),
        check(f"live swap: p99 ≤ {SWAP_P99_RATIO_MAX} × p99 without it",
              during and baseline and _ratio(during["p99_ms"], baseline["p99_ms"]),
              lambda v: v <= SWAP_P99_RATIO_MAX, suffix=" ×"),
        ("live swap: the load route answered 200 within the run and the new version serves",
         "—" if swapped is None else f"{call.get('status')}, {swap.get('version_before')} → {swap.get('version_after')}",
         swapped),
    ]


def comparisons(results: dict) -> list[tuple[str, float | None]]:
    return [
        ("this service, 20 models ÷ 1 model, tree RSS",
         _ratio(_get(results, OURS_MANY, "rss_mb"), _get(results, OURS_ONE, "rss_mb"))),
        ("MLServer, 20 models ÷ 1 model, tree RSS",
         _ratio(_get(results, MLSERVER_MANY, "rss_mb"), _get(results, MLSERVER_ONE, "rss_mb"))),
        ("this service, 20 models: c=64 on one model's route (the swap's run without a swap) ÷ 1 model's /predict, "
         "rps", _ratio(_get(results, OURS_MANY, "swap", "baseline", "rps"), _get(results, OURS_ONE, "load", "rps"))),
        ("this service, 20 models ÷ 1 model, server CPU per request at c=64",
         _ratio(cpu_per_request(_get(results, OURS_MANY, "load")), cpu_per_request(_get(results, OURS_ONE, "load")))),
        ("this service ÷ MLServer, 20 models, tree RSS",
         _ratio(_get(results, OURS_MANY, "rss_mb"), _get(results, MLSERVER_MANY, "rss_mb"))),
        ("this service ÷ MLServer, 20 models, c=64 rps",
         _ratio(_get(results, OURS_MANY, "load", "rps"), _get(results, MLSERVER_MANY, "load", "rps"))),
        ("this service ÷ MLServer, 1 model, c=64 rps",
         _ratio(_get(results, OURS_ONE, "load", "rps"), _get(results, MLSERVER_ONE, "load", "rps"))),
    ]


def cpu_per_request(r: dict | None) -> float | None:
    """The server's CPU ms per request in a wrk run (wrk's own left out)."""
    if not r or "cpu_s" not in r or not r["requests"]:
        return None
    return 1000 * sum(s for role, s in r["cpu_s"].items() if role != "wrk") / r["requests"]


def cpu_note(r: dict | None) -> str:
    total = cpu_per_request(r)
    if total is None:
        return "—"
    assert r is not None
    each = ", ".join(f"{role} {1000 * s / r['requests']:.2f}" for role, s in r["cpu_s"].items()
                     if role != "wrk" and 1000 * s / r["requests"] >= 0.005)
    return f"{total:.2f} ({each})"


def server_table(results: dict) -> list[str]:
    lines = ["| server | models | cold start s | tree RSS MB (after warm-up) | tree PSS MB | RSS after load MB "
             "| c=64 rps | p50 ms | p99 ms | non-2xx | socket errors | timeouts | server CPU ms per request |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in results["servers"].items():
        if "skipped" in s or "failed" in s:
            lines.append(f"| {name} | | {'skipped' if 'skipped' in s else '**failed**'}: "
                         f"{s.get('skipped') or s.get('failed')} | | | | | | | | | | |")
            continue
        r = s.get("load")
        load = (f"{r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['non_2xx']} | {r['socket_errors']} | "
                f"{r['timeouts']} | {cpu_note(r)}") if r else "— | — | — | — | — | — | —"
        lines.append(f"| {name} | {len(s.get('models', []))} | {fmt(s.get('cold_start_s'))} | "
                     f"{fmt(s.get('rss_mb'), '.0f')} | {fmt(s.get('pss_mb'), '.0f')} | "
                     f"{fmt(s.get('rss_after_load_mb'), '.0f')} | {load} |")
    return lines


def process_lines(results: dict) -> list[str]:
    lines = []
    for name, s in results["servers"].items():
        if s.get("processes"):
            each = ", ".join(f"{p['role']} {p['rss_mb']:.0f} ({p['pss_mb']:.0f})" for p in s["processes"])
            lines.append(f"- {name}: {each}")
    return lines


def swap_lines(results: dict) -> list[str]:
    swap = _get(results, OURS_MANY, "swap")
    if not swap:
        return []
    if "skipped" in swap or "failed" in swap:
        return [f"Live swap: {'skipped' if 'skipped' in swap else '**failed**'}: "
                f"{swap.get('skipped') or swap.get('failed')}", ""]
    call = swap["load_call"]
    lines = [f"Live swap of `{swap['model']}` ({swap['version_before']} → {swap['new_version']}, trained just before), "
             f"64 connections on `/models/{swap['model']}/predict` for {swap['duration']} s; "
             f"`POST /v2/repository/models/{swap['model']}/load` sent at {call['sent_s']:.1f} s answered "
             f"{call.get('status')} after {fmt(call.get('seconds'))} s"
             + (f" ({call['error']})" if call.get("error") else "")
             + (" (after the run had ended)" if call.get("finished_s", 0) > swap["during"]["seconds"] else "")
             + (f": `{call['body']}`" if call.get("status") not in (None, 200) else "")
             + f"; the model's version afterwards: {swap['version_after']}.", "",
             "| run | rps | p50 ms | p99 ms | max ms | non-2xx | socket errors | timeouts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key in (("without a swap", "baseline"), ("with the swap", "during")):
        r = swap[key]
        lines.append(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['non_2xx']} | {r['socket_errors']} | {r['timeouts']} |")
    return [*lines, ""]


def model_table(results: dict) -> list[str]:
    sizes = [m["joblib_kb"] for m in results["models"] if m["joblib_kb"] is not None]
    lines = [f"{len(results['models'])} models, joblib files {sum(sizes) / 1024:.1f} MB in all "
             "(the same fitted pipelines are in the store):", "",
             "| model | kind | data | features | rows | joblib KB |", "|---|---|---|---:|---:|---:|"]
    for m in results["models"]:
        lines.append(f"| {m['name']} | {m['kind']} | {m['source']} | {m['features']} | {m['rows']} | "
                     f"{fmt(m['joblib_kb'], '.0f')} |")
    return lines


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"Measured {meta['date']} on {meta['machine']} (load average {meta['load_average_before'][0]:.1f} "
             f"at the start), one run of `python bench/many_models.py --duration {meta['duration']}` "
             f"({meta['wall_s']} s in all): wrk, 1 thread, 64 connections, {meta['duration']} s per point over "
             "127.0.0.1, after a 2 s warm-up at 16 connections that reaches every model. The one-model rows "
             f"serve `{meta['one_model']}` alone; the 20-model rows the models below, each request to the next "
             "in turn (this service: `POST /models/{name}/predict` with `MODELS` naming all 20; "
             "MLServer: `POST /v2/models/{name}/infer`, one folder per model).", "",
             f"MLServer: {meta['mlserver_note']}", "",
             *server_table(results), "", *swap_lines(results), "Comparisons:", ""]
    lines += [f"- {what}: **{fmt(value)}**" for what, value in comparisons(results)]
    lines += ["", "Targets:", ""]
    for label, value, met in targets(results):
        lines.append(f"- {'not measured' if met is None else 'met' if met else '**missed**'}: {label}: {value}")
    lines += ["", "Memory per process after warm-up, RSS (PSS) MB:", "", *process_lines(results), "",
              *model_table(results)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- training

def load_bundled(dataset: str):
    from sklearn import datasets

    return getattr(datasets, f"load_{dataset}")(as_frame=True)


def train_forest(spec: tuple, seed_offset: int = 0):
    """A RandomForest pipeline on (a subset of) a dataset bundled with scikit-learn, as train.py trains one."""
    from sklearn_service.csv_data import Dataset
    from sklearn_service.training import train

    dataset, rows, features, seed = spec
    bunch = load_bundled(dataset)
    X, y = bunch.data, bunch.target
    if features:
        X = X.iloc[:, :features]
    if rows:
        picked = np.sort(np.random.default_rng(seed).choice(len(X), rows, replace=False))
        X, y = X.iloc[picked].reset_index(drop=True), y.iloc[picked].reset_index(drop=True)
    source = f"sklearn.datasets.load_{dataset}" + (f", {rows} rows" if rows else "") + \
        (f", first {features} features" if features else "")
    data = Dataset(X, y, source, {str(c): "number" for c in X.columns})
    return train(data, seed=seed + seed_offset), X.iloc[0].tolist(), len(X)


def prepare_models(home: Path) -> list[Model]:
    """20 models into the store (BENTOML_HOME is `home`) and as joblib files under home/files."""
    import joblib

    from harness.mixed_data import json_rows, write_penguins_csv
    from sklearn_service.csv_data import load_csv_dataset
    from sklearn_service.model_store import save_result
    from sklearn_service.training import train

    files = home / "files"
    files.mkdir()
    models = []
    for i, spec in enumerate(FOREST_SPECS):
        name = f"forest_{i:02d}"
        result, row, rows = train_forest(spec)
        models.append(Model(name, "numeric forest", result.metadata["training"]["source"], len(row), rows,
                            {"features": row}, numeric_v2_body(row), files / f"{name}.joblib"))
        joblib.dump(result.pipeline, models[-1].joblib_file)
        models[-1].version = save_result(result, name).tag.version
    for i, (rows, seed) in enumerate(MIXED_SPECS):
        name = f"mixed_{i:02d}"
        csv = home / f"{name}.csv"
        frame = write_penguins_csv(csv, rows=rows, seed=seed)
        data = load_csv_dataset(str(csv), "species")
        result = train(data, seed=seed)
        features = frame.drop(columns="species")
        complete = features[features.notna().all(axis=1)].iloc[[0]]  # MLServer's JSON has no missing values
        row = json_rows(complete)[0]
        models.append(Model(name, "mixed-type pipeline", f"penguins-like table, seed {seed}", len(row), rows,
                            {"features": row}, pandas_v2_body(row, data.kinds), files / f"{name}.joblib"))
        joblib.dump(result.pipeline, models[-1].joblib_file)
        models[-1].version = save_result(result, name).tag.version
    return models


# ---------------------------------------------------------------- measuring

def print_point(name: str, r: dict) -> None:
    print(f"  {name:40} {r['rps']:8.0f} rps  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.1f} ms"
          f"  non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}  timeouts {r['timeouts']}", flush=True)


def wait_all(url: str, plan: list[tuple[str, dict]], process, started: float, timeout: float) -> float:
    """Seconds from `started` until every request of the plan has had a 200 (`timeout`: from now)."""
    timeout += time.monotonic() - started
    for path, body in plan:
        measure.wait_first_200(url + path, json.dumps(body), process, started, timeout)
    cold = time.monotonic() - started
    print(f"  cold start: {cold:.1f} s to a 200 from every model", flush=True)
    return cold


def first_refusal(url: str, plan: list[tuple[str, dict]]) -> str | None:
    """Why the server cannot take this plan (a route missing in this build), or None."""
    for path, body in plan:
        answer = measure.post(url + path, json.dumps(body), timeout=30)
        if answer.status_code != 200:
            return f"`POST {path}` answers {answer.status_code}" + \
                (" (not in this build)" if answer.status_code == 404 else f": {answer.text[:200]}")
    return None


def load_and_memory(url: str, pid: int, plan: list[tuple[str, dict]], folder: Path, label: str, duration: int,
                    out: dict) -> None:
    """Warm-up over the whole plan, memory, c=64 over the plan, memory again."""
    plan_file = folder / f"plan-{label}.txt"
    plan_file.write_text(plan_text(plan))
    measure.wrk(url, plan_file, 16, 2, script=ROTATE)  # warm-up: reaches every model of the plan
    processes = measure.memory(pid)
    out.update(processes=processes, rss_mb=measure.tree_rss_mb(processes),
               pss_mb=sum(p["pss_mb"] for p in processes))
    out["load"] = measure.wrk(url, plan_file, 64, duration, pid, script=ROTATE)
    print_point(label, out["load"])
    out["rss_after_load_mb"] = measure.tree_rss_mb(measure.memory(pid))
    print(f"  tree RSS {out['rss_mb']:.0f} MB after warm-up, {out['rss_after_load_mb']:.0f} MB after the load; "
          f"PSS {out['pss_mb']:.0f} MB", flush=True)


def served_versions(url: str) -> dict[str, str]:
    answer = requests.get(url + "/models", timeout=10)
    answer.raise_for_status()
    return {m["name"]: m.get("version") for m in answer.json()["models"]}


def live_swap(url: str, pid: int, model: Model, home: Path, args) -> dict:
    """c=64 on one model's route without and then with a version swap sent mid-run."""
    from sklearn_service.model_store import save_result

    index = int(model.name.split("_")[1])
    if model.kind != "numeric forest":
        raise ValueError("--swap-model: one of the numeric forests (forest_00 .. forest_09)")
    result, _, _ = train_forest(FOREST_SPECS[index], seed_offset=100)  # same features
    new_version = save_result(result, model.name).tag.version
    body = home / f"swap-{model.name}.json"
    body.write_text(json.dumps(model.ours_body))
    path = f"/models/{model.name}/predict"
    out = {"model": model.name, "duration": args.swap_duration, "new_version": new_version,
           "version_before": served_versions(url).get(model.name)}
    out["baseline"] = measure.wrk(url + path, body, 64, args.swap_duration, pid)
    print_point(f"{model.name}, without a swap", out["baseline"])
    call: dict = {}

    def swap() -> None:
        call["sent_s"] = time.monotonic() - began
        try:
            answer = requests.post(f"{url}/v2/repository/models/{model.name}/load",
                                   json={"parameters": {"version": new_version}}, timeout=60)
            call.update(status=answer.status_code, body=answer.text[:300])
        except requests.RequestException as exc:
            call["error"] = str(exc)
        call["finished_s"] = time.monotonic() - began
        call["seconds"] = call["finished_s"] - call["sent_s"]

    timer = threading.Timer(args.swap_at, swap)
    began = time.monotonic()
    timer.start()
    out["during"] = measure.wrk(url + path, body, 64, args.swap_duration, pid)
    timer.join()
    out["load_call"] = call
    print_point(f"{model.name}, version swap at {args.swap_at} s", out["during"])
    print(f"  load route: {call.get('status', call.get('error'))} after {fmt(call.get('seconds'))} s", flush=True)
    out["version_after"] = served_versions(url).get(model.name)
    print(f"  {model.name}: {out['version_before']} → {out['version_after']} (trained {new_version})", flush=True)
    return out


def measure_ours(name: str, home: Path, env: dict, plan: list[tuple[str, dict]], models: list[Model], args,
                 swap_model: Model | None = None) -> dict:
    print(name, flush=True)
    out: dict = {"models": [m.name for m in models]}
    started = time.monotonic()
    server = Server(home, env=env)
    try:
        server.wait_ready(timeout=300)
        if refused := first_refusal(server.url, plan):
            print(f"  skipped: {refused}", flush=True)
            return {"skipped": refused}
        out["cold_start_s"] = wait_all(server.url, plan, server.process, started, 60)
        load_and_memory(server.url, server.process.pid, plan, home, name.replace(" ", "_"), args.duration, out)
        if swap_model:
            try:
                out["swap"] = live_swap(server.url, server.process.pid, swap_model, home, args)
            except Exception as exc:  # the rest of the figures still count
                traceback.print_exc()
                out["swap"] = {"failed": f"{type(exc).__name__}: {exc}"}
        return out
    except Exception as exc:
        traceback.print_exc()
        print(server.log()[-3000:])
        return {**out, "failed": f"{type(exc).__name__}: {exc}"}
    finally:
        server.stop()


def mlserver_folder(folder: Path, models: list[Model]) -> None:
    """MLServer's multi-model layout: settings.json, then a folder per model with its model-settings.json."""
    folder.mkdir()
    for m in models:
        (folder / m.name).mkdir()
        (folder / m.name / "model-settings.json").write_text(json.dumps(model_settings(m.name, m.joblib_file)))


def measure_mlserver(name: str, home: Path, env: dict, models: list[Model], args) -> dict:
    print(name, flush=True)
    venv = args.mlserver_venv
    if not (venv / "bin" / "mlserver").exists():
        reason = f"no MLServer at {venv}: `make bench-models` installs it from bench/requirements-mlserver.txt"
        print(f"  skipped: {reason}")
        return {"skipped": reason}
    folder = home / name.replace(" ", "_").replace(",", "")
    mlserver_folder(folder, models)
    port = free_port()
    (folder / "settings.json").write_text(json.dumps(
        {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}))
    url = f"http://127.0.0.1:{port}"
    plan = [(f"/v2/models/{m.name}/infer", m.v2_body) for m in models]
    out: dict = {"models": [m.name for m in models]}
    log = folder / "mlserver.log"
    started = time.monotonic()
    process = measure.start([str(venv / "bin" / "mlserver"), "start", str(folder)], env, ROOT, log)
    try:
        out["cold_start_s"] = wait_all(url, plan, process, started, 180)
        load_and_memory(url, process.pid, plan, home, name.replace(" ", "_").replace(",", ""), args.duration, out)
        return out
    except Exception as exc:
        traceback.print_exc()
        print(log.read_text(errors="replace")[-3000:])
        return {**out, "failed": f"{type(exc).__name__}: {exc}"}
    finally:
        measure.stop(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per c=64 load point (at most 10)")
    parser.add_argument("--swap-duration", type=int, default=10, help="seconds of each swap run (the load route "
                        "checks the new version in a subprocess: seconds)")
    parser.add_argument("--swap-at", type=float, default=1.0, help="when in the swap run the load route is called")
    parser.add_argument("--swap-model", default="forest_01", help="the numeric forest whose version is swapped")
    parser.add_argument("--no-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument("--mlserver-venv", type=Path, default=ROOT / "bench" / ".venv-mlserver")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--report", type=Path, metavar="JSON", help="only re-render the .md beside this results file")
    args = parser.parse_args()
    if args.report:
        args.report.with_suffix(".md").write_text(markdown(json.loads(args.report.read_text())))
        return 0
    if not 1 <= args.duration <= 10 or not 1 <= args.swap_duration <= 10:
        parser.error("load points are 1 to 10 s long")
    if not 0 < args.swap_at < args.swap_duration:
        parser.error("--swap-at must fall inside the swap run")
    began, load_before = time.monotonic(), os.getloadavg()
    servers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        home = Path(tmp)
        os.environ["BENTOML_HOME"] = str(home)
        os.environ.pop("MODELS", None)  # the one-model server is the default: MODEL_TAG alone
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(ROOT)}
        t = time.monotonic()
        models = prepare_models(home)
        print(f"trained {len(models)} models in {time.monotonic() - t:.0f} s", flush=True)
        by_name = {m.name: m for m in models}
        if args.swap_model not in by_name:
            parser.error(f"--swap-model: no model {args.swap_model}; the models: {list(by_name)}")
        one = models[0]
        servers[OURS_ONE] = measure_ours(OURS_ONE, home, {**env, "MODEL_TAG": f"{one.name}:latest"},
                                         [("/predict", one.ours_body)], [one], args)
        servers[OURS_MANY] = measure_ours(OURS_MANY, home, {**env, "MODEL_TAG": f"{one.name}:latest",
                                                             "MODELS": ",".join(m.name for m in models)},
                                          [(f"/models/{m.name}/predict", m.ours_body) for m in models], models, args,
                                          swap_model=by_name[args.swap_model])
        if not args.no_mlserver:
            servers[MLSERVER_ONE] = measure_mlserver(MLSERVER_ONE, home, env, [one], args)
            servers[MLSERVER_MANY] = measure_mlserver(MLSERVER_MANY, home, env, models, args)
        described = [m.describe() for m in models]
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "duration": args.duration,
            "swap_duration": args.swap_duration, "swap_at": args.swap_at, "one_model": one.name,
            "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                       f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
            "load_average_before": load_before, "wall_s": round(time.monotonic() - began),
            "mlserver_note": "not measured (--no-mlserver)" if args.no_mlserver else
            "the same 20 joblib files, MLServer's defaults (settings.json sets only the ports). The 10 numeric "
            "forests take one [1, F] FP64 tensor (MLServer's numpy codec); the 10 mixed-type pipelines one named "
            "input per column, strings as BYTES, numbers and booleans as FP64, decoded by MLServer's pandas codec "
            "(request parameter `content_type: pd`) into the DataFrame they were fitted on. Mixed-type rows are "
            "sent without missing values, to both servers: V2 JSON has no null in a tensor."}
    # through JSON once, so that the report reads the same structure here as from many_models.json
    results = json.loads(json.dumps({"meta": meta, "models": described, "servers": servers}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "many_models.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "many_models.md").write_text(text)
    print(text)
    failed = any("failed" in s or "failed" in (s.get("swap") or {}) for s in servers.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
