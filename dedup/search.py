"""Exact similarity range search between listing embeddings.

Similarity is always the inner product of L2-normalised float32 vectors
(cosine similarity, higher = closer). Two backends compute exactly the same
result set:

* ``"faiss"``: ``faiss.IndexFlatIP`` + ``range_search`` over query blocks (CPU).
* ``"blocked"``: blocked matrix products, with numpy on ``device="cpu"`` or with
  torch on a CUDA device (faiss has no GPU range search).

The threshold is inclusive: a pair is kept when ``similarity >= min_similarity``
where ``similarity`` is the float32 value the backend computed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from dedup.ids import as_id_array

logger = logging.getLogger(__name__)

BACKENDS = ("faiss", "blocked")

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("listing_id_l", pa.string()),
        pa.field("listing_id_r", pa.string()),
        pa.field("similarity", pa.float32()),
    ]
)


@dataclass(frozen=True)
class FoundPairs:
    """Result of :func:`find_pairs`, sorted by (query_idx, -similarity, index_idx).

    Attributes:
        query_idx: int64 [n_pairs], row of the query in ``queries``.
        index_idx: int64 [n_pairs], row of the match in ``index_vectors``.
        similarity: float32 [n_pairs], inner product of the two vectors.
        saturated: bool [n_queries], True where a query had more than
            ``max_results_per_query`` hits and only its top hits were kept.
    """

    query_idx: np.ndarray
    index_idx: np.ndarray
    similarity: np.ndarray
    saturated: np.ndarray

    def __len__(self) -> int:
        return int(self.query_idx.shape[0])


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #


def _as_matrix(values: Any, name: str) -> np.ndarray:
    """Returns ``values`` as a C-contiguous float32 [n, d] array, or raises ValueError."""
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape [n, dim], got shape {arr.shape}; "
            "reshape single vectors with .reshape(1, -1) and pass empty inputs as shape (0, dim)"
        )
    if arr.dtype.kind != "f":
        raise ValueError(
            f"{name} must be a floating point array, got dtype {arr.dtype}; convert it with .astype(np.float32)"
        )
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0; pass embeddings with at least one component")
    arr = np.ascontiguousarray(arr, dtype=np.float32)  # [n, d]
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop or re-encode those rows before searching")
    return arr


def _float32_threshold(min_similarity: float) -> np.float32:
    """Smallest float32 ``t`` such that ``s >= t`` <=> ``s >= min_similarity`` for float32 ``s``."""
    thr = np.float32(min_similarity)
    if float(thr) < float(min_similarity):
        thr = np.nextafter(thr, np.float32(np.inf))
    return np.float32(thr)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


# (block_start, rows [n_hits] int64, cols [n_hits] int64, sims [n_hits] float32,
#  saturated [n_rows] bool or None when the caller must apply the budget)
_Block = tuple[int, np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]

# --------------------------------------------------------------------------- #
# backends
# --------------------------------------------------------------------------- #


def _sort_and_cut(
    rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n_rows: int, max_results: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorts hits of one query block by (row, -sim, col) and keeps the top ``max_results`` per row.

    Args:
        rows: int64 [n_hits] query row inside the block.
        cols: int64 [n_hits] index row.
        sims: float32 [n_hits] similarity.
        n_rows: Number of queries in the block.
        max_results: Per-query budget.

    Returns:
        (rows, cols, sims, saturated) with saturated a bool [n_rows] array.
    """
    order = np.lexsort((cols, -sims, rows))  # [n_hits]
    rows, cols, sims = rows[order], cols[order], sims[order]
    counts = np.bincount(rows, minlength=n_rows)  # [n_rows]
    saturated = counts > max_results  # [n_rows]
    if saturated.any():
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))  # [n_rows]
        rank = np.arange(rows.shape[0]) - starts[rows]  # [n_hits], 0 = best hit of its row
        keep = rank < max_results
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
    return rows, cols, sims, saturated


def _search_faiss(
    queries: np.ndarray, index_vectors: np.ndarray, thr: np.float32, query_block_size: int
) -> Iterator[_Block]:
    """Yields (block_start, rows, cols, sims, None) with all hits ``sim >= thr`` per query block."""
    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(index_vectors)
    # faiss keeps inner-product results with sim > radius (strict); the next float32
    # below thr makes that exactly sim >= thr.
    radius = float(np.nextafter(thr, np.float32(-np.inf)))
    for start in range(0, queries.shape[0], query_block_size):
        block = queries[start : start + query_block_size]  # [b, d]
        lims, sims, cols = index.range_search(block, radius)  # [b+1], [n_hits], [n_hits]
        counts = np.diff(lims.astype(np.int64))  # [b]
        rows = np.repeat(np.arange(block.shape[0], dtype=np.int64), counts)  # [n_hits]
        sims = sims.astype(np.float32, copy=False)
        keep = sims >= thr  # guard: must already hold for every hit
        yield start, rows[keep], cols.astype(np.int64, copy=False)[keep], sims[keep], None


def _top_k_mask_numpy(sims: np.ndarray, k: int) -> np.ndarray:
    """Marks the top ``k`` entries per row, ties broken by lower column.

    Args:
        sims: float32 [m, n] similarities, n > k.
        k: Entries to keep per row.

    Returns:
        bool [m, n] with exactly ``k`` True per row.
    """
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]  # [m] k-th largest value
    above = sims > kth[:, None]  # [m, n]
    tied = sims == kth[:, None]  # [m, n]
    need = k - above.sum(axis=1)  # [m] >= 1
    return above | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))


def _search_blocked_numpy(
    queries: np.ndarray,
    index_vectors: np.ndarray,
    thr: np.float32,
    max_results: int,
    query_block_size: int,
) -> Iterator[_Block]:
    """Yields (block_start, rows, cols, sims, saturated) per query block, already cut to the budget."""
    for start in range(0, queries.shape[0], query_block_size):
        sims = queries[start : start + query_block_size] @ index_vectors.T  # [b, n_index] float32
        hit = sims >= thr  # [b, n_index]
        over = hit.sum(axis=1) > max_results  # [b]
        if over.any():
            hit[over] = _top_k_mask_numpy(sims[over], max_results)
        rows, cols = np.nonzero(hit)  # [n_hits], [n_hits]
        yield start, rows.astype(np.int64), cols.astype(np.int64), sims[rows, cols], over


@contextlib.contextmanager
def _ieee_fp32_matmul(torch: Any, device: Any) -> Iterator[None]:
    """Disables TF32 for CUDA float32 matmuls inside the block (process-global switch)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = saved
    else:  # older torch
        saved = matmul.allow_tf32
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = saved


def _resolve_torch_device(device: str) -> tuple[Any, Any]:
    """Imports torch and returns (torch, torch.device) for a ``"cuda..."`` or ``"torch:cpu"`` device."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a project dependency
        raise ImportError(f"device={device!r} needs torch; install torch or use device='cpu'") from exc
    name = "cpu" if device == "torch:cpu" else device
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'cuda', 'cuda:<n>' or 'torch:cpu'"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} requested but CUDA is not available on this host "
                f"(torch {torch.__version__}); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={device!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                "are visible; pick an existing index"
            )
    return torch, dev


def _search_blocked_torch(
    queries: np.ndarray,
    index_vectors: np.ndarray,
    thr: np.float32,
    max_results: int,
    query_block_size: int,
    device: str,
) -> Iterator[_Block]:
    """Torch twin of :func:`_search_blocked_numpy` (GPU path)."""
    torch, dev = _resolve_torch_device(device)
    thr_f = float(thr)  # exactly representable in float32, so the comparison stays exact
    with torch.inference_mode(), _ieee_fp32_matmul(torch, dev):
        # a read-only index (a worker's shared catalogue vectors) is copied: torch tensors are writable
        host = index_vectors if index_vectors.flags.writeable else index_vectors.copy()
        index_t = torch.from_numpy(host).to(dev)  # [n_index, d]
        for start in range(0, queries.shape[0], query_block_size):
            rows = queries[start : start + query_block_size]
            block = torch.from_numpy(rows if rows.flags.writeable else rows.copy()).to(dev)  # [b, d]
            sims = block @ index_t.T  # [b, n_index] float32
            hit = sims >= thr_f  # [b, n_index]
            over = hit.sum(dim=1) > max_results  # [b]
            if bool(over.any()):
                sub = sims[over]  # [m, n_index]
                kth = torch.topk(sub, max_results, dim=1).values[:, -1]  # [m]
                above = sub > kth[:, None]  # [m, n_index]
                tied = sub == kth[:, None]  # [m, n_index]
                need = max_results - above.sum(dim=1)  # [m]
                hit[over] = above | (tied & (torch.cumsum(tied, dim=1) <= need[:, None]))
            rows, cols = torch.nonzero(hit, as_tuple=True)  # [n_hits], [n_hits]
            vals = sims[rows, cols]  # [n_hits]
            yield (
                start,
                rows.cpu().numpy().astype(np.int64),
                cols.cpu().numpy().astype(np.int64),
                vals.cpu().numpy().astype(np.float32),
                over.cpu().numpy(),
            )


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def _empty_pairs(n_queries: int) -> FoundPairs:
    return FoundPairs(
        query_idx=np.empty(0, dtype=np.int64),
        index_idx=np.empty(0, dtype=np.int64),
        similarity=np.empty(0, dtype=np.float32),
        saturated=np.zeros(n_queries, dtype=bool),
    )


def find_pairs(
    queries: np.ndarray,
    index_vectors: np.ndarray,
    min_similarity: float,
    max_results_per_query: int = 100,
    query_block_size: int = 4096,
    backend: str = "faiss",
    device: str = "cpu",
) -> FoundPairs:
    """Finds every (query, index) pair whose similarity is at least ``min_similarity``.

    Exact (brute-force) range search on inner products of L2-normalised vectors.
    The threshold is inclusive: a pair with ``similarity == min_similarity`` is
    kept. ``similarity`` is the float32 inner product as computed by the backend;
    a float64 ``min_similarity`` is compared exactly (it is rounded *up* to the
    next float32, never down).

    When a query has more than ``max_results_per_query`` hits, only its top
    ``max_results_per_query`` hits by similarity are kept (ties broken by lower
    ``index_idx``), ``saturated`` is set for it and a warning is logged.

    Memory: the ``"faiss"`` backend materialises all hits of one query block
    before the budget is applied; the ``"blocked"`` backend holds a float32
    ``[query_block_size, n_index]`` similarity block (on the device for torch).
    Lower ``query_block_size`` if either is too large.

    Args:
        queries: float [n_queries, dim] L2-normalised query embeddings.
        index_vectors: float [n_index, dim] L2-normalised embeddings to search.
        min_similarity: Inclusive similarity threshold in [-1, 1].
        max_results_per_query: Budget of hits kept per query (>= 1).
        query_block_size: Queries searched per block (>= 1).
        backend: ``"faiss"`` (IndexFlatIP range search, CPU only) or
            ``"blocked"`` (blocked matrix products).
        device: For ``backend="blocked"``: ``"cpu"`` (numpy), ``"cuda"`` /
            ``"cuda:<n>"`` (torch on that GPU) or ``"torch:cpu"`` (the torch code
            path on CPU; meant for tests and CPU-only torch hosts). Must be
            ``"cpu"`` for ``backend="faiss"``.

    Returns:
        FoundPairs sorted by (query_idx, -similarity, index_idx), with
        ``saturated`` of shape [n_queries]. Empty queries or an empty index give
        empty pairs.

    Raises:
        ValueError: On malformed arguments (shapes, dtypes, NaN, threshold,
            budget, backend or device names).
        RuntimeError: When a CUDA device is requested but not available.

    Examples:
        >>> import numpy as np
        >>> x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
        >>> found = find_pairs(x, x, min_similarity=0.6)
        >>> list(zip(found.query_idx.tolist(), found.index_idx.tolist()))
        [(0, 0), (0, 1), (1, 1), (1, 2), (1, 0), (2, 2), (2, 1)]
        >>> found.saturated.tolist()
        [False, False, False]
    """
    q = _as_matrix(queries, "queries")  # [n_queries, d]
    x = _as_matrix(index_vectors, "index_vectors")  # [n_index, d]
    if q.shape[1] != x.shape[1]:
        raise ValueError(
            f"queries have dimension {q.shape[1]} but index_vectors have dimension {x.shape[1]}; "
            "embed both with the same encoder"
        )
    if (
        isinstance(min_similarity, bool)
        or not isinstance(min_similarity, (int, float, np.integer, np.floating))
        or not math.isfinite(float(min_similarity))
        or not -1.0 <= float(min_similarity) <= 1.0
    ):
        raise ValueError(
            f"min_similarity must be a number in [-1, 1] (cosine similarity of normalised "
            f"vectors), got {min_similarity!r}"
        )
    max_results = _check_positive_int(max_results_per_query, "max_results_per_query")
    block_size = _check_positive_int(query_block_size, "query_block_size")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    if backend == "faiss" and device != "cpu":
        raise ValueError(
            f"backend='faiss' only runs on device='cpu' (faiss has no GPU range search); "
            f"use backend='blocked' for device={device!r}"
        )
    if backend == "blocked" and device != "cpu" and device != "torch:cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<n>' or 'torch:cpu', got {device!r}")

    n_queries = q.shape[0]
    if n_queries == 0 or x.shape[0] == 0:
        return _empty_pairs(n_queries)

    thr = _float32_threshold(min_similarity)
    if backend == "faiss":
        blocks = _search_faiss(q, x, thr, block_size)
    elif device == "cpu":
        blocks = _search_blocked_numpy(q, x, thr, max_results, block_size)
    else:
        blocks = _search_blocked_torch(q, x, thr, max_results, block_size, device)

    parts_q: list[np.ndarray] = []
    parts_x: list[np.ndarray] = []
    parts_s: list[np.ndarray] = []
    saturated = np.zeros(n_queries, dtype=bool)  # [n_queries]
    for start, rows, cols, sims, block_sat in blocks:
        n_rows = min(block_size, n_queries - start)
        rows, cols, sims, sat = _sort_and_cut(rows, cols, sims, n_rows, max_results)
        # blocked backends cut to the budget before yielding and report the flag themselves
        saturated[start : start + n_rows] = sat if block_sat is None else block_sat
        parts_q.append(rows + start)
        parts_x.append(cols)
        parts_s.append(sims)
        logger.debug("query block %d..%d: %d pairs", start, start + n_rows, rows.shape[0])

    found = FoundPairs(
        query_idx=np.concatenate(parts_q),
        index_idx=np.concatenate(parts_x),
        similarity=np.concatenate(parts_s).astype(np.float32, copy=False),
        saturated=saturated,
    )
    n_saturated = int(saturated.sum())
    if n_saturated:
        logger.warning(
            "%d of %d queries hit max_results_per_query=%d at min_similarity=%s; their results were cut to the top %d",
            n_saturated,
            n_queries,
            max_results,
            min_similarity,
            max_results,
        )
    logger.info(
        "find_pairs(backend=%s, device=%s): %d queries x %d index vectors -> %d pairs",
        backend,
        device,
        n_queries,
        x.shape[0],
        len(found),
    )
    return found


def find_pairs_by_id(
    query_ids: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray,
    query_vectors: np.ndarray,
    index_ids: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray,
    index_vectors: np.ndarray,
    min_similarity: float,
    max_results_per_query: int = 100,
    **kw: Any,
) -> tuple[pa.Table, list[str]]:
    """Finds near-duplicate listing pairs by id, canonical and without repeats.

    Runs :func:`find_pairs` and maps row numbers to listing ids. Each pair is
    reported once in canonical order ``listing_id_l < listing_id_r`` (Python
    string order, which equals Arrow's UTF-8 byte order); self pairs (same id on
    both sides) are dropped, and a pair found in both directions (queries are
    usually also in the index) keeps the larger of its two similarities.
    Because of the per-query budget, a pair of a saturated query may be missing
    or found in one direction only.

    Args:
        query_ids: [n_queries] listing ids (str, no nulls) of ``query_vectors``.
        query_vectors: float [n_queries, dim] L2-normalised embeddings.
        index_ids: [n_index] listing ids (str, no nulls) of ``index_vectors``.
        index_vectors: float [n_index, dim] L2-normalised embeddings.
        min_similarity: Inclusive similarity threshold in [-1, 1].
        max_results_per_query: Budget of hits kept per query (>= 1).
        **kw: Passed on to :func:`find_pairs` (``query_block_size``,
            ``backend``, ``device``).

    Returns:
        A tuple ``(pairs, saturated_ids)``: ``pairs`` is a pyarrow Table with
        columns ``listing_id_l: string, listing_id_r: string, similarity:
        float32`` sorted by (listing_id_l, listing_id_r); ``saturated_ids`` lists
        the query ids whose results were cut by the budget, in query order
        without repeats.

    Raises:
        ValueError: On malformed ids (non-str, nulls, length not matching the
            vectors) or any argument error of :func:`find_pairs`.

    Examples:
        >>> import numpy as np
        >>> x = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
        >>> pairs, saturated = find_pairs_by_id(["c", "a", "b"], x, ["c", "a", "b"], x, 0.6)
        >>> pairs.to_pylist()  # doctest: +NORMALIZE_WHITESPACE
        [{'listing_id_l': 'a', 'listing_id_r': 'b', 'similarity': 0.800000011920929},
         {'listing_id_l': 'a', 'listing_id_r': 'c', 'similarity': 0.6000000238418579}]
        >>> saturated
        []
    """
    q_ids = as_id_array(query_ids, "query_ids")  # [n_queries]
    x_ids = as_id_array(index_ids, "index_ids")  # [n_index]
    q_rows = np.shape(query_vectors)[0] if np.ndim(query_vectors) >= 1 else None
    x_rows = np.shape(index_vectors)[0] if np.ndim(index_vectors) >= 1 else None
    if q_rows != q_ids.shape[0]:
        raise ValueError(
            f"query_ids has {q_ids.shape[0]} ids but query_vectors has {q_rows} rows; pass one id per vector row"
        )
    if x_rows != x_ids.shape[0]:
        raise ValueError(
            f"index_ids has {x_ids.shape[0]} ids but index_vectors has {x_rows} rows; pass one id per vector row"
        )
    found = find_pairs(query_vectors, index_vectors, min_similarity, max_results_per_query=max_results_per_query, **kw)
    saturated_ids = list(dict.fromkeys(q_ids[found.saturated].tolist()))
    if len(found) == 0:
        return PAIRS_SCHEMA.empty_table(), saturated_ids

    # integer codes in string order: code comparisons == id comparisons
    uniq, codes = np.unique(np.concatenate([q_ids, x_ids]), return_inverse=True)  # [n_uniq], [nq+nx]
    codes = codes.astype(np.int64)
    a = codes[: q_ids.shape[0]][found.query_idx]  # [n_pairs]
    b = codes[q_ids.shape[0] :][found.index_idx]  # [n_pairs]
    sims = found.similarity  # [n_pairs]
    not_self = a != b
    a, b, sims = a[not_self], b[not_self], sims[not_self]
    lo, hi = np.minimum(a, b), np.maximum(a, b)  # [n_pairs]
    key = lo * np.int64(uniq.shape[0]) + hi  # [n_pairs] unique per canonical pair
    order = np.lexsort((-sims, key))  # by key, best similarity first
    key, lo, hi, sims = key[order], lo[order], hi[order], sims[order]
    first = np.ones(key.shape[0], dtype=bool)
    first[1:] = key[1:] != key[:-1]
    lo, hi, sims = lo[first], hi[first], sims[first]  # [n_unique_pairs]
    pairs = pa.table(
        {
            "listing_id_l": pa.array(uniq[lo].tolist(), type=pa.string()),
            "listing_id_r": pa.array(uniq[hi].tolist(), type=pa.string()),
            "similarity": pa.array(sims, type=pa.float32()),
        },
        schema=PAIRS_SCHEMA,
    )
    logger.info(
        "find_pairs_by_id: %d raw pairs -> %d canonical pairs, %d saturated queries",
        len(found),
        pairs.num_rows,
        len(saturated_ids),
    )
    return pairs, saturated_ids
