from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sklearn_service.coalescer import Coalescer, RunnerHop
from sklearn_service.errors import RunnerStalled


class FakeRunner:
    """Doubles its input; records every call so tests can see how rows were grouped."""

    def __init__(self, fail_on: float | None = None):
        self.calls: list[int] = []
        self.fail_on = fail_on

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        await asyncio.sleep(0.01)
        if self.fail_on is not None and self.fail_on in rows:
            raise RuntimeError("runner failed")
        return rows[:, 0] * 2


def rows(*values):
    return np.array([[v] for v in values], dtype=float)


def test_lone_request_is_sent_at_once_and_concurrent_ones_share_a_call():
    async def scenario():
        runner = FakeRunner()
        coalesce = Coalescer(runner, max_rows=100)
        first = await coalesce(rows(1))
        results = await asyncio.gather(*(coalesce(rows(i, i + 0.5)) for i in range(10)))
        return runner.calls, first, results

    calls, first, results = asyncio.run(scenario())
    assert first.tolist() == [2.0]
    assert calls[0] == 1 and sum(calls[1:]) == 20 and len(calls) <= 3  # 10 requests, at most 2 calls
    assert [r.tolist() for r in results] == [[2 * i, 2 * i + 1] for i in range(10)]


def test_groups_respect_max_rows():
    async def scenario():
        runner = FakeRunner()
        coalesce = Coalescer(runner, max_rows=4)
        await asyncio.gather(*(coalesce(rows(i)) for i in range(10)))
        return runner.calls

    assert max(asyncio.run(scenario())) <= 4


def test_a_failing_call_fails_only_its_own_group():
    async def scenario():
        runner = FakeRunner(fail_on=99)
        coalesce = Coalescer(runner, max_rows=100)
        first = asyncio.ensure_future(coalesce(rows(1)))  # goes alone
        await asyncio.sleep(0)
        doomed = [coalesce(rows(99)), coalesce(rows(5))]  # share the next call
        outcome = await asyncio.gather(*doomed, return_exceptions=True)
        return await first, outcome, await coalesce(rows(3))

    first, outcome, later = asyncio.run(scenario())
    assert first.tolist() == [2.0] and later.tolist() == [6.0]
    assert all(isinstance(o, RuntimeError) for o in outcome)


def test_cancelled_callers_are_skipped():
    async def scenario():
        runner = FakeRunner()
        coalesce = Coalescer(runner, max_rows=100)
        busy = asyncio.ensure_future(coalesce(rows(1)))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(coalesce(rows(7)))
        await asyncio.sleep(0)
        gone.cancel()
        kept = await coalesce(rows(2))
        await busy
        return runner.calls, kept

    calls, kept = asyncio.run(scenario())
    assert kept.tolist() == [4.0] and calls == [1, 1]


@pytest.mark.parametrize("max_rows, overlaps", [(2, True), (8, False)])
def test_a_second_call_overlaps_only_when_a_full_group_waits(max_rows, overlaps):
    active, peak = 0, 0

    async def runner(batch):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return batch[:, 0]

    async def scenario():
        coalesce = Coalescer(runner, max_rows=max_rows)
        first = asyncio.ensure_future(coalesce(rows(1)))
        await asyncio.sleep(0)
        await asyncio.gather(coalesce(rows(2, 3)), first)

    asyncio.run(scenario())
    assert (peak == 2) is overlaps


def test_a_stalled_runner_fails_waiting_requests_at_once_and_recovers():
    release = asyncio.Event()

    async def runner(rows):
        if not release.is_set():
            await release.wait()
            raise ConnectionResetError("the runner went away")  # the hung call fails, it does not answer
        return rows[:, 0]

    async def scenario():
        coalesce = Coalescer(runner, max_rows=10, stall_after=0.05)
        first = asyncio.ensure_future(coalesce(np.ones((1, 1))))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(coalesce(np.ones((1, 1))))
        outcomes = await asyncio.gather(first, waiting, return_exceptions=True)
        stalled_since = coalesce.stalled_since
        with pytest.raises(RunnerStalled):  # refused at once while stalled
            await coalesce(np.ones((1, 1)))
        release.set()  # the hung call ends (with an error): new requests may try again
        await asyncio.sleep(0.01)
        recovered = await coalesce(np.full((1, 1), 7.0))
        return outcomes, stalled_since, recovered, coalesce.stalled_since

    outcomes, stalled_since, recovered, after = asyncio.run(scenario())
    assert all(isinstance(o, RunnerStalled) for o in outcomes)
    assert stalled_since is not None and recovered.tolist() == [7.0] and after is None


class FakeModels:
    """A runner's infer: each model (tag) multiplies by its own factor; records each request's calls."""

    def __init__(self, fail: bool = False):
        self.requests: list[list[str]] = []
        self.fail = fail

    async def __call__(self, tags: list, methods: list, blocks: list) -> list:
        self.requests.append(list(tags))
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("runner failed")
        return [block[:, 0] * {"a:1": 2, "b:1": 3, "c:1": 5}[tag] for tag, block in zip(tags, blocks)]


def test_a_hop_carries_several_models_calls_each_answered_by_its_own_model():
    async def scenario():
        runner = FakeModels()
        hop = RunnerHop(runner)
        first = hop("a:1", "predict", rows(1))  # sent at once
        rest = [hop(tag, "predict", rows(i, i + 1)) for i, tag in enumerate(["b:1", "c:1", "a:1", "b:1"])]
        return runner.requests, await asyncio.gather(first, *rest)

    requests, answers = asyncio.run(scenario())
    assert requests[0] == ["a:1"] and sorted(t for r in requests for t in r) == ["a:1", "a:1", "b:1", "b:1", "c:1"]
    assert len(requests) <= 3  # four calls made while one was in flight travelled in at most two hops
    assert [a.tolist() for a in answers] == [[2.0], [0.0, 3.0], [5.0, 10.0], [4.0, 6.0], [9.0, 12.0]]


def test_a_failed_hop_fails_every_call_it_carried():
    async def scenario():
        hop = RunnerHop(FakeModels(fail=True))
        return await asyncio.gather(*(hop(tag, "predict", rows(1)) for tag in ("a:1", "b:1", "c:1")),
                                    return_exceptions=True)

    assert [str(e) for e in asyncio.run(scenario())] == ["runner failed"] * 3


def test_a_models_call_that_fails_in_the_runner_fails_alone():
    """The runner answers an empty array for a model's call that raised (service.ModelRunner.infer)."""
    async def runner(tags, methods, blocks):
        return [np.empty(0) if tag == "b:1" else block[:, 0] for tag, block in zip(tags, blocks)]

    async def scenario():
        hop = RunnerHop(runner)
        return await asyncio.gather(*(hop(tag, "predict", rows(1, 2)) for tag in ("a:1", "b:1", "c:1")),
                                    return_exceptions=True)

    a, b, c = asyncio.run(scenario())
    assert a.tolist() == c.tolist() == [1.0, 2.0] and str(b) == "the runner could not serve b:1"
