"""A mixed-type table like the public penguins data: categorical strings, booleans, whole
numbers, missing values (as empty cells, NA, null) and a string target, generated with a seed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

FEATURES = ["island", "bill_length_mm", "flipper_length_mm", "sex", "tagged"]


def penguins(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    island = rng.choice(["Biscoe", "Dream", "Torgersen"], rows, p=[0.5, 0.3, 0.2])
    bill = rng.normal(44, 5, rows).round(1)
    flipper = rng.integers(170, 231, rows)
    sex = rng.choice(["male", "female"], rows)
    tagged = rng.random(rows) < 0.3
    species = np.where(island == "Biscoe", np.where(flipper > 205, "Gentoo", "Adelie"),
                       np.where(bill > 45, "Chinstrap", "Adelie"))
    frame = pd.DataFrame({"island": island, "bill_length_mm": bill, "flipper_length_mm": flipper.astype(object),
                          "sex": sex.astype(object), "tagged": tagged, "species": species})
    gaps = rng.random(rows)
    frame.loc[gaps < 0.05, "bill_length_mm"] = np.nan
    frame.loc[(gaps > 0.5) & (gaps < 0.55), "sex"] = None
    frame.loc[gaps > 0.97, "flipper_length_mm"] = None
    return frame


def write_penguins_csv(path, rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Writes the table with the ways real files spell missing values: empty, NA, null."""
    frame = penguins(rows, seed)
    text = frame.to_csv(index=False, na_rep="")
    lines = text.splitlines()
    for i in range(1, len(lines), 7):
        lines[i] = lines[i].replace(",,", ",NA,", 1)
    for i in range(3, len(lines), 11):
        lines[i] = lines[i].replace(",,", ",null,", 1)
    path.write_text("\n".join(lines) + "\n")
    return frame


def json_rows(frame: pd.DataFrame) -> list[dict]:
    """Rows as a client sends them: NaN as null, numpy scalars as JSON values."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) or v is None else
                 v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]
