"""bench/many_models.py's pure parts: request bodies, the wrk plan, targets and the report, from results
made up here."""

from __future__ import annotations

import json

import pytest

from bench import many_models as mm


def load(rps: float, p99: float = 50.0, non_2xx: int = 0, socket_errors: int = 0, seconds: float = 10.0) -> dict:
    return {"requests": int(rps * seconds), "seconds": seconds, "rps": rps, "p50_ms": p99 / 2, "p99_ms": p99,
            "max_ms": p99 * 2, "non_2xx": non_2xx, "timeouts": 0, "socket_errors": socket_errors,
            "cpu_s": {"API worker": rps * seconds * 0.0009, "runner": rps * seconds * 0.0001, "wrk": 0.5}}


def server(rss: float, rps: float, models: int, **extra) -> dict:
    return {"models": [f"m{i}" for i in range(models)], "cold_start_s": 12.0, "rss_mb": rss, "pss_mb": rss * 0.8,
            "rss_after_load_mb": rss + 2, "load": load(rps),
            "processes": [{"pid": 1, "role": "arbiter", "rss_mb": 90.0, "pss_mb": 70.0}], **extra}


def results(swap: dict | None = None) -> dict:
    swap = swap or {"model": "forest_01", "duration": 6, "new_version": "v2", "version_before": "v1",
                    "version_after": "v2", "baseline": load(900, 100.0, seconds=6),
                    "during": load(850, 180.0, seconds=6),
                    "load_call": {"sent_s": 2.0, "finished_s": 2.4, "seconds": 0.4, "status": 200, "body": "{}"}}
    meta = {"date": "2026-12-02 12:00 UTC", "machine": "2 cores", "duration": 10, "swap_duration": 6, "swap_at": 2.0,
            "one_model": "forest_00", "load_average_before": [0.5, 0.5, 0.5], "wall_s": 230,
            "mlserver_note": "the same files"}
    models = [{"name": "forest_00", "kind": "numeric forest", "source": "iris", "features": 4, "rows": 150,
               "version": "v1", "joblib_kb": 175.0}]
    return {"meta": meta, "models": models, "servers": {
        mm.OURS_ONE: server(400.0, 1000.0, 1),
        mm.OURS_MANY: server(520.0, 780.0, 20, swap=swap),
        mm.MLSERVER_ONE: server(430.0, 57.0, 1),
        mm.MLSERVER_MANY: {"skipped": "no MLServer at bench/.venv-mlserver"}}}


def test_targets_say_met_missed_or_not_measured():
    outcome = {label: met for label, _, met in mm.targets(results())}
    assert outcome["20 models: tree RSS ≤ 1.25 × one model's"] is False  # 520 / 400 = 1.3
    assert outcome["c=64 over the 20 models: rps ≥ 0.8 × one model's"] is False  # 0.78
    assert outcome["c=64 over the 20 models: 0 errors"] is True
    assert outcome["live swap under c=64: 0 non-2xx"] is True
    assert outcome["live swap: p99 ≤ 2.0 × p99 without it"] is True  # 180 / 100
    assert outcome["live swap: the load route answered 200 within the run and the new version serves"] is True


def test_a_failed_swap_misses_and_a_missing_one_is_not_measured():
    bad = results()
    swap = bad["servers"][mm.OURS_MANY]["swap"]
    swap.update(during=load(850, 250.0, non_2xx=3, socket_errors=1, seconds=6), version_after="v1")
    outcome = {label: met for label, _, met in mm.targets(bad)}
    assert outcome["live swap under c=64: 0 non-2xx"] is False
    assert outcome["live swap under c=64: 0 socket errors (and timeouts)"] is False
    assert outcome["live swap: p99 ≤ 2.0 × p99 without it"] is False  # 2.5
    assert outcome["live swap: the load route answered 200 within the run and the new version serves"] is False
    skipped = results()
    skipped["servers"][mm.OURS_MANY] = {"skipped": "`POST /models/forest_00/predict` answers 404 (not in this build)"}
    assert all(met is None for label, _, met in mm.targets(skipped) if "20 models" in label or "swap" in label)


def test_markdown_has_every_server_the_swap_and_the_skip_note():
    text = mm.markdown(results())
    assert "| this service, 20 models | 20 | 12.00 | 520 | 416 | 522 | 780 |" in text
    assert "| MLServer 1.7.1, 20 models | | skipped: no MLServer at bench/.venv-mlserver |" in text
    assert "| with the swap | 850 | 90.00 | 180.0 | 360.0 | 0 | 0 | 0 |" in text
    assert "answered 200 after 0.40 s" in text
    assert "- **missed**: 20 models: tree RSS ≤ 1.25 × one model's: 1.30 ×" in text
    assert "- this service, 20 models ÷ 1 model, tree RSS: **1.30**" in text
    assert "- this service ÷ MLServer, 20 models, c=64 rps: **—**" in text
    assert "| 0 | 0 | 0 | 1.00 (API worker 0.90, runner 0.10) |" in text  # CPU ms per request, wrk's left out
    assert "server CPU per request at c=64: **1.00**" in text
    assert "(the swap's run without a swap) ÷ 1 model's /predict, rps: **0.90**" in text


def test_a_refused_load_is_shown_with_its_answer():
    refused = results()
    refused["servers"][mm.OURS_MANY]["swap"]["load_call"].update(status=503, body='{"error":"busy"}', finished_s=9.0)
    text = mm.markdown(refused)
    assert 'answered 503 after 0.40 s (after the run had ended): `{"error":"busy"}`' in text


def test_plan_is_one_request_a_line_and_refuses_what_would_break_it():
    text = mm.plan_text([("/models/a/predict", {"features": [1.0, 2]}), ("/models/b/predict", {"features": {"x": "t"}})])
    lines = text.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["/models/a/predict", "/models/b/predict"]
    assert json.loads(lines[1].split("\t", 1)[1]) == {"features": {"x": "t"}}
    escaped = mm.plan_text([("/p", {"x": "tab\there"})])  # JSON escapes a tab in a value: one line still
    assert escaped.count("\t") == 1 and json.loads(escaped.split("\t", 1)[1]) == {"x": "tab\there"}
    with pytest.raises(ValueError):
        mm.plan_text([("/a\tb", {})])


def test_mlserver_bodies_by_feature_kind():
    body = mm.pandas_v2_body({"island": "Dream", "flipper": 202, "tagged": False},
                             {"island": "category", "flipper": "integer", "tagged": "boolean"})
    assert body["parameters"] == {"content_type": "pd"}
    assert body["inputs"] == [
        {"name": "island", "shape": [1], "datatype": "BYTES", "data": ["Dream"], "parameters": {"content_type": "str"}},
        {"name": "flipper", "shape": [1], "datatype": "FP64", "data": [202.0]},
        {"name": "tagged", "shape": [1], "datatype": "FP64", "data": [0.0]}]
    assert mm.numeric_v2_body([1.0, 2.0])["inputs"][0]["shape"] == [1, 2]
    assert mm.model_settings("m", "/x/m.joblib")["implementation"] == "mlserver_sklearn.SKLearnModel"
