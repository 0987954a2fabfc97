"""The benchmark's tables, ratios, targets and chart, from the results that run.py collects.

    python bench/report.py bench/results/latest.json            # re-render latest.md and latest.png
    python bench/report.py bench/results/latest.json --readme   # and copy latest.md into README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
# latest.md goes between these lines of README.md's Performance section
README_START = "<!-- bench/results/latest.md, copied by bench/report.py --readme -->"
README_END = "<!-- end of bench/results/latest.md -->"

SEED, CEILING, FIXED = "seed (FastAPI+joblib)", "BentoML, no model", "BentoML, no model, fixed"
OURS, V2, MLSERVER = "this service", "this service, V2", "MLServer 1.7.1, V2"
MIXED, SCALED = "this service, mixed-type", "this service, 2+2 workers"
DRIFT_ON, DRIFT_OFF = "this service, drift on", "this service, drift off"  # whichever is not the shipped setting


def point(results: dict, row: str, c: int) -> dict | None:
    return results["rows"].get(row, {}).get("load", {}).get(str(c))


def drift_ratio(results: dict, c: int, key: str = "rps") -> float | None:
    """Drift on ÷ off: "this service" runs the shipped setting, the drift row the other one."""
    if DRIFT_ON in results["rows"]:
        return ratio(results, DRIFT_ON, OURS, c, key)
    return ratio(results, OURS, DRIFT_OFF, c, key)


def errors(r: dict) -> int:
    return r["non_2xx"] + r["socket_errors"] + r["timeouts"]


def ratio(results: dict, row: str, other: str, c: int, key: str = "rps") -> float | None:
    a, b = point(results, row, c), point(results, other, c)
    return a[key] / b[key] if a and b and b[key] else None


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def load_table(results: dict) -> list[str]:
    lines = ["| server | conc. | rps | p50 ms | p99 ms | non-2xx | socket errors | timeouts |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["rows"].items():
        if "skipped" in row:
            lines.append(f"| {name} | | skipped: {row['skipped']} | | | | | |")
            continue
        for c, r in row["load"].items():
            lines.append(f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | "
                         f"{r['non_2xx']} | {r['socket_errors']} | {r['timeouts']} |")
    return lines


def ratio_table(results: dict) -> list[str]:
    lines = ["| server | c=64 rps × seed | c=1 p50 × seed | c=64 rps × no-model | c=64 rps × no-model, fixed "
             "| c=1 p50 × no-model, fixed |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in results["rows"].items():
        if "load" in row:
            lines.append(f"| {name} | {fmt(ratio(results, name, SEED, 64))} | "
                         f"{fmt(ratio(results, name, SEED, 1, 'p50_ms'))} | {fmt(ratio(results, name, CEILING, 64))} | "
                         f"{fmt(ratio(results, name, FIXED, 64))} | {fmt(ratio(results, name, FIXED, 1, 'p50_ms'))} |")
    return lines


def server_table(results: dict) -> list[str]:
    lines = ["| server | cold start s | RSS of tree MB | PSS of tree MB | per process: RSS (PSS) MB |",
             "|---|---:|---:|---:|---|"]
    for name, s in results["servers"].items():
        if "cold_start_s" not in s:
            continue
        each = ", ".join(f"{p['role']} {p['rss_mb']:.0f} ({p['pss_mb']:.0f})" for p in s["processes"])
        lines.append(f"| {name} | {s['cold_start_s']:.2f} | {s['rss_mb']:.0f} | {s['pss_mb']:.0f} | {each} |")
    return lines


def cpu_table(results: dict) -> list[str]:
    """Where the CPU goes per request at 64 connections: the basis of the scaling estimate."""
    lines = ["| server | CPU ms per request at c=64, by process | server total | wrk | cores busy (server + wrk) |",
             "|---|---|---:|---:|---:|"]
    for name in results["rows"]:
        r = point(results, name, 64)
        if not r or "cpu_s" not in r or not r["requests"]:
            continue
        per = {role: 1000 * s / r["requests"] for role, s in r["cpu_s"].items()}
        server = {role: ms for role, ms in per.items() if role != "wrk"}
        each = ", ".join(f"{role} {ms:.2f}" for role, ms in server.items() if ms >= 0.005)
        busy = sum(r["cpu_s"].values()) / r["seconds"]
        lines.append(f"| {name} | {each} | {sum(server.values()):.2f} | {per['wrk']:.2f} | {busy:.2f} |")
    return lines


def comparisons(results: dict) -> list[tuple[str, float | None, str]]:
    """(what, ratio, the other side) lines the issues ask for."""
    return [("this service's V2 rps at c=64 ÷ MLServer's", ratio(results, V2, MLSERVER, 64), "target ≥ 10"),
            ("mixed-type model rps at c=64 ÷ numeric model's", ratio(results, MIXED, OURS, 64), "target ≥ 0.7"),
            ("drift on ÷ off, rps at c=64", drift_ratio(results, 64), "same throughput"),
            ("drift on ÷ off, p50 at c=1", drift_ratio(results, 1, "p50_ms"), ""),
            ("2 API workers + 2 runners ÷ 1 + 1, rps at c=64", ratio(results, SCALED, OURS, 64), ""),
            ("2 API workers + 2 runners ÷ 1 + 1, rps at c=1", ratio(results, SCALED, OURS, 1), "")]


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met); met is None when the point was not measured."""
    def check(label, value, ok, spec=".2f", suffix=""):
        return label, fmt(value, spec, suffix), None if value is None else ok(value)

    c64, c256, c1 = point(results, OURS, 64), point(results, OURS, 256), point(results, OURS, 1)
    ours = results["servers"].get(OURS, {})
    batch = results["rows"].get(OURS, {}).get("batch")
    v2_batch = results["rows"].get(OURS, {}).get("v2_batch")
    mixed1 = point(results, MIXED, 1)
    bound = results["meta"]["overload_p99_bound_ms"]
    return [
        check("c=64 rps ≥ 0.9 × no-model ceiling (fixed)", ratio(results, OURS, FIXED, 64), lambda v: v >= 0.9,
              suffix=" ×"),
        check("c=64 p99 ≤ 50 ms", c64 and c64["p99_ms"], lambda v: v <= 50, ".1f", " ms"),
        check("c=64: 0 errors", c64 and errors(c64), lambda v: v == 0, "d"),
        check("c=256: 0 errors", c256 and errors(c256), lambda v: v == 0, "d"),
        check(f"c=256 p99 ≤ {bound} ms (runner max_latency_ms: the overload policy)", c256 and c256["p99_ms"],
              lambda v: v <= bound, ".0f", " ms"),
        check("c=1 p50 ≤ 2.0 × the no-model floor (fixed)", c1 and ratio(results, OURS, FIXED, 1, "p50_ms"),
              lambda v: v <= 2.0, suffix=" ×"),
        check("process tree RSS ≤ 300 MB (1 API worker + 1 runner)", ours.get("rss_mb"), lambda v: v <= 300,
              ".0f", " MB"),
        check("/predict_batch ≥ 200k rows/s (1,000-row requests)", batch and batch["rows_per_s"],
              lambda v: v >= 200_000, ",.0f", " rows/s"),
        check("V2 binary tensors ≥ 200k rows/s (1,000-row requests)", v2_batch and v2_batch["rows_per_s"],
              lambda v: v >= 200_000, ",.0f", " rows/s"),
        check("V2 c=64 rps ≥ 10 × MLServer's", ratio(results, V2, MLSERVER, 64), lambda v: v >= 10, suffix=" ×"),
        check("mixed-type c=1 p50 ≤ 3 ms", mixed1 and mixed1["p50_ms"], lambda v: v <= 3, ".2f", " ms"),
        check("mixed-type c=64 rps ≥ 0.7 × numeric model's", ratio(results, MIXED, OURS, 64), lambda v: v >= 0.7,
              suffix=" ×"),
        check("mixed-type: 0 errors", point(results, MIXED, 64) and sum(
            errors(r) for r in results["rows"][MIXED]["load"].values()), lambda v: v == 0, "d"),
        check("drift on: c=64 rps ≥ 0.95 × off", drift_ratio(results, 64), lambda v: v >= 0.95, suffix=" ×"),
    ]


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"Measured {meta['date']} on {meta['machine']} (load average {meta['load_average_before'][0]:.1f} "
             f"at the start), one run of `python bench/run.py --duration {meta['duration']}` "
             f"({meta['wall_s']} s in all): wrk, 1 thread, {meta['duration']} s per point over 127.0.0.1; "
             "one row per request, the same RandomForest(100) model file everywhere but the mixed-type row "
             "(a ColumnTransformer pipeline trained on a generated penguins-like table).",
             "", "\"fixed\": the no-model service with `sklearn_service/patches/` applied, "
             "the ceiling this service is held to. \"this service\" runs the shipped `configuration.yaml`; "
             "the drift row switches drift monitoring the other way, the 2+2 row sets `workers: 2` for both "
             "services.", "", *load_table(results), ""]
    for key, what in (("batch", "`/predict_batch`, 1,000-row JSON requests"),
                      ("v2_batch", "V2 infer, one [1000, 30] FP64 tensor in the binary extension")):
        batch = results["rows"].get(OURS, {}).get(key)
        if batch:
            lines += [f"{what}, 4 connections: **{batch['rows_per_s']:,.0f} rows/s** (p50 {batch['p50_ms']:.1f} ms, "
                      f"p99 {batch['p99_ms']:.1f} ms, errors {errors(batch)}).", ""]
    lines += ["Ratios (p50 ratios: below 1 is faster):", "", *ratio_table(results), ""]
    lines += [f"- {what}: **{fmt(value)}**" + (f" ({note})" if note else "") for what, value, note in comparisons(results)]
    lines += ["", "Cold start (process start to first 200) and memory after the load (PSS splits shared pages "
              "between the processes that map them, so it adds up; RSS counts them in each):", "",
              *server_table(results), "", *cpu_table(results), "", "Targets:", ""]
    for label, value, met in targets(results):
        lines.append(f"- {'not measured' if met is None else 'met' if met else '**missed**'}: {label}: {value}")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [name for name, row in results["rows"].items() if "load" in row]
    y = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 2 + 0.45 * len(rows)), sharey=True)
    series = ((left, -0.2, 1, "rps", "1 connection"), (left, 0.2, 64, "rps", "64 connections"),
              (right, -0.2, 1, "p50_ms", "p50, 1 connection"), (right, 0.2, 64, "p99_ms", "p99, 64 connections"))
    for axis, offset, c, key, label in series:
        values = [(point(results, name, c) or {}).get(key, 0) for name in rows]
        bars = axis.barh(y + offset, values, height=0.4, label=label)
        axis.bar_label(bars, [f"{v:.0f}" if v >= 10 else f"{v:.2f}" for v in values], fontsize=7, padding=2)
    left.set_yticks(y, rows)
    left.invert_yaxis()
    left.set_title("requests/s (higher is better)")
    right.set_title("latency, ms (lower is better)")
    right.set_xscale("log")
    for axis in (left, right):
        axis.grid(axis="x", alpha=0.3)
        axis.margins(x=0.12)  # room for the value labels
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.suptitle(f"{results['meta']['date']}, {results['meta']['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def into_readme(text: str) -> None:
    readme = README.read_text()
    before, rest = readme.split(README_START + "\n", 1)
    after = rest.split(README_END, 1)[1]
    README.write_text(f"{before}{README_START}\n{text}{README_END}{after}")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    source.with_suffix(".md").write_text(markdown(data))
    chart(data, source.with_suffix(".png"))
    if "--readme" in sys.argv[2:]:
        into_readme(markdown(data))
