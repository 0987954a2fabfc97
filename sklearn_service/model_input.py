"""The runner side of the serving matrix: encoded rows back into what the model was fitted on.

A model fitted on an array takes the matrix itself. One fitted on a DataFrame gets one with the
training column names and dtypes, categories decoded from their codes (category_codes.py); an
unseen code becomes a value none of the feature's categories is, which the model's encoder treats
as it treats any unseen value. pandas is imported only for such a model.
"""

from __future__ import annotations

import typing as t

import numpy as np

from sklearn_service.category_codes import UNSEEN_LABEL, decode

if t.TYPE_CHECKING:
    from sklearn_service.signature import Signature


def unseen_value(categories: list):
    """What stands for an unseen value in the model's input: a number for number categories."""
    numbers = [c for c in categories if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if numbers and len(numbers) == len(categories):
        return max(numbers) + 1  # a number none of the categories is
    return UNSEEN_LABEL


def to_model_input(signature: "Signature", X: np.ndarray):
    if not signature.takes_frame:
        return X
    import pandas as pd

    columns = {}
    for i, f in enumerate(signature.features):
        column = X[:, i]
        missing = np.isnan(column)
        if f.is_category:
            categories = f.category_list
            columns[f.name] = pd.Series(decode(column, categories, unseen_value(categories), np.nan), dtype=object)
        elif f.dtype == "int64" and not missing.any():
            columns[f.name] = column.astype(np.int64)
        elif f.dtype == "bool" and not missing.any():
            columns[f.name] = column.astype(bool)
        elif f.dtype == "bool":  # numpy's stubs lack np.where(..., None, ...), which makes an object array
            values = np.where(missing, None, column.astype(bool))  # type: ignore[call-overload]
            columns[f.name] = pd.Series(values, dtype=object).fillna(np.nan)
        else:
            columns[f.name] = column
    return pd.DataFrame(columns)
