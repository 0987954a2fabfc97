"""Fixes to the arbiter of `bentoml serve`: circus's Arbiter (distribution `kantoku`, BentoML's fork
of circus) and BentoML's subclass of it, for the order in which the processes stop on SIGTERM
and how soon a service that died is started again.
The arbiter's part of drain_without_resets lives with its uvicorn part, in patches/uvicorn.py."""

from __future__ import annotations

from typing import Any

from circus.arbiter import Arbiter
from circus.controller import Controller
from circus.util import AsyncPeriodicCallback
from tornado import gen

from bentoml._internal.utils.circus import Arbiter as BentoArbiter

from sklearn_service.patches import Fix
from sklearn_service.patches.bentoml import BENTOML

KANTOKU = "==0.18.3"  # the kantoku releases whose source these were checked against

ORIGINAL: dict[str, Any] = {"Arbiter._stop_watchers": Arbiter._stop_watchers, "BentoArbiter.stop": BentoArbiter.stop,
                            "Controller.start": Controller.start}

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


RESPAWN_CHECK_SECONDS = 1.0  # circus's own default check_delay; BentoML passes 10


def _manage_when_idle(arbiter: Arbiter):
    """The arbiter's check, skipped while another of its commands runs (a stop that drains for
    seconds): the check would raise ConflictError there and log a traceback each time."""
    if arbiter._exclusive_running_command is None and not arbiter._restarting:
        return arbiter.manage_watchers()
    return None


def _check_every_second(self: Controller) -> None:
    """BentoML's arbiter reaps and restarts its processes in a check every 10 s, so a model runner
    that died (killed, out of memory) was started again 0-10 s later, then took its own start-up
    time: up to ~15 s of 503s. The check now runs every second, while the arbiter is idle."""
    self.initialize()
    if self.check_delay > 0:  # circus: <= 0 means no check at all
        self.caller = AsyncPeriodicCallback(lambda: _manage_when_idle(self.arbiter), RESPAWN_CHECK_SECONDS * 1000)
        self.caller.start()
    self.started = True


FIXES: list[Fix] = [
    # relies on BentoML's name for the entry service's watcher
    Fix("entry_service_stops_first", "kantoku", KANTOKU,
        lambda: setattr(Arbiter, "_stop_watchers", _stop_entry_service_first), also=(("bentoml", BENTOML),)),
    Fix("socket_folder_removed_last", "bentoml", BENTOML,
        lambda: setattr(BentoArbiter, "stop", _stop_then_clean_up), also=(("kantoku", KANTOKU),)),
    Fix("dead_service_restarted_within_a_second", "kantoku", KANTOKU,
        lambda: setattr(Controller, "start", _check_every_second)),
]
