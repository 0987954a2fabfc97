"""Gathers rows from concurrent requests into one runner call.

Every API->runner call is a full HTTP round trip, so one call per request would
cost as much as the request itself. While calls are in flight, new rows wait
here and leave together in the next call; a lone request is sent at once, so
nothing waits on a timer. A second call may overlap the one in flight only
when a full group is waiting (large batches): small groups grow better by
waiting. The runner's adaptive batching then merges calls from several API
workers.

A call unanswered after `stall_after` seconds means the runner is gone (while
it restarts, connections wait in its socket's backlog instead of failing):
everyone waiting gets RunnerStalled at once, and new rows are refused until
that call ends, so clients see a fast 503 rather than a hang.
"""

from __future__ import annotations

import asyncio
import time
import typing as t

import numpy as np

from sklearn_service.errors import Overloaded, RunnerStalled

RunnerCall = t.Callable[[np.ndarray], t.Awaitable[np.ndarray]]


class Coalescer:
    def __init__(self, call: RunnerCall, max_rows: int, max_waiting_rows: int | None = None,
                 stall_after: float | None = None, max_in_flight: int = 2):
        self._call = call
        self._max_rows = max_rows
        self._max_waiting_rows = max_waiting_rows
        self._stall_after = stall_after
        self._stalled = False
        self.stalled_since: float | None = None  # time.monotonic() of the stall, None while healthy
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._waiting: list[tuple[np.ndarray, asyncio.Future]] = []
        self._waiting_rows = 0

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self._stalled:
            raise RunnerStalled("the model runner has not answered for a while")
        if self._max_waiting_rows is not None and self._waiting and \
                self._waiting_rows + len(rows) > self._max_waiting_rows:
            raise Overloaded(f"{self._waiting_rows} rows already wait for the model")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        self._waiting_rows += len(rows)
        self._send_waiting()
        return await future

    def _may_send(self) -> bool:
        if not self._waiting or self._in_flight >= self._max_in_flight:
            return False
        return self._in_flight == 0 or self._waiting_rows >= self._max_rows

    def _send_waiting(self) -> None:
        while self._may_send():
            group: list[tuple[np.ndarray, asyncio.Future]] = []
            count = 0
            while self._waiting and (not group or count + len(self._waiting[0][0]) <= self._max_rows):
                rows, future = self._waiting.pop(0)
                self._waiting_rows -= len(rows)
                if not future.cancelled():
                    group.append((rows, future))
                    count += len(rows)
            if group:
                self._in_flight += 1
                asyncio.ensure_future(self._send(group))

    async def _send(self, group: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        watchdog = None
        if self._stall_after is not None:
            watchdog = asyncio.get_running_loop().call_later(self._stall_after, self._stall, group)
        try:
            result = await self._call(np.concatenate([rows for rows, _ in group]))
        except Exception as exc:  # every caller in the group sees the runner's failure
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.stalled_since = None
            start = 0
            for rows, future in group:
                if not future.done():
                    future.set_result(result[start:start + len(rows)])
                start += len(rows)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._stalled = False  # the call ended either way: let the next request try the runner
            self._in_flight -= 1
            self._send_waiting()

    def _stall(self, group: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        self._stalled = True
        self.stalled_since = self.stalled_since or time.monotonic()
        stalled = RunnerStalled(f"the model runner did not answer within {self._stall_after} s")
        for _, future in [*group, *self._waiting]:
            if not future.done():
                future.set_exception(stalled)
        self._waiting.clear()
        self._waiting_rows = 0


class RunnerHop:
    """Carries the calls of several models to the runner in one request: (tag, method, rows) each,
    answered by that model's own call there (rows of two models never share a model call). Every
    API->runner request costs milliseconds of HTTP handling on each side, far more than a small
    model's answer: with many models, each model's own gathering (a Coalescer per model) leaves
    a few rows a call, and the hops, not the models, would bound the service. As Coalescer: a hop
    goes at once when none is in flight; calls made meanwhile leave together when it returns, or in
    a second hop once `group` of them wait."""

    def __init__(self, send: t.Callable[[list, list, list], t.Awaitable[list]], max_in_flight: int = 2,
                 group: int = 16):
        self._send = send
        self._max_in_flight = max_in_flight
        self._group = group
        self._in_flight = 0
        self._waiting: list[tuple[str, str, np.ndarray, asyncio.Future]] = []

    async def __call__(self, tag: str, method: str, rows: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((tag, method, rows, future))
        if self._in_flight == 0 or (self._in_flight < self._max_in_flight and len(self._waiting) >= self._group):
            self._go()
        return await future

    def _go(self) -> None:
        group = [call for call in self._waiting if not call[3].cancelled()]
        self._waiting = []
        if group:
            self._in_flight += 1
            asyncio.ensure_future(self._carry(group))

    async def _carry(self, group: list) -> None:
        try:
            answers = await self._send([c[0] for c in group], [c[1] for c in group], [c[2] for c in group])
        except Exception as exc:  # every call in the hop sees the runner's failure
            for *_, future in group:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (tag, _, rows, future), answer in zip(group, answers):
                if future.done():
                    continue
                if len(answer) == 0 and len(rows):  # that model's call raised in the runner (its log says why)
                    future.set_exception(RuntimeError(f"the runner could not serve {tag}"))
                else:
                    future.set_result(answer)
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._go()
