"""Fixes to prometheus_client: its per-process metric files (multiprocess mode) on a full filesystem."""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from prometheus_client import mmap_dict
from prometheus_client import values as prometheus_values

from sklearn_service.log_limit import limited
from sklearn_service.patches import Fix

logger = logging.getLogger(__name__)

ORIGINAL: dict[str, Any] = {"MmapedDict": prometheus_values.MmapedDict}


class AllocatedMetricFile(mmap_dict.MmapedDict):
    """prometheus_client's per-process metric file, with its pages allocated before use.

    The original sizes the file with truncate(), which allocates nothing, then writes
    through a memory map: on a full tmpfs (Kubernetes' /tmp emptyDir) the first write to an
    unallocated page killed the worker with SIGBUS, and serving stopped. Here the file's
    space is taken with posix_fallocate() first, which fails with an ordinary ENOSPC
    instead. A series that then finds no space (or a process whose file cannot be
    created at all) keeps its value in memory only: served requests are unaffected, /metrics
    lacks that series, and the log says so once per interval with a count.
    """

    dropped = 0  # series of this process kept in memory only

    def __init__(self, filename, read_mode=False) -> None:
        self._spilled: dict[str, tuple[float, float]] = {}
        self._memory_only = False
        if not read_mode:
            try:
                with open(filename, "a+b") as f:
                    if os.fstat(f.fileno()).st_size == 0:
                        os.posix_fallocate(f.fileno(), 0, mmap_dict._INITIAL_MMAP_SIZE)
            except OSError as exc:
                if os.path.exists(filename) and os.path.getsize(filename) == 0:
                    os.unlink(filename)  # an empty file would break every /metrics read
                self._memory_only, self._fname, self._f, self._m, self._positions = True, filename, None, None, {}
                self._no_space(exc)
                return
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        try:
            if self._memory_only:
                raise OSError(errno.ENOSPC, "its file could not be created")
            size = len(key.encode())
            needed = self._used + 4 + size + (8 - (size + 4) % 8) + 16  # the entry the original appends
            capacity = self._capacity
            while needed > capacity:
                capacity *= 2
            if capacity > self._capacity:
                os.posix_fallocate(self._f.fileno(), 0, capacity)  # the original's truncate() then finds it
        except OSError as exc:
            self._spilled[key] = (0.0, 0.0)
            AllocatedMetricFile.dropped += 1
            self._no_space(exc)
            return
        super()._init_value(key)

    def _no_space(self, exc: OSError) -> None:
        limited(logger).warning("metric_files_full", "no space for metric file %s (%s): series without space "
                                "are kept in memory only, not on /metrics (%d so far in this process)",
                                self._fname, exc, AllocatedMetricFile.dropped)

    def read_value(self, key: str):
        if key not in self._positions and key not in self._spilled:
            self._init_value(key)
        if key in self._spilled:
            return self._spilled[key]
        return mmap_dict._unpack_two_doubles(self._m, self._positions[key])

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        if key not in self._positions and key not in self._spilled:
            self._init_value(key)
        if key in self._spilled:
            self._spilled[key] = (value, timestamp)
        else:
            mmap_dict._pack_two_doubles(self._m, self._positions[key], value, timestamp)



FIXES: list[Fix] = [
    Fix("metric_files_allocated", "prometheus_client", "==0.26.0",
        lambda: setattr(prometheus_values, "MmapedDict", AllocatedMetricFile)),
]
