"""A bounded concurrent load for tests: N clients share a fixed list of requests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class Result:
    index: int
    status: int  # 0: no HTTP answer; `error` says why
    body: dict | str
    seconds: float
    started: float = 0.0  # time.monotonic() when sent
    headers: dict | None = None
    error: str = ""


async def _run(url: str, requests: list[tuple[str, object]], clients: int, timeout: float,
               headers: dict | None = None, new_connections: bool = False) -> list[Result]:
    queue = list(enumerate(requests))
    results: list[Result] = []
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            index, (path, payload) = queue.pop()
            start = time.monotonic()
            try:
                async with session.post(url + path, json=payload, headers=headers) as response:
                    body = await response.json(content_type=None) if response.content_length != 0 else ""
                    results.append(Result(index, response.status, body, time.monotonic() - start, start,
                                          dict(response.headers)))
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                results.append(Result(index, 0, repr(exc), time.monotonic() - start, start, error=type(exc).__name__))

    connector = aiohttp.TCPConnector(limit=clients, force_close=new_connections)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return sorted(results, key=lambda r: r.index)


def run_load(url: str, requests: list[tuple[str, object]], clients: int = 64, timeout: float = 30,
             headers: dict | None = None, new_connections: bool = False) -> list[Result]:
    """Sends every request once, `clients` at a time; new_connections: one TCP connection per request."""
    return asyncio.run(_run(url, requests, clients, timeout, headers, new_connections))
