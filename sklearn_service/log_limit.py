"""Logging of repeated failures without flooding the log.

A failure a client or a dying runner can repeat at request rate (a 500's traceback is
~12 kB; a payload row that cannot be written printed 6 kB) is logged in full the first
time, then at most once per interval as one line with how many like it were held back.
"""

from __future__ import annotations

import logging
import threading
import time

INTERVAL_SECONDS = 10.0


class RateLimitedLog:
    """`log(key, level, message, ...)`: the first of a kind (per key) is logged as given, traceback
    included; repeats within `interval` are only counted; the next one after it is logged as one
    line, without traceback, saying how many were held back. A kind quiet for a whole interval
    starts over (logged in full again)."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL_SECONDS, clock=time.monotonic):
        self.logger, self.interval, self.clock = logger, interval, clock
        self._kinds: dict[str, list] = {}  # key -> [time last logged, held back since]
        self._lock = threading.Lock()  # also called from logging handlers on other threads

    def log(self, key: str, level: int, message: str, *args, exc_info=None) -> None:
        now = self.clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is not None and now - kind[0] < self.interval:
                kind[1] += 1
                return
            held_back = kind[1] if kind is not None else 0
            self._kinds[key] = [now, 0]
        if held_back:
            self.logger.log(level, message + " (and %d more like it in the last %.0f s)", *args, held_back,
                            now - kind[0])
        else:
            self.logger.log(level, message, *args, exc_info=exc_info)

    def warning(self, key: str, message: str, *args, exc_info=None) -> None:
        self.log(key, logging.WARNING, message, *args, exc_info=exc_info)

    def error(self, key: str, message: str, *args, exc_info=None) -> None:
        self.log(key, logging.ERROR, message, *args, exc_info=exc_info)


_per_logger: dict[str, RateLimitedLog] = {}


def limited(logger: logging.Logger) -> RateLimitedLog:
    """One RateLimitedLog per logger, so every caller shares its counts."""
    found = _per_logger.get(logger.name)
    if found is None:
        found = _per_logger[logger.name] = RateLimitedLog(logger)
    return found
