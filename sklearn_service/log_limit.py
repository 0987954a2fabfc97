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


class _Kinds:
    """When each kind of failure was last logged, and how many were held back since."""

    def __init__(self, interval: float, clock):
        self.interval, self.clock = interval, clock
        self._kinds: dict[str, list] = {}  # key -> [time last logged, held back since]
        self._lock = threading.Lock()  # also used from logging handlers on other threads

    def admit(self, key: str) -> tuple[bool, int, float]:
        """(log this one?, how many were held back before it, seconds since the last logged)"""
        now = self.clock()
        with self._lock:
            kind = self._kinds.get(key)
            if kind is not None and now - kind[0] < self.interval:
                kind[1] += 1
                return False, 0, 0.0
            self._kinds[key] = [now, 0]
        return True, kind[1] if kind else 0, now - kind[0] if kind else 0.0


def _held_back(count: int, seconds: float) -> str:
    return f" (and {count} more like it in the last {seconds:.0f} s)"


class RateLimitedLog:
    """`log(key, level, message, ...)`: the first of a kind (per key) is logged as given, traceback
    included; repeats within `interval` are only counted; the next one after it is logged as one
    line, without traceback, saying how many were held back. A kind quiet for a whole interval
    starts over (logged in full again)."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL_SECONDS, clock=time.monotonic):
        self.logger = logger
        self.kinds = _Kinds(interval, clock)

    def log(self, key: str, level: int, message: str, *args, exc_info=None) -> None:
        show, held_back, seconds = self.kinds.admit(key)
        if not show:
            return
        if held_back:
            self.logger.log(level, "%s", (message % args if args else message) + _held_back(held_back, seconds))
        else:
            self.logger.log(level, message, *args, exc_info=exc_info)

    def warning(self, key: str, message: str, *args, exc_info=None) -> None:
        self.log(key, logging.WARNING, message, *args, exc_info=exc_info)

    def error(self, key: str, message: str, *args, exc_info=None) -> None:
        self.log(key, logging.ERROR, message, *args, exc_info=exc_info)


class RateLimitFilter(logging.Filter):
    """The same for a library's logger: records with a traceback (BentoML's 500s), records a
    filter before it marked with a `rate_key` (client errors), and records with one of
    `messages` (uvicorn's per-request warnings) are let through once per interval per kind,
    the next one as one line with the count."""

    def __init__(self, interval: float = INTERVAL_SECONDS, clock=time.monotonic, messages: tuple[str, ...] = ()):
        super().__init__()
        self.kinds = _Kinds(interval, clock)
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "rate_key", None)
        if key is None and record.msg in self.messages:
            key = record.msg
        if key is None and record.exc_info and record.exc_info[1]:
            key = f"{record.msg}:{type(record.exc_info[1]).__name__}"
        if key is None:
            return True
        show, held_back, seconds = self.kinds.admit(key)
        if show and held_back:
            record.msg, record.args = record.getMessage() + _held_back(held_back, seconds), ()
            record.exc_info = record.exc_text = None
        return show


_per_logger: dict[str, RateLimitedLog] = {}


def limited(logger: logging.Logger) -> RateLimitedLog:
    """One RateLimitedLog per logger, so every caller shares its counts."""
    found = _per_logger.get(logger.name)
    if found is None:
        found = _per_logger[logger.name] = RateLimitedLog(logger)
    return found
