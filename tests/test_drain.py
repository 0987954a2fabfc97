"""SIGTERM under load, through a real `bentoml serve`: every request whose bytes reached the server
before the signal is answered, and afterwards connections are refused at connect, never reset.

The clients speak HTTP/1.1 over raw asyncio streams so that each outcome is seen as it happens on
the wire: an answer, a refusal at connect, or a connection reset (or closed) with a request on it.

    python -m tests.test_drain --rounds 3      # the figures in the README (model store: $BENTOML_HOME)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving import Server

CLIENTS = 32


@dataclass
class Outcome:
    kind: str          # "answered", "refused" (at connect), "reset" (a request sent, no answer), "timeout"
    status: int = 0    # HTTP status when answered
    sent: float = 0.0  # time.monotonic() once the whole request was written (0: never sent)
    fresh: bool = True  # sent on a new connection (False: on a kept-alive one)


def request_bytes(port: int, body: bytes, keep_alive: bool) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
            ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status and whether the server keeps the connection open."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
    headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers.get("connection", "").strip() != "close"


async def client(port: int, body: bytes, keep_alive: bool, until: float, outcomes: list[Outcome]) -> None:
    """Requests one after another until refused at connect or `until`; a well-behaved client: it
    opens a new connection when the server said `Connection: close` or closed an idle one."""
    request = request_bytes(port, body, keep_alive)
    reader = writer = None
    while time.monotonic() < until:
        fresh = writer is None or reader.at_eof()
        if fresh:
            if writer is not None:
                writer.close()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                outcomes.append(Outcome("refused"))
                return
        outcome = Outcome("reset", fresh=fresh)
        try:
            writer.write(request)
            await writer.drain()
            outcome.sent = time.monotonic()
            outcome.status, open_ = await asyncio.wait_for(read_response(reader), 30)
            outcome.kind = "answered"
        except (ConnectionError, asyncio.IncompleteReadError):
            open_ = False
        except asyncio.TimeoutError:
            outcome.kind, open_ = "timeout", False
        outcomes.append(outcome)
        if not (keep_alive and open_):
            writer.close()
            reader = writer = None


async def load_until_stopped(port: int, body: bytes, keep_alive: bool, term, seconds: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    until = time.monotonic() + seconds
    clients = [asyncio.create_task(client(port, body, keep_alive, until, outcomes)) for _ in range(CLIENTS)]
    await asyncio.sleep(1.5)
    term()
    await asyncio.gather(*clients)
    return outcomes


def sigterm_under_load(home: Path, body: bytes, keep_alive: bool, seconds: float = 25) -> dict:
    """Serves, loads with CLIENTS clients, sends SIGTERM to the server's process (as an orchestrator
    does) and counts what the clients saw."""
    with Server(home) as server:
        signalled = []

        def term() -> None:
            signalled.append(time.monotonic())
            server.process.send_signal(signal.SIGTERM)

        outcomes = asyncio.run(load_until_stopped(server.port, body, keep_alive, term, seconds))
        server.process.wait(30)
        exited_after = time.monotonic() - signalled[0]
        code = server.process.returncode
    term_at = signalled[0]
    counts = Counter(o.kind if o.kind != "answered" else ("2xx" if 200 <= o.status < 300 else "other status")
                     for o in outcomes)
    return {"counts": counts, "exit_code": code, "exited_after": exited_after,
            "after_signal": sum(o.kind == "answered" and o.sent > term_at for o in outcomes),
            "resets": Counter("fresh" if o.fresh else "kept-alive" for o in outcomes if o.kind == "reset"),
            "lost_before_signal": [o for o in outcomes if o.kind != "answered" and 0 < o.sent < term_at],
            "log": server.log()}


@pytest.fixture(scope="module")
def row_body(cancer) -> bytes:
    return json.dumps({"features": cancer["X"][0].tolist()}).encode()


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "connection per request"])
def test_sigterm_answers_every_request_sent_then_refuses(bentoml_home, trained, row_body, keep_alive):
    result = sigterm_under_load(bentoml_home, row_body, keep_alive)
    counts = result["counts"]
    assert counts["2xx"] > 100 and counts["refused"] > 0, counts
    assert set(counts) <= {"2xx", "refused"}, (counts, result["log"])  # no reset, no timeout, no error status
    assert not result["lost_before_signal"]
    assert result["exit_code"] == 0 and result["exited_after"] < 15, result


def main() -> None:
    parser = argparse.ArgumentParser(description="SIGTERM under load: what 32 clients see")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from sklearn.datasets import load_breast_cancer

    body = json.dumps({"features": load_breast_cancer().data[0].tolist()}).encode()
    home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    for keep_alive in (True, False):
        for _ in range(args.rounds):
            r = sigterm_under_load(home, body, keep_alive)
            print(f"{'keep-alive' if keep_alive else 'connection per request':24} {dict(r['counts'])} "
                  f"answered after the signal {r['after_signal']}, lost though sent before it "
                  f"{len(r['lost_before_signal'])}, resets on {dict(r['resets'])}, exit {r['exit_code']} after {r['exited_after']:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
