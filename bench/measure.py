"""Starting a server (stopping it: harness.serving), and what the benchmark measures on it:
wrk load, cold start, memory and CPU per process of its tree."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import time
from pathlib import Path

import psutil
import requests

from harness.serving import stop, tree  # noqa: F401  (stop: what bench/run.py calls to end a server)

LUA = Path(__file__).resolve().parent / "wrk_post.lua"


def start(command: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """In a session of its own, so that stop() ends the whole tree (workers, runners) at once."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def post(url: str, body: str, timeout: float = 5) -> requests.Response:
    return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout)


def wait_first_200(url: str, body: str, process: subprocess.Popen, started: float, timeout: float) -> float:
    """Seconds from `started` (just before the process was started) to the first 200 answer."""
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if post(url, body, timeout=1).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"no 200 from {url} within {timeout:.0f} s")


def role(process: psutil.Process, root_pid: int) -> str:
    """What a process of a server's tree does, from its command line."""
    try:
        cmd = " ".join(process.cmdline())
    except psutil.Error:
        return "?"
    if process.pid == root_pid:
        return "arbiter" if "bentoml" in cmd else "main"
    if service := re.search(r"--service-name (\S+)", cmd):  # a BentoML worker
        return "runner" if service[1] == "ModelRunner" else "API worker"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "worker"


def memory(root_pid: int) -> list[dict]:
    """RSS and PSS (shared pages split between the processes that map them) per process."""
    rows = []
    for p in tree(root_pid):
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rows.append({"pid": p.pid, "role": role(p, root_pid), "rss_mb": info.rss / 2**20, "pss_mb": info.pss / 2**20})
    return rows


def tree_rss_mb(processes: list[dict]) -> float:
    """The issue's memory figure: RSS summed over the tree (shared pages counted in each process)."""
    return sum(p["rss_mb"] for p in processes)


def cpu_seconds(root_pid: int) -> dict[int, tuple[str, float]]:
    out = {}
    for p in tree(root_pid):
        try:
            t = p.cpu_times()
            out[p.pid] = (role(p, root_pid), t.user + t.system)
        except psutil.Error:
            pass
    return out


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        used[name] = used.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    return used


def wrk(url: str, body_file: Path, connections: int, seconds: int, root_pid: int | None = None,
        content_type: str = "application/json", extra_header: str | None = None, script: Path = LUA) -> dict:
    """One bounded wrk run; with root_pid, also the CPU seconds the server's processes and wrk spent.
    `extra_header`: one more request header, "Name: value"; `script`: the Lua script that reads
    $BODY_FILE (wrk_rotate.lua: a request per line, in turn)."""
    before = cpu_seconds(root_pid) if root_pid else {}
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        env={**os.environ, "BODY_FILE": str(body_file), "CONTENT_TYPE": content_type,
             **({"EXTRA_HEADER": extra_header} if extra_header else {})},
        capture_output=True, text=True, timeout=seconds + 60)
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in out.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if not lines:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    result = json.loads(lines[0].removeprefix("WRK_JSON "))
    result["rps"] = result["requests"] / result["seconds"]
    if root_pid:
        result["cpu_s"] = cpu_by_role(before, cpu_seconds(root_pid))
        result["cpu_s"]["wrk"] = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
    return result
