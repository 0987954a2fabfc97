"""Writes Evidently's data drift report (HTML). Run by drift_report.py with the report environment's
Python (pandas 2 + Evidently, requirements-report.txt); the service never imports it.

    python drift_html.py spec.json   # {"reference": csv, "current": csv, "out": html, "numerical": [...],
                                     #  "categorical": [...], "left_out": {column: why}}
    python drift_html.py --warm-up   # a small report, so that what a report imports is byte-compiled once

Category values, feature names and class labels come from training and served data, so they are
hostile input. Evidently embeds them as raw JSON in an inline <script>, where "</script>" ends the
script and starts HTML. `safe_html` therefore re-encodes that JSON with <, >, & and every non-ASCII
character (U+2028/2029 included) as \\u escapes (the same values once parsed, nothing the HTML parser
can act on), and adds a Content-Security-Policy that lets only Evidently's own inline scripts run,
so a value the page's JavaScript ever turned into markup could run nothing either.
"""

import base64
import hashlib
import html
import json
import re
import sys
import tempfile

DATA = re.compile(r"<script>\s*var (\w+) = ")  # Evidently's data block: the first <script>, in <head>
SCRIPT = re.compile(r"<script\b[^>]*>(.*?)</script", re.S | re.I)
CSP = ("default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data: blob:; font-src data:; "
       "base-uri 'none'; form-action 'none'")


def _script_json(value) -> str:
    """JSON that is inert inside <script>: no <, >, & or non-ASCII character left unescaped."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def safe_html(page: str, left_out: dict[str, str]) -> str:
    """Evidently's page with its data re-encoded for script context, a CSP and a note of the columns left
    out. Fails rather than pass an unrecognised page on unencoded."""
    found = DATA.search(page)
    if found is None:
        raise SystemExit("Evidently's HTML has no data block where expected: not writing an unescaped report")
    name, decoder = found.group(1), json.JSONDecoder()
    dashboard, end = decoder.raw_decode(page, found.end())  # the JSON value itself, whatever its strings hold
    graphs_start = re.compile(rf";\s*var additional_graphs_{name} = ").match(page, end)
    if graphs_start is None:
        raise SystemExit("Evidently's HTML data block has an unexpected layout: not writing an unescaped report")
    graphs, end = decoder.raw_decode(page, graphs_start.end())
    block_end = re.compile(r";\s*</script>").match(page, end)
    if block_end is None:
        raise SystemExit("Evidently's HTML data block has an unexpected layout: not writing an unescaped report")
    data = (f"<script>var {name} = {_script_json(dashboard)};\n"
            f"var additional_graphs_{name} = {_script_json(graphs)};</script>")
    page = page[:found.start()] + data + page[block_end.end():]
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in SCRIPT.findall(page))
    meta = f'<meta http-equiv="Content-Security-Policy" content="{CSP.format(hashes=hashes)}">\n'
    page = page[:found.start()] + meta + page[found.start():]  # before the first script: it governs them all
    if left_out:
        note = "; ".join(f"{html.escape(column)}: {html.escape(why)}" for column, why in left_out.items())
        page = page.replace("<body>", f'<body>\n<p style="font-family: sans-serif; margin: 16px">'
                                      f"Not in this report: {note}</p>", 1)
    return page


def main(spec_path: str) -> None:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    with open(spec_path) as f:
        spec = json.load(f)
    definition = DataDefinition(numerical_columns=spec["numerical"], categorical_columns=spec["categorical"])
    current, reference = (Dataset.from_pandas(pd.read_csv(spec[name], dtype={c: str for c in spec["categorical"]}),
                                              data_definition=definition) for name in ("current", "reference"))
    page = Report([DataDriftPreset()]).run(current, reference).get_html_str(as_iframe=False)
    with open(spec["out"], "w", encoding="utf-8") as f:
        f.write(safe_html(page, spec.get("left_out", {})))


def warm_up() -> None:
    """A small report into a scratch folder (make report-env). The environment is installed without
    byte-compiling its ~1 GB; this compiles the part a report uses, which Python would otherwise compile
    again on every run where PYTHONDONTWRITEBYTECODE is set (~5 s of CPU each)."""
    with tempfile.TemporaryDirectory() as folder:
        rows = "x,kind\n" + "".join(f"{i},{'ab'[i % 2]}\n" for i in range(20))
        for name in ("reference", "current"):
            with open(f"{folder}/{name}.csv", "w") as f:
                f.write(rows)
        with open(f"{folder}/spec.json", "w") as f:
            json.dump({"reference": f"{folder}/reference.csv", "current": f"{folder}/current.csv",
                       "out": f"{folder}/report.html", "numerical": ["x"], "categorical": ["kind"]}, f)
        main(f"{folder}/spec.json")


if __name__ == "__main__":
    if sys.argv[1] == "--warm-up":
        warm_up()
    else:
        main(sys.argv[1])
