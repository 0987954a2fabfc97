"""A real `bentoml serve` on a free loopback port, and ending a server's whole process tree:
what the tests and the benchmark both start servers with; and the lock test workers take to build
from the repo's bentofile."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def stop(process: subprocess.Popen, grace: float = 20) -> None:
    """Ends the server and every process it started. BentoML's workers run in process groups of
    their own: if the arbiter has to be killed, signalling its group would leave them running."""
    try:
        members = tree(process.pid)
        os.killpg(process.pid, signal.SIGTERM)  # the arbiter stops its workers itself
    except (psutil.Error, ProcessLookupError):
        members = []
    _, alive = psutil.wait_procs(members, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    process.wait()


def write_config(folder: Path, change) -> Path:
    """The shipped configuration.yaml with `change(settings)` applied, written into `folder`."""
    settings = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    change(settings)
    path = folder / "configuration.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


# Ports for servers: a port the kernel calls free stays free only until someone binds it, and a server
# binds it seconds later. So each process of a test run (pytest-xdist worker gwN) hands out the ports of
# a range of its own, in turn, below the kernel's ephemeral range: two servers of one run never race.
PORT_RANGE = 1500  # eight ranges from 20000 end below 32768: up to eight workers
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
_first = 20000 + PORT_RANGE * (int(_worker) % 8 if _worker.isdigit() else 0)
_ports = itertools.cycle(range(_first, _first + PORT_RANGE))


@contextlib.contextmanager
def repo_bentofile():
    """Held while writing the repo's bentofile.model.yaml (sklearn_service.bento_extras) and building from
    it: one test at a time across the run's workers, or one would build from another's file."""
    with open(ROOT / "bentofile.yaml") as anchor:
        fcntl.flock(anchor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(anchor, fcntl.LOCK_UN)


def free_port() -> int:
    """A port nothing listens on now, the next of this process's range."""
    for port in itertools.islice(_ports, PORT_RANGE):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # every address: the gRPC server binds 0.0.0.0
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_first}-{_first + PORT_RANGE - 1}")


class Server:
    def __init__(self, home: Path, target: str = "service:SklearnService", env: dict | None = None,
                 cwd: Path = ROOT, log: Path | None = None, prefix: list[str] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log or home / f"serve-{self.port}.log"
        full_env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", **(env or {})}
        # each server its own gRPC port: servers of one user on one port would share it (SO_REUSEPORT)
        full_env.setdefault("GRPC_PORT", str(free_port()))
        self.grpc_port = int(full_env["GRPC_PORT"] or 0)
        self.grpc = f"127.0.0.1:{self.grpc_port}"  # its gRPC address
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [*prefix, BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> "Server":
        """Once /readyz answers 200; a server that does not is stopped (`with` calls no __exit__ when
        __enter__ raises, and its workers would go on restarting)."""
        try:
            return self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            stop(self.process, timeout)  # workers too, even when the arbiter hangs
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "Server":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
