"""The benchmark's report: ratios, targets and the README copy, from results made up here."""

from __future__ import annotations

from bench import report


def load(rps: float, p50: float, p99: float = 10.0, non_2xx: int = 0) -> dict:
    return {"requests": int(rps * 10), "seconds": 10.0, "rps": rps, "p50_ms": p50, "p99_ms": p99, "max_ms": p99,
            "non_2xx": non_2xx, "timeouts": 0, "socket_errors": 0,
            "cpu_s": {"API worker": rps * 10 * 0.0009, "runner": rps * 10 * 0.0001, "wrk": 0.5}}


def results() -> dict:
    rows = {report.SEED: {"load": {"1": load(200, 5.0), "64": load(200, 300.0)}},
            report.MLSERVER: {"load": {"1": load(80, 12.0), "64": load(120, 500.0)}},
            report.FIXED: {"load": {"1": load(3000, 0.3), "64": load(3000, 20.0)}},
            report.OURS: {"load": {"1": load(1000, 0.9), "64": load(2800, 20.0, 45.0),
                                   "256": load(2700, 90.0, 400.0, non_2xx=3)},
                          "batch": {**load(250, 15.0), "rows_per_s": 250_000},
                          "v2_batch": {**load(150, 25.0), "rows_per_s": 150_000}},
            report.V2: {"skipped": "`POST /v2/models/sklearn_model/infer` answers 404 (not in this build)"},
            report.MIXED: {"load": {"1": load(400, 2.5), "64": load(1400, 40.0)}},
            report.DRIFT_OFF: {"load": {"1": load(1000, 0.9), "64": load(2800, 20.0)}}}
    servers = {report.OURS: {"cold_start_s": 3.0, "rss_mb": 300.0, "pss_mb": 250.0,
                             "processes": [{"pid": 1, "role": "arbiter", "rss_mb": 80.0, "pss_mb": 60.0}]}}
    meta = {"date": "2026-11-25 12:00 UTC", "machine": "2 cores", "duration": 10, "wall_s": 300,
            "load_average_before": [0.1, 0.1, 0.1], "overload_p99_bound_ms": 500}
    return {"meta": meta, "servers": servers, "rows": rows}


def test_targets_say_met_missed_or_not_measured():
    outcome = {label: met for label, _, met in report.targets(results())}
    assert outcome["c=64 rps ≥ 0.9 × no-model ceiling (fixed)"] is True  # 2800 / 3000
    assert outcome["c=64 p99 ≤ 50 ms"] is True
    assert outcome["c=256: 0 errors"] is False
    assert outcome["c=1 p50 ≤ 2.0 × the no-model floor (fixed)"] is False  # 0.9 / 0.3
    assert outcome["process tree RSS ≤ 300 MB (1 API worker + 1 runner)"] is True
    assert outcome["/predict_batch ≥ 200k rows/s (1,000-row requests)"] is True
    assert outcome["V2 binary tensors ≥ 200k rows/s (1,000-row requests)"] is False  # 150k
    assert outcome["V2 c=64 rps ≥ 10 × MLServer's"] is None  # skipped row
    assert outcome["mixed-type c=64 rps ≥ 0.7 × numeric model's"] is False  # 1400 / 2800
    assert outcome["drift on: c=64 rps ≥ 0.95 × off"] is True  # shipped on, the drift row off


def test_markdown_has_every_row_and_the_skip_note():
    text = report.markdown(results())
    assert "| this service | 256 | 2700 |" in text
    assert "answers 404 (not in this build)" in text
    assert "**missed**: c=256: 0 errors: 3" in text
    assert "| this service | API worker 0.90, runner 0.10 | 1.00 |" in text


def test_readme_copy_replaces_only_between_the_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n{report.README_START}\nold table\n{report.README_END}\n\nafter\n")
    monkeypatch.setattr(report, "README", readme)
    report.into_readme("new table\n")
    assert readme.read_text() == f"# Title\n{report.README_START}\nnew table\n{report.README_END}\n\nafter\n"
