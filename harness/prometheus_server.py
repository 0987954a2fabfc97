"""A real Prometheus for tests: the shipped monitoring/prometheus.yml pointed at one server."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

from harness.serving import ROOT, Server, free_port

MONITORING = ROOT / "monitoring"
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (make system-deps)")


def prometheus_query(url: str, query: str) -> list:
    answer = requests.get(url + "/api/v1/query", params={"query": query}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@contextmanager
def prometheus(tmp_path: Path, service: Server, rules: Path = MONITORING / "alerts.yml"):
    """A real Prometheus that scrapes `service` and evaluates `rules` every second; yields its URL."""
    scrape_config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    scrape_config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    scrape_config["rule_files"] = [str(rules)]
    job = next(j for j in scrape_config["scrape_configs"] if j["job_name"] == "sklearn-service")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{service.port}"]}]
    scrape_config["scrape_configs"] = [job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape_config))
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)
