"""Listing ids as the search and grouping functions take them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

_MISSING = object()


def as_id_array(ids: Any, name: str) -> np.ndarray:
    """Returns listing ids as a 1-D object array of ``str``, or raises ValueError.

    Accepts Python sequences, numpy arrays and pyarrow (chunked) arrays.
    """
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if ids.null_count:
            raise ValueError(f"{name} contains {ids.null_count} null ids; drop those rows first")
        values = ids.to_pylist()
    elif isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {ids.shape}")
        values = ids.tolist()
    elif isinstance(ids, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of ids, not a single string; wrap it in a list")
    else:
        values = list(ids)
    bad = next((v for v in values if not isinstance(v, str)), _MISSING)
    if bad is not _MISSING:
        raise ValueError(
            f"{name} must contain only str ids, found {type(bad).__name__} {bad!r}; "
            "cast ids to str (and drop nulls) first"
        )
    out = np.empty(len(values), dtype=object)  # [n] str
    out[:] = values
    return out
