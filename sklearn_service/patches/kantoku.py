"""Fixes to the arbiter of `bentoml serve`: circus's Arbiter (distribution `kantoku`, BentoML's fork
of circus) and BentoML's subclass of it, for the order in which the processes stop on SIGTERM.
The arbiter's part of drain_without_resets lives with its uvicorn part, in patches/uvicorn.py."""

from __future__ import annotations

from typing import Any

from circus.arbiter import Arbiter
from tornado import gen

from bentoml._internal.utils.circus import Arbiter as BentoArbiter

from sklearn_service.patches import Fix
from sklearn_service.patches.bentoml import BENTOML

KANTOKU = "==0.18.3"  # the kantoku releases whose source these were checked against

ORIGINAL: dict[str, Any] = {"Arbiter._stop_watchers": Arbiter._stop_watchers, "BentoArbiter.stop": BentoArbiter.stop}

ENTRY_WATCHER = "service"  # BentoML's name for the entry service's workers; dependencies are service_<Name>


@gen.coroutine
def _stop_entry_service_first(self, close_output_streams=False, watcher_iter_func=None):
    """On SIGTERM circus stopped every service at once: the runner exited in milliseconds
    while the API service was still answering requests that need it (they got 503).
    The entry service now drains first; its dependencies stop after it has exited."""
    watchers = (watcher_iter_func or self.iter_watchers)(reverse=False)
    for stage in ([w for w in watchers if w.name == ENTRY_WATCHER], [w for w in watchers if w.name != ENTRY_WATCHER]):
        yield gen.multi([w._stop(close_output_streams) for w in stage])


def _stop_then_clean_up(self: BentoArbiter):
    """BentoML's arbiter ran its clean-up (which removes the folder of the services' Unix sockets)
    before stopping the services: a draining API worker that needed a new connection to the runner
    found no socket and answered 503. The clean-up now runs once every service has stopped."""
    stopping = Arbiter.stop(self)
    stopping.add_done_callback(lambda _: self.exit_stack.__exit__(None, None, None))
    return stopping


FIXES: list[Fix] = [
    # relies on BentoML's name for the entry service's watcher
    Fix("entry_service_stops_first", "kantoku", KANTOKU,
        lambda: setattr(Arbiter, "_stop_watchers", _stop_entry_service_first), also=(("bentoml", BENTOML),)),
    Fix("socket_folder_removed_last", "bentoml", BENTOML,
        lambda: setattr(BentoArbiter, "stop", _stop_then_clean_up), also=(("kantoku", KANTOKU),)),
]
