"""A full filesystem under the metric files or the payload log never takes serving down.

Uses a real small tmpfs (`mount -t tmpfs`, as the Kubernetes /tmp emptyDir with a size
limit is one); skipped where mounting is not allowed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
import requests

from harness.prometheus_text import delta, scrape
from harness.serving import ROOT, Server, write_config


def fill(folder: Path) -> Path:
    """Writes a file until the filesystem is full; removing it frees the space again."""
    path = folder / "filler"
    with open(path, "wb", buffering=0) as f:
        for chunk in (65536, 4096):
            try:
                while f.write(b"\0" * chunk):
                    pass
            except OSError:
                pass
    return path


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs of its own; unmounted afterwards."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def write_series(folder: Path, which: str, fill_first: bool) -> subprocess.CompletedProcess:
    """In a process of its own (SIGBUS kills it): a metric file, the filesystem filled, then
    4,000 new series written, as new label values do."""
    script = textwrap.dedent(f"""
        import os, sys
        from prometheus_client import mmap_dict
        from sklearn_service.patches import ORIGINAL, prometheus_client as fix
        from tests.test_full_filesystems import fill
        from pathlib import Path

        cls = ORIGINAL["MmapedDict"] if {which!r} == "original" else fix.AllocatedMetricFile
        folder = Path({str(folder)!r})
        if {fill_first!r}:
            fill(folder)
        metric_file = cls(str(folder / "counter_1.db"))
        if not {fill_first!r}:
            fill(folder)
        for i in range(4000):
            metric_file.write_value(f"series-{{i}}-" + "x" * 200, float(i), 0.0)
        assert metric_file.read_value("series-3999-" + "x" * 200) == (3999.0, 0.0)
        print("served on", fix.AllocatedMetricFile.dropped)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_a_full_filesystem_kills_the_writer_with_sigbus_on_unpatched_prometheus_client(small_tmpfs):
    assert write_series(small_tmpfs, "original", fill_first=False).returncode == -7  # SIGBUS


def test_series_without_space_are_kept_in_memory_and_the_file_stays_readable(small_tmpfs):
    from prometheus_client.mmap_dict import MmapedDict

    done = write_series(small_tmpfs, "allocated", fill_first=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dropped = int(done.stdout.split()[-1])
    on_file = list(MmapedDict.read_all_values_from_file(str(small_tmpfs / "counter_1.db")))
    assert dropped > 0 and len(on_file) + dropped == 4000
    assert [value for _, value, _, _ in on_file] == [float(i) for i in range(len(on_file))]
    assert done.stderr.count("kept in memory only") == 1  # once per interval


def test_no_metric_file_when_there_is_no_space_to_create_one(small_tmpfs):
    done = write_series(small_tmpfs, "allocated", fill_first=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == 4000 and not (small_tmpfs / "counter_1.db").exists()


@pytest.fixture
def tmpfs_8m():
    """The server's TMPDIR (metric files, BentoML's sockets): a short path, for Unix socket names."""
    folder = Path(tempfile.mkdtemp(prefix="t8m-", dir="/tmp"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)
    folder.rmdir()


def status(method: str, url: str, **kwargs) -> int:
    """The answer's status; 0 for none (the connection dropped)."""
    try:
        return requests.request(method, url, timeout=10, **kwargs).status_code
    except requests.RequestException:
        return 0


def new_series_requests(url: str, model: str) -> list[int]:
    """Requests whose answers add series never seen before: new statuses on many routes."""
    statuses = []
    for path in ("/predict", "/predict_batch", "/predict_proba", f"/v2/models/{model}/infer", "/nowhere"):
        for method, kwargs in [*[("POST", {"json": body}) for body in ({"features": [1.0]}, {"instances": []},
                                                                        {"inputs": []}, "not json")],
                               ("PUT", {}), ("POST", {"data": b"x", "headers": {"Content-Type": "multipart/form-data"}})]:
            statuses.append(status(method, url + path, **kwargs))
            if statuses[-1] == 0:
                return statuses  # the worker died: the next requests would only wait
    return statuses


def api_worker(server) -> int:
    """The API worker's pid (0 while there is none)."""
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:  # exited, or a zombie not yet reaped
            continue
        if "_bentoml_impl.worker.service" in command and "ModelRunner" not in command:
            return process.pid
    return 0


def serve_on_a_full_tmp(bentoml_home, tmp_path, tmpfs, skip: list[str]) -> tuple[list, int, int, str]:
    def change(settings):
        settings["app"]["skip_fixes"] = skip

    env = {"TMPDIR": str(tmpfs), "SERVICE_CONFIG": str(write_config(tmp_path, change))}
    with Server(bentoml_home, env=env) as srv:
        row = {"features": [1.0] * 30}
        assert requests.post(srv.url + "/predict", json=row, timeout=10).ok
        worker = api_worker(srv)
        assert worker, "no API worker found"
        filler = fill(tmpfs)
        statuses = new_series_requests(srv.url, "sklearn_model")
        if 0 not in statuses:
            statuses += [status("POST", srv.url + "/predict", json=row) for _ in range(5)]
        after = api_worker(srv) if srv.process.poll() is None else 0
        filler.unlink()
        metrics = status("GET", srv.url + "/metrics")
        log = srv.log()
    return statuses, worker == after, metrics, log


def test_full_metrics_filesystem_kills_the_api_worker_on_unpatched_prometheus_client(
        bentoml_home, trained, tmp_path, tmpfs_8m):
    statuses, same_worker, _, log = serve_on_a_full_tmp(bentoml_home, tmp_path, tmpfs_8m, ["metric_files_allocated"])
    assert not same_worker or any(s == 0 or s >= 500 for s in statuses), (statuses, log[-2000:])


def test_full_metrics_filesystem_leaves_serving_alone(bentoml_home, trained, tmp_path, tmpfs_8m):
    statuses, same_worker, metrics, log = serve_on_a_full_tmp(bentoml_home, tmp_path, tmpfs_8m, [])
    assert same_worker and metrics == 200, log[-3000:]
    assert all(s < 500 for s in statuses) and statuses[-5:] == [200] * 5, statuses
    assert log.count("kept in memory only") == 1, log[-3000:]


# --- the payload log -------------------------------------------------------------------------------

def log_rows(monitor, count: int) -> None:
    for i in range(count):
        monitor.start_record()
        monitor.log_batch([float(i)], name="x", role="feature", data_type="numerical")
        monitor.log_batch([0.0], name="prediction", role="prediction", data_type="numerical")
        monitor.stop_record()


def payload_rows_on_a_full_disk(folder: Path, init_logger, monkeypatch) -> tuple[int, int]:
    """(rows in the file after 50 rows on a full disk and 5 once space is back, rows counted dropped)"""
    from bentoml._internal.monitoring.default import DefaultMonitor
    from prometheus_client import REGISTRY

    from sklearn_service import payload_log

    payload_log.dropped_rows()
    before = REGISTRY.get_sample_value("ml_payload_log_dropped_total") or 0
    monkeypatch.setattr(DefaultMonitor, "_init_logger", init_logger)
    monitor = DefaultMonitor("predictions", log_path=str(folder))
    log_rows(monitor, 1)
    filler = fill(folder)
    log_rows(monitor, 50)
    filler.unlink()
    log_rows(monitor, 5)
    lines = (folder / "predictions" / "data" / "data.0.log").read_text().splitlines()
    assert [json.loads(line)["x"] for line in lines][-5:] == [0.0, 1.0, 2.0, 3.0, 4.0]
    return len(lines), (REGISTRY.get_sample_value("ml_payload_log_dropped_total") or 0) - before


def test_full_disk_prints_a_traceback_per_payload_row_on_unpatched_bentoml(small_tmpfs, monkeypatch, capfd):
    from sklearn_service.patches import ORIGINAL

    written, dropped = payload_rows_on_a_full_disk(small_tmpfs, ORIGINAL["DefaultMonitor._init_logger"], monkeypatch)
    assert capfd.readouterr().err.count("--- Logging error ---") >= 10 and dropped == 0


def test_full_disk_drops_payload_rows_counted_logged_once_and_recovers(small_tmpfs, monkeypatch, capfd, caplog):
    from sklearn_service.patches import bentoml as bentoml_patches

    with caplog.at_level(logging.WARNING, logger="sklearn_service.payload_log"):
        written, dropped = payload_rows_on_a_full_disk(small_tmpfs, bentoml_patches._monitor_init_logger, monkeypatch)
    assert "--- Logging error ---" not in capfd.readouterr().err
    # rows written (the last page of the file still had room for some) plus rows counted: every row
    assert written + dropped == 56 and dropped >= 10
    assert len([r for r in caplog.records if "not written" in r.getMessage()]) == 1


def test_full_payload_disk_leaves_serving_alone(bentoml_home, trained, tmp_path, small_tmpfs, cancer):
    def payload_log_on_tmpfs(settings):
        settings["services"]["SklearnService"]["monitoring"] = {
            "enabled": True, "type": "default", "options": {"log_path": str(small_tmpfs)}}

    rows = [("/predict", {"features": cancer["X"][i].tolist()}) for i in range(40)]
    env = {"SERVICE_CONFIG": str(write_config(tmp_path, payload_log_on_tmpfs))}
    with Server(bentoml_home, env=env) as srv:
        assert status("POST", srv.url + "/predict", json=rows[0][1]) == 200
        before = scrape(srv.url)
        filler = fill(small_tmpfs)
        answers = [status("POST", srv.url + path, json=body) for path, body in rows]
        assert status("POST", srv.url + "/predict_batch", json={"instances": cancer["X"][:10].tolist()}) == 200
        dropped = delta(before, scrape(srv.url), "ml_payload_log_dropped_total")
        filler.unlink()
        assert status("POST", srv.url + "/predict", json=rows[0][1]) == 200
        log = srv.log()
    assert answers == [200] * 40
    assert dropped >= 10
    assert "--- Logging error ---" not in log and log.count("payload log rows not written") == 1, log[-3000:]
    assert "not officially supported" not in log
    lines = [json.loads(line) for line in (small_tmpfs / "predictions" / "data" / "data.1.log").read_text().splitlines()]
    assert len(lines) + dropped == 52  # every row written or counted, and only whole lines
    assert lines[-1]["mean radius"] == cancer["X"][0][0]  # written again once there is space
