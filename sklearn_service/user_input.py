"""Caps on what train.py takes in, how its messages quote what a user's file holds, and DataError,
its one-line refusal.

Each cap is a default here, in one place (train.py has an option for the three in Limits). A file
over a cap is refused with one line before it can take the memory or time it would need.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

MAX_COLUMNS = 2_000                  # CSV columns (--max-columns); 100,000 took 299 s and 3.3 GB
MAX_CELLS = 20_000_000               # CSV rows x columns held in memory (--max-cells): 160 MB as float64,
                                     # several times that as text
MAX_HEADER_BYTES = 1 << 20           # a CSV header line longer than this is not a header
MAX_MODEL_BYTES = 1 << 30            # a .skops file's uncompressed size (--max-model-bytes)
MAX_NAME_CHARS = 1_000               # a column or feature name (it labels metrics, the schema, the log)
SHOWN_CHARS = 60                     # how much of one user value a message quotes
SHOWN_ITEMS = 8                      # how many names a message lists
# Columns the payload log (BentoML's monitor: timestamp, request_id, trace_id, and bento_meta for
# OTLP; ours: endpoint, model_tag, prediction) and the stored reference sample (model_store.TARGET_COLUMN) write
# beside the features: a feature so named would overwrite or be renamed in them.
RESERVED_NAMES = ("endpoint", "model_tag", "prediction", "timestamp", "request_id", "trace_id", "bento_meta",
                  "__target__")


class DataError(ValueError):
    """A user's data or model file cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class Limits:
    """The caps train.py's options may change."""
    max_columns: int = MAX_COLUMNS
    max_cells: int = MAX_CELLS
    max_model_bytes: int = MAX_MODEL_BYTES


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """A user's value for a one-line message: escaped (no newline or control character can start a
    line of its own) and cut to `limit` characters."""
    if isinstance(value, (int, float, np.number)):  # a class label 0 reads as 0, not '0'
        try:
            text = str(value)
        except ValueError:  # an int past Python's digit limit for str()
            return f"an integer of {int(value).bit_length():,} bits"
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} digits)"
    text = str(value)
    cut = text[:limit]
    quoted = repr(cut)
    return quoted if len(text) <= limit else f"{quoted[:-1]}...{quoted[-1]} ({len(text):,} chars)"


def shown_list(values, limit: int = SHOWN_ITEMS) -> str:
    values = list(values)
    more = f", ... {len(values) - limit:,} more" if len(values) > limit else ""
    return "[" + ", ".join(shown(v) for v in values[:limit]) + more + "]"


def has_control_characters(name: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name)


def name_problem(names, what: str) -> str | None:
    """Why these column or feature names cannot be served, or None. Checked on the names as the file
    has them (pandas would rename a repeated `a` to `a.1`)."""
    names = [str(n) for n in names]
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        return f"{what} names must be unique; repeated: {shown_list(repeated)}"
    long = [n for n in names if len(n) > MAX_NAME_CHARS]
    if long:
        return f"{what} names must be at most {MAX_NAME_CHARS:,} characters: {shown_list(long)}"
    bad = [n for n in names if has_control_characters(n)]
    if bad:
        return f"{what} names must not hold line breaks or control characters: {shown_list(bad)}"
    if what == "feature" and (reserved := reserved_names(names)):
        return (f"feature names {shown_list(reserved)} are reserved for the payload log and drift data "
                f"({', '.join(RESERVED_NAMES)}): rename those columns")
    return None


def reserved_names(names) -> list[str]:
    return [str(n) for n in names if str(n) in RESERVED_NAMES]
