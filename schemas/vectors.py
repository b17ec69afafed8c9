"""How vectors are stored in ``embeddings`` and ``catalog``: float16 bytes, upcast for search.

A stored vector is the encoder's *neural* vector (``encoder.config.stored_dim`` wide: 256 for the
shipped eSSPR model) as little-endian IEEE float16, ``2 x dim`` bytes in one ``binary`` column.
Three of them (``emb_m``, ``emb_t``, ``emb_i``) make 1,536 bytes a listing for the shipped model,
inside ``VECTOR_BUDGET_BYTES``. The hybrid's lexical part is not stored: the pairs stage computes
it from the catalogue's title (``encoder.hybrid.join_lexical``), so the search is exact on what is
stored. Rounding to float16 moves a unit vector's components by at most 2**-11 of their value;
``unpack_vectors`` renormalises rows in float32, so a similarity is the cosine of the stored
directions. An absent modality is the all-zero vector and stays zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STORED_DTYPE = np.dtype("<f2")
"""Little-endian float16: the bytes of one stored vector component."""

VECTOR_BUDGET_BYTES = 2048
"""The most vector bytes one catalogue listing may take (its three stored vectors together)."""

VECTOR_COLUMNS = ("emb_m", "emb_t", "emb_i")
"""The stored vector columns of ``embeddings`` and ``catalog``."""


def stored_bytes(dim: int) -> int:
    """The vector bytes one listing takes: three vectors of ``dim`` float16 components."""
    return len(VECTOR_COLUMNS) * dim * STORED_DTYPE.itemsize


def pack_vectors(vectors: np.ndarray) -> list[bytes]:
    """Packs float rows into stored vectors.

    Args:
        vectors: float [n, dim] (unit or zero rows).

    Returns:
        n ``bytes`` objects of ``2 x dim`` bytes each (float16, little-endian).

    Raises:
        ValueError: for a non-2-D array or a value float16 cannot hold (NaN, inf, beyond 65504).
    """
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise ValueError(f"pack_vectors takes a 2-D array [n, dim], got shape {array.shape}")
    if array.size and not np.isfinite(array).all():
        raise ValueError("pack_vectors got NaN or infinite values; only finite vectors can be stored")
    with np.errstate(over="ignore"):
        half = array.astype(STORED_DTYPE)
    if array.size and not np.isfinite(half).all():
        raise ValueError("pack_vectors got values beyond float16's range (|x| > 65504); store unit vectors")
    return [row.tobytes() for row in half]


def unpack_vectors(values: Sequence[bytes | None], dim: int | None = None, normalise: bool = True) -> np.ndarray:
    """Unpacks stored vectors into float32 rows.

    Args:
        values: stored vectors (``bytes``, ``bytearray`` or ``memoryview``); None gives a zero row.
        dim: the stored width; None takes the first vector's (0 when every value is None).
        normalise: rescale non-zero rows to unit norm in float32 (what the search compares).

    Returns:
        float32 [n, dim].

    Raises:
        ValueError: a value is not ``2 x dim`` bytes long (the message gives the row and lengths).
    """
    if dim is None:
        first = next((v for v in values if v is not None), b"")
        dim = len(first) // STORED_DTYPE.itemsize
    width = dim * STORED_DTYPE.itemsize
    out = np.zeros((len(values), dim), dtype=np.float32)
    for row, value in enumerate(values):
        if value is None:
            continue
        data = bytes(value)
        if len(data) != width:
            raise ValueError(
                f"stored vector {row} has {len(data)} bytes, expected {width} ({dim} float16 values); "
                "it was written by another encoder or layout: re-embed"
            )
        out[row] = np.frombuffer(data, dtype=STORED_DTYPE)
    if normalise:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
    return out


def vector_norms(values: Sequence[bytes | None]) -> np.ndarray:
    """float64 [n]: each stored vector's L2 norm as stored (no renormalising); NaN for None or a
    value that is not whole float16 values (odd length), so a check can flag it."""
    out = np.full(len(values), np.nan)
    for row, value in enumerate(values):
        if value is None or len(value) % STORED_DTYPE.itemsize:
            continue
        out[row] = float(np.linalg.norm(np.frombuffer(bytes(value), dtype=STORED_DTYPE).astype(np.float64)))
    return out
