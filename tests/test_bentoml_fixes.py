from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from sklearn_service import bentoml_fixes


def run_through_middleware(app, timeout: float):
    bentoml_fixes.apply()
    middleware = TimeoutMiddleware(app, timeout=timeout)

    async def scenario():
        sent = []

        async def send(message):
            sent.append(message)

        await middleware({"type": "http"}, None, send)
        await asyncio.sleep(0)  # let cancelled tasks unwind
        pending = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        return sent, pending

    return asyncio.run(scenario())


async def quick_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope, receive, send):
    await asyncio.sleep(5)


def test_no_timer_outlives_a_finished_request():
    sent, pending = run_through_middleware(quick_app, timeout=30)
    assert sent[0]["status"] == 200 and pending == []


def test_slow_requests_still_get_a_504():
    sent, pending = run_through_middleware(slow_app, timeout=0.05)
    assert sent[0]["status"] == 504 and pending == []
