"""What a new user meets first: the docs page in a real browser, and the example client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.browser import CHROMIUM, CHROMIUM_FLAGS
from harness.serving import ROOT



@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make system-deps)")
def test_docs_page_renders_every_endpoint_in_headless_chromium(server, tmp_path):
    def chromium(*args: str) -> str:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args,
                               server.url + "/"], capture_output=True, text=True, timeout=120).stdout

    dom = chromium("--dump-dom")
    for path in ("/predict", "/predict_batch", "/predict_proba", "/readyz", "/metrics"):
        assert f'class="opblock-summary-path" data-path="{path}"' in dom, path
    shot = tmp_path / "docs.png"
    chromium("--window-size=1280,1200", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_example_client_talks_to_the_service(server, trained):
    result = subprocess.run([sys.executable, str(ROOT / "client.py"), "--url", server.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"metadata: {trained['tag']}" in result.stdout
    assert "predict: {'prediction': 0.0}" in result.stdout and "'probabilities': {'0'" in result.stdout


def test_locustfile_runs_headless_without_failures(server, tmp_path):
    locust = Path(sys.executable).with_name("locust")
    result = subprocess.run([str(locust), "-f", str(ROOT / "bench" / "locustfile.py"), "--host", server.url,
                             "--headless", "-u", "8", "-r", "8", "-t", "8s", "--csv", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = (tmp_path / "run_stats.csv").read_text().splitlines()
    total = next(line.split(",") for line in stats if ",Aggregated," in line)
    requests, failures = int(total[2]), int(total[3])
    assert requests > 50 and failures == 0, total
