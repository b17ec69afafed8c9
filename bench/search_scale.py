"""Search at scale: the per-supplier exact search against one global faiss self-join (CPU).

    .venv/bin/python bench/search_scale.py    # 1,000,000 listings, 10,000 suppliers; writes
                                              # bench/results/search_scale.json and its table in bench/README.md

Data (synthetic, seeded): ``--listings`` random normal vectors of the stored width ``--dim``,
normalised, sent through the stored float16 (``schemas.vectors.STORED_DTYPE``, what
``pack_vectors`` writes) and back to float32, renormalised: exactly what ``unpack_vectors`` gives
the search. Supplier sizes follow a power law (:func:`supplier_sizes` documents the rule), with the
``--giants`` largest forced to at least ``--giant-min`` listings. Random vectors of this width are
almost never ``--min-similarity`` alike, so the true pairs are the planted near-duplicates: in
each supplier about ``--planted-fraction`` of the listings are a copy of another listing of the
same supplier at a cosine similarity drawn from [0.95, 0.99].

Measured, with the same thread count for faiss, numpy and both BLAS libraries (``--threads``):

* per supplier: a loop over the suppliers calling ``dedup.search.find_pairs_by_id`` (what the
  pairs stage calls: every listing of a supplier queries its supplier's catalogue), and the same
  loop with ``dedup.search.find_pairs`` (search only, no ids);
* global: one ``faiss.IndexFlatIP`` over all listings and ``range_search`` at the same threshold
  for a random subsample of ``--global-queries`` queries; its time is scaled to every listing as
  a query (seconds x listings / subsample: each query is a full scan of the index, so the cost is
  linear in the number of queries);
* the GEMM peak: the best float32 ``numpy.matmul`` of ``--peak-size`` x dim x ``--peak-size``
  (the search's shape), in the same process;
* checks: recall of the planted pairs, the per-supplier pairs of ``--check-suppliers`` sampled
  suppliers (the largest among them) against a brute-force numpy product, and the global
  subsample's hits against the per-supplier pairs of the same queries.

The physical floor of the per-supplier search is sum over suppliers of n_s x n_s x dim x 2
FLOPs (every listing queries its whole catalogue); GFLOP/s = floor / per-supplier seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
log = logging.getLogger("bench.search_scale")
BEGIN, END = "<!-- search-scale:begin -->", "<!-- search-scale:end -->"

PLANTED_SIMILARITY = (0.95, 0.99)
"""Range of the cosine similarity of a planted copy to its base listing (before float16)."""

TARGET_SPEED_RATIO = 10.0
"""The scale issue's target: per-supplier search at least this many times faster than global."""


# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #


def supplier_sizes(total: int, suppliers: int, alpha: float, giants: int, giant_min: int) -> np.ndarray:
    """Supplier catalogue sizes from a power law, the largest forced to giant size.

    The rule: supplier of rank r (1 = largest) has weight r ** -alpha. The ``giants`` first
    ranks get max(giant_min, round(total x their weight share)). Every other supplier gets one
    listing plus its weight's share (among the non-giants) of what is left, rounded down, the
    last few listings going to the largest remainders, so the sizes sum to ``total`` exactly.

    Args:
        total: Listings over all suppliers.
        suppliers: Number of suppliers (>= giants).
        alpha: Power-law exponent (> 0; 1.0 is Zipf).
        giants: How many of the largest suppliers are forced to >= giant_min.
        giant_min: Least size of a giant.

    Returns:
        int64 [suppliers] sizes in rank order, each >= 1, summing to ``total``.

    Raises:
        ValueError: When ``total`` cannot hold the giants and one listing per other supplier.
    """
    if suppliers < 1 or giants < 0 or giants > suppliers or alpha <= 0:
        raise ValueError(
            f"need suppliers >= 1, 0 <= giants <= suppliers, alpha > 0; got {suppliers}, {giants}, {alpha}"
        )
    weights = np.arange(1, suppliers + 1, dtype=np.float64) ** -alpha  # [suppliers]
    share = total * weights / weights.sum()  # [suppliers]
    sizes = np.zeros(suppliers, dtype=np.int64)
    sizes[:giants] = np.maximum(giant_min, np.rint(share[:giants]).astype(np.int64))
    left = total - int(sizes[:giants].sum()) - (suppliers - giants)
    if left < 0:
        raise ValueError(
            f"{total} listings cannot hold {giants} giants of >= {giant_min} and one listing for each of "
            f"the other {suppliers - giants} suppliers; raise --listings or lower --giants / --giant-min"
        )
    rest = weights[giants:] / weights[giants:].sum() * left  # [suppliers - giants]
    extra = np.floor(rest).astype(np.int64)
    short = left - int(extra.sum())
    extra[np.argsort(-(rest - extra), kind="stable")[:short]] += 1
    sizes[giants:] = 1 + extra
    return sizes


def make_listings(
    sizes: np.ndarray, dim: int, planted_fraction: float, seed: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vectors grouped by supplier, with planted near-duplicates, as stored.

    Listings are laid out supplier after supplier (supplier s owns rows
    ``offsets[s]:offsets[s] + sizes[s]``). In each supplier, ``Binomial(n_s // 2,
    2 x planted_fraction)`` random listings get a copy: another random listing of the same
    supplier is replaced by ``c x base + sqrt(1 - c^2) x u`` (u a random unit vector orthogonal
    to the base, c uniform in ``PLANTED_SIMILARITY``). Then every vector goes through float16
    and back to float32 and is renormalised (what the stored vectors give the search).

    Args:
        sizes: int [suppliers] catalogue sizes.
        dim: Vector width.
        planted_fraction: Expected share of listings that are a planted copy (0 <= f <= 0.5).
        seed: Random seed.
        chunk: Rows generated at a time.

    Returns:
        (vectors float32 [n, dim] unit rows, planted int64 [n_planted, 2] (base, copy) rows,
        base < copy not implied).
    """
    rng = np.random.default_rng(seed)
    n = int(sizes.sum())
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = vectors[start : start + chunk]  # [b, dim] view
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block /= np.linalg.norm(block, axis=1, keepdims=True)

    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # [suppliers]
    supplier_of = np.repeat(np.arange(sizes.shape[0]), sizes)  # [n]
    pairs_per = rng.binomial(sizes // 2, min(1.0, 2.0 * planted_fraction))  # [suppliers]
    # listings of each supplier in random order: ranks [0, p) are bases, [p, 2p) their copies
    order = np.lexsort((rng.random(n), supplier_of))  # [n], grouped by supplier
    rank = np.arange(n) - offsets[supplier_of[order]]  # [n] rank inside the supplier
    is_base = rank < pairs_per[supplier_of[order]]  # [n]
    base_pos = np.flatnonzero(is_base)  # [n_planted] positions in order
    copy_pos = base_pos + pairs_per[supplier_of[order[base_pos]]]
    base, copy = order[base_pos], order[copy_pos]  # [n_planted], [n_planted]

    for start in range(0, base.shape[0], chunk):
        b_rows, c_rows = base[start : start + chunk], copy[start : start + chunk]
        b = vectors[b_rows]  # [m, dim]
        u = rng.standard_normal(b.shape, dtype=np.float32)  # [m, dim]
        u -= np.sum(u * b, axis=1, keepdims=True) * b
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = rng.uniform(*PLANTED_SIMILARITY, size=(b.shape[0], 1)).astype(np.float32)  # [m, 1]
        vectors[c_rows] = c * b + np.sqrt(1.0 - c * c) * u

    for start in range(0, n, chunk):
        vectors[start : start + chunk] = stored_round_trip(vectors[start : start + chunk])
    return vectors, np.stack([base, copy], axis=1).astype(np.int64)


def stored_round_trip(rows: np.ndarray) -> np.ndarray:
    """float32 [n, dim] unit rows as the search sees them once stored: through float16
    (``schemas.vectors.STORED_DTYPE``) and back, renormalised in float32 (= ``unpack_vectors(pack_vectors(rows))``)."""
    from schemas.vectors import STORED_DTYPE

    out = np.asarray(rows).astype(STORED_DTYPE).astype(np.float32)  # [n, dim]
    norms = np.linalg.norm(out, axis=1, keepdims=True)  # [n, 1]
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def listing_ids(n: int) -> list[str]:
    """Zero-padded decimal ids ``0..n-1`` (string order == row order, castable to int)."""
    width = len(str(max(n - 1, 0)))
    return [f"{i:0{width}d}" for i in range(n)]


def pair_keys(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique int64 keys ``lo x n + hi`` of unordered row pairs, self pairs dropped."""
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    keep = left != right
    lo, hi = np.minimum(left, right)[keep], np.maximum(left, right)[keep]
    return np.unique(lo * np.int64(n) + hi)


# --------------------------------------------------------------------------- #
# measurements
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def pinned_threads(threads: int):
    """Sets faiss's OpenMP threads and every BLAS pool (numpy's and faiss's) to ``threads`` inside."""
    import faiss

    faiss.omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with the project's dependencies
        log.warning("threadpoolctl is not installed: numpy's BLAS threads are not pinned")
        yield
        return
    with threadpool_limits(limits=threads):
        yield


def blas_info() -> list[dict]:
    """The BLAS / OpenMP libraries loaded in this process (threadpoolctl), or [] without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    keys = ("internal_api", "prefix", "version", "num_threads", "architecture", "threading_layer")
    return [{k: lib.get(k) for k in keys if k in lib} for lib in threadpool_info()]


def gemm_peak_gflops(m: int, k: int, n: int, repeats: int, seed: int = 0) -> float:
    """Best float32 GFLOP/s of ``numpy.matmul`` of [m, k] x [k, n] over ``repeats`` timed runs (after one warm-up)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2.0 * m * k * n / best / 1e9


def per_supplier_search(
    vectors: np.ndarray,
    ids: list[str],
    sizes: np.ndarray,
    min_similarity: float,
    max_results_per_query: int,
    by_id: bool,
) -> tuple[float, np.ndarray, int]:
    """Times the project's search supplier by supplier (each supplier's listings query its catalogue).

    Args:
        vectors: float32 [n, dim] unit rows, grouped by supplier.
        ids: [n] listing ids of the rows (zero-padded row numbers, see :func:`listing_ids`).
        sizes: int [suppliers] catalogue sizes (row blocks of ``vectors``).
        min_similarity: Inclusive similarity threshold.
        max_results_per_query: The per-query budget.
        by_id: True: ``find_pairs_by_id`` (what the pairs stage calls); False: ``find_pairs``.

    Returns:
        (wall seconds of the loop, sorted unique pair keys (see :func:`pair_keys`) over all
        suppliers, number of saturated queries).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from dedup.search import find_pairs, find_pairs_by_id

    n = vectors.shape[0]
    offsets = np.concatenate(([0], np.cumsum(sizes)))  # [suppliers + 1]
    outputs: list = []
    saturated = 0
    search_log = logging.getLogger("dedup.search")
    level = search_log.level
    search_log.setLevel(logging.WARNING)  # one info line per supplier otherwise; budget warnings stay
    try:
        started = time.perf_counter()
        for s in range(sizes.shape[0]):
            lo, hi = int(offsets[s]), int(offsets[s + 1])
            rows = vectors[lo:hi]  # [n_s, dim] view
            if by_id:
                block_ids = ids[lo:hi]
                pairs, sat_ids = find_pairs_by_id(
                    block_ids, rows, block_ids, rows, min_similarity, max_results_per_query
                )
                outputs.append(pairs)
                saturated += len(sat_ids)
            else:
                found = find_pairs(rows, rows, min_similarity, max_results_per_query)
                outputs.append((lo, found.query_idx, found.index_idx))
                saturated += int(found.saturated.sum())
            if s and s % 2000 == 0:
                log.info("  %d / %d suppliers, %.1f s", s, sizes.shape[0], time.perf_counter() - started)
        seconds = time.perf_counter() - started
    finally:
        search_log.setLevel(level)

    if by_id:
        table = pa.concat_tables(outputs)
        left = pc.cast(table.column("listing_id_l"), pa.int64()).to_numpy()
        right = pc.cast(table.column("listing_id_r"), pa.int64()).to_numpy()
    else:
        left = np.concatenate([lo + q for lo, q, _ in outputs])
        right = np.concatenate([lo + x for lo, _, x in outputs])
    return seconds, pair_keys(left, right, n), saturated


def brute_force_pairs(
    rows: np.ndarray, min_similarity: float, max_results_per_query: int, block: int = 2048
) -> tuple[np.ndarray, int]:
    """Every pair of ``rows`` with similarity >= ``min_similarity`` by a blocked numpy product.

    The threshold is the project's float32 one (``min_similarity`` rounded up to float32).

    Args:
        rows: float32 [n, dim] unit rows (one supplier's catalogue).
        min_similarity: Inclusive similarity threshold.
        max_results_per_query: The per-query budget (only counted, never applied).
        block: Query rows per product.

    Returns:
        (sorted unique pair keys over local row numbers (see :func:`pair_keys`), number of
        queries with more hits, self included, than ``max_results_per_query``).
    """
    from dedup.search import _float32_threshold

    thr = _float32_threshold(min_similarity)
    n = rows.shape[0]
    left, right = [], []
    saturated = 0
    for start in range(0, n, block):
        hit = (rows[start : start + block] @ rows.T) >= thr  # [b, n]
        saturated += int((hit.sum(axis=1) > max_results_per_query).sum())
        q, x = np.nonzero(hit)
        left.append(q + start)
        right.append(x)
    return pair_keys(np.concatenate(left), np.concatenate(right), n), saturated


def global_range_search(
    vectors: np.ndarray, queries: np.ndarray, min_similarity: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Times one faiss ``IndexFlatIP.range_search`` of ``vectors[queries]`` against all ``vectors``.

    The radius is the project's (``find_pairs``): the float32 just below the float32 threshold,
    since faiss keeps similarities strictly above the radius.

    Args:
        vectors: float32 [n, dim] unit rows (the whole index).
        queries: int64 [q] rows used as queries.
        min_similarity: Inclusive similarity threshold.

    Returns:
        (wall seconds of the range search alone (not the index build), query rows int64 [hits],
        index rows int64 [hits]).
    """
    import faiss

    from dedup.search import _float32_threshold

    thr = _float32_threshold(min_similarity)
    radius = float(np.nextafter(thr, np.float32(-np.inf)))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    xq = np.ascontiguousarray(vectors[queries])  # [q, dim]
    index.range_search(xq[: min(16, xq.shape[0])], radius)  # warm-up (thread pools)
    started = time.perf_counter()
    lims, _, cols = index.range_search(xq, radius)  # [q+1], [hits], [hits]
    seconds = time.perf_counter() - started
    q_rows = np.repeat(queries, np.diff(lims.astype(np.int64)))  # [hits]
    return seconds, q_rows, cols.astype(np.int64)


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #


def markdown(report: dict) -> str:
    """The results table and a short explanation, as markdown."""
    p, r, d = report["parameters"], report["results"], report["data"]
    per, only, glob = r["per_supplier"], r["per_supplier_search_only"], r["global"]
    peak = r["gemm_peak"]["gflops"]
    header = (
        f"| search ({d['listings']:,} listings, {d['suppliers']:,} suppliers, dim {p['dim']}, "
        f"min_similarity {p['min_similarity']}) | seconds | GFLOP/s | of GEMM peak | speed vs global |"
    )
    row_by_id = (
        f"| per supplier, `find_pairs_by_id` | {per['seconds']:.1f} | {per['gflops']:.1f} | "
        f"{per['fraction_of_peak']:.2f} | {r['speed_ratio']:.1f}x |"
    )
    row_only = (
        f"| per supplier, `find_pairs` (search only) | {only['seconds']:.1f} | {only['gflops']:.1f} | "
        f"{only['fraction_of_peak']:.2f} | {r['speed_ratio_search_only']:.1f}x |"
    )
    row_global = (
        f"| global `IndexFlatIP.range_search` (scaled from {glob['queries_timed']:,} queries) | "
        f"{glob['seconds_scaled']:.0f} | {glob['gflops']:.1f} | {glob['fraction_of_peak']:.2f} | 1.0x |"
    )
    row_peak = f"| GEMM peak (`numpy.matmul` {r['gemm_peak']['shape']}) | | {peak:.1f} | 1.00 | |"
    recall, exact = r["planted_recall"], r["exactness"]
    target = "met" if r["target"]["met"] else "NOT met"
    what = (
        f"Command: `{report['command']}` ({report['machine']['cpus']} CPUs, {p['threads']} threads for faiss and "
        f"BLAS, total {report['total_s']:.0f} s). Per supplier: every listing of a supplier queries its "
        "supplier's catalogue with the project's exact search, supplier after supplier, at the per-query budget "
        f"{p['max_results_per_query']} ({per['saturated_queries']} queries saturated). GFLOP/s = physical floor "
        f"sum n_s x n_s x dim x 2 ({per['floor_gflop']:,.0f} GFLOP; largest supplier {d['largest_suppliers'][0]:,}) "
        "over the loop's wall time."
    )
    scaling = (
        f"The global baseline is one faiss `IndexFlatIP` over all {d['listings']:,} listings; `range_search` of a "
        f"random {glob['queries_timed']:,}-query subsample took {glob['seconds_timed']:.1f} s, scaled to all "
        f"{glob['total_queries']:,} queries (x {glob['total_queries'] / glob['queries_timed']:.0f}, linear: each "
        "query is a full scan); the index build is not counted."
    )
    verdict = (
        f"Target speed ratio >= {TARGET_SPEED_RATIO:.0f}x: {target} ({r['speed_ratio']:.1f}x). Planted-pair recall "
        f"{recall['recall']:.4f} ({recall['found']:,} / {recall['planted']:,}); the pairs of "
        f"{len(exact['suppliers'])} sampled suppliers (largest {exact['suppliers'][0]['size']:,}) equal a "
        f"brute-force numpy product: {exact['all_exact']}; the global subsample's hits equal the per-supplier "
        f"pairs of those queries: {glob['agrees_with_per_supplier']} ({glob['cross_supplier_hits']} cross-supplier "
        "hits)."
    )
    lines = [header, "|---|---:|---:|---:|---:|", row_by_id, row_only, row_global, row_peak, "", what, scaling, verdict]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code (0 done and checks passed, 1 a check failed, 2 bad arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listings", type=int, default=1_000_000, help="listings over all suppliers")
    parser.add_argument("--suppliers", type=int, default=10_000, help="number of suppliers")
    parser.add_argument("--dim", type=int, default=256, help="stored vector width")
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and samples")
    parser.add_argument("--min-similarity", type=float, default=0.9, help="inclusive cosine similarity threshold")
    parser.add_argument("--max-results-per-query", type=int, default=50, help="per-query budget (conf: 50)")
    parser.add_argument("--alpha", type=float, default=1.0, help="power-law exponent of supplier sizes")
    parser.add_argument("--giants", type=int, default=3, help="largest suppliers forced to --giant-min")
    parser.add_argument("--giant-min", type=int, default=50_000, help="least size of a giant supplier")
    parser.add_argument("--planted-fraction", type=float, default=0.05, help="share of listings that are copies")
    parser.add_argument("--global-queries", type=int, default=2000, help="query subsample of the global search")
    parser.add_argument("--check-suppliers", type=int, default=20, help="suppliers checked by brute force")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for faiss and BLAS")
    parser.add_argument("--peak-size", type=int, default=4096, help="GEMM peak: [size, dim] x [dim, size]")
    parser.add_argument("--peak-repeats", type=int, default=10, help="GEMM peak: timed runs (best)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_scale.json"))
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"), help="'' = no table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    positive = ("listings", "suppliers", "dim", "max_results_per_query", "global_queries", "check_suppliers")
    positive += ("threads", "peak_size", "peak_repeats")
    if any(getattr(args, name) < 1 for name in positive):
        log.error("--%s must be >= 1", "/--".join(n.replace("_", "-") for n in positive))
        return 2
    if not 0.0 <= args.planted_fraction <= 0.5 or not -1.0 <= args.min_similarity <= PLANTED_SIMILARITY[0] - 0.01:
        log.error("--planted-fraction must be in [0, 0.5] and --min-similarity in [-1, %.2f]", PLANTED_SIMILARITY[0])
        return 2
    try:
        sizes = supplier_sizes(args.listings, args.suppliers, args.alpha, args.giants, args.giant_min)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    import faiss

    begun = time.perf_counter()
    load_before = os.getloadavg()
    with pinned_threads(args.threads):
        started = time.perf_counter()
        vectors, planted = make_listings(sizes, args.dim, args.planted_fraction, args.seed)
        ids = listing_ids(vectors.shape[0])
        generation_s = time.perf_counter() - started
        n, dim = vectors.shape
        planted_sims = np.sum(vectors[planted[:, 0]] * vectors[planted[:, 1]], axis=1)  # [n_planted]
        floor_flop = float(np.sum(sizes.astype(np.float64) ** 2)) * dim * 2
        log.info(
            "data: %d listings, %d suppliers (largest %s), %d planted pairs, %.1f s; floor %.0f GFLOP",
            n,
            sizes.shape[0],
            sizes[:5].tolist(),
            planted.shape[0],
            generation_s,
            floor_flop / 1e9,
        )

        peak = gemm_peak_gflops(args.peak_size, dim, args.peak_size, args.peak_repeats, args.seed)
        log.info("GEMM peak (numpy.matmul %dx%dx%d): %.1f GFLOP/s", args.peak_size, dim, args.peak_size, peak)

        from dedup.search import find_pairs

        find_pairs(vectors[:64], vectors[:64], args.min_similarity)  # warm-up (thread pools)
        log.info("per supplier, find_pairs_by_id ...")
        by_id_s, found, saturated = per_supplier_search(
            vectors, ids, sizes, args.min_similarity, args.max_results_per_query, by_id=True
        )
        log.info("per supplier, find_pairs_by_id: %.1f s, %d pairs, %d saturated", by_id_s, found.size, saturated)
        log.info("per supplier, find_pairs ...")
        only_s, found_only, saturated_only = per_supplier_search(
            vectors, ids, sizes, args.min_similarity, args.max_results_per_query, by_id=False
        )
        log.info("per supplier, find_pairs: %.1f s, %d pairs", only_s, found_only.size)

        planted_keys = pair_keys(planted[:, 0], planted[:, 1], n)
        planted_found = int(np.isin(planted_keys, found).sum())

        rng = np.random.default_rng(args.seed + 1)
        offsets = np.concatenate(([0], np.cumsum(sizes)))
        checked = [0] + sorted(
            rng.choice(np.arange(1, sizes.shape[0]), min(args.check_suppliers, sizes.shape[0]) - 1, replace=False)
        )
        exactness = []
        for s in checked:
            lo, hi = int(offsets[s]), int(offsets[s + 1])
            brute, brute_saturated = brute_force_pairs(vectors[lo:hi], args.min_similarity, args.max_results_per_query)
            mine = found[(found >= lo * n) & (found < hi * n)]
            local = (mine // n - lo) * (hi - lo) + (mine % n - lo)  # same key over local rows
            exactness.append(
                {
                    "supplier": int(s),
                    "size": hi - lo,
                    "brute_force_pairs": int(brute.size),
                    "found_pairs": int(local.size),
                    "brute_force_saturated_queries": brute_saturated,
                    "exact": bool(np.array_equal(brute, local)),
                }
            )
        log.info(
            "exactness on %d suppliers (largest %d): %s",
            len(exactness),
            exactness[0]["size"],
            all(e["exact"] for e in exactness),
        )

        q = min(args.global_queries, n)
        queries = np.sort(rng.choice(n, q, replace=False))
        log.info("global range_search of %d queries against %d listings ...", q, n)
        global_s, q_rows, x_rows = global_range_search(vectors, queries, args.min_similarity)
        supplier_of = np.repeat(np.arange(sizes.shape[0]), sizes)
        cross = int(np.sum(supplier_of[q_rows] != supplier_of[x_rows]))
        global_keys = pair_keys(q_rows, x_rows, n)
        touched = np.isin(found // n, queries) | np.isin(found % n, queries)
        agrees = bool(np.array_equal(global_keys, found[touched]))
        global_scaled = global_s * n / q
        log.info("global: %.2f s for %d queries -> %.0f s scaled to %d", global_s, q, global_scaled, n)
    load_after = os.getloadavg()

    def side(seconds: float, function: str, sat: int, pairs: int) -> dict:
        gflops = floor_flop / seconds / 1e9
        return {
            "function": function,
            "seconds": round(seconds, 3),
            "floor_gflop": round(floor_flop / 1e9, 1),
            "gflops": round(gflops, 2),
            "fraction_of_peak": round(gflops / peak, 4),
            "saturated_queries": sat,
            "pairs": pairs,
        }

    global_gflops = q * n * dim * 2 / global_s / 1e9
    ratio = global_scaled / by_id_s
    report = {
        "command": " ".join(["python bench/search_scale.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model() or platform.processor(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "blas": blas_info(),
            "load_average_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "parameters": {
            "listings": args.listings,
            "suppliers": args.suppliers,
            "dim": args.dim,
            "seed": args.seed,
            "min_similarity": args.min_similarity,
            "max_results_per_query": args.max_results_per_query,
            "alpha": args.alpha,
            "giants": args.giants,
            "giant_min": args.giant_min,
            "planted_fraction": args.planted_fraction,
            "planted_similarity_range": list(PLANTED_SIMILARITY),
            "global_queries": q,
            "check_suppliers": len(checked),
            "threads": args.threads,
            "size_rule": (
                "rank r has weight r**-alpha; the `giants` first ranks get max(giant_min, round(total x share)), "
                "every other supplier 1 + its share of the rest (floor, largest remainders), summing to total"
            ),
            "stored_round_trip": "float32 -> float16 (schemas.vectors.STORED_DTYPE) -> float32, renormalised",
        },
        "data": {
            "listings": n,
            "suppliers": int(sizes.shape[0]),
            "largest_suppliers": sizes[:5].tolist(),
            "median_supplier": float(np.median(sizes)),
            "smallest_supplier": int(sizes.min()),
            "sum_of_squared_sizes": int(np.sum(sizes.astype(np.int64) ** 2)),
            "planted_pairs": int(planted.shape[0]),
            "planted_similarity_min_max": [round(float(planted_sims.min()), 5), round(float(planted_sims.max()), 5)],
            "generation_s": round(generation_s, 2),
        },
        "results": {
            "per_supplier": side(by_id_s, "dedup.search.find_pairs_by_id", saturated, int(found.size)),
            "per_supplier_search_only": side(only_s, "dedup.search.find_pairs", saturated_only, int(found_only.size)),
            "per_supplier_functions_agree": bool(np.array_equal(found, found_only)),
            "global": {
                "method": "faiss.IndexFlatIP over all listings, range_search at the same threshold",
                "queries_timed": q,
                "total_queries": n,
                "seconds_timed": round(global_s, 3),
                "seconds_scaled": round(global_scaled, 1),
                "scaling": "seconds_timed x total_queries / queries_timed (each query is a full scan: linear)",
                "excludes": "building the index (IndexFlatIP.add)",
                "gflops": round(global_gflops, 2),
                "fraction_of_peak": round(global_gflops / peak, 4),
                "agrees_with_per_supplier": agrees,
                "cross_supplier_hits": cross,
            },
            "speed_ratio": round(ratio, 2),
            "speed_ratio_search_only": round(global_scaled / only_s, 2),
            "target": {"speed_ratio_min": TARGET_SPEED_RATIO, "met": bool(ratio >= TARGET_SPEED_RATIO)},
            "planted_recall": {
                "planted": int(planted_keys.size),
                "found": planted_found,
                "recall": round(planted_found / max(planted_keys.size, 1), 6),
            },
            "exactness": {"all_exact": all(e["exact"] for e in exactness), "suppliers": exactness},
            "gemm_peak": {
                "shape": f"{args.peak_size}x{dim}x{args.peak_size}",
                "library": "numpy.matmul (numpy's OpenBLAS), best of repeats",
                "gflops": round(peak, 2),
            },
        },
    }
    report["total_s"] = round(time.perf_counter() - begun, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    table = markdown(report)
    if args.readme:
        from evaluation.report import update_readme

        update_readme(Path(args.readme), table.strip(), BEGIN, END)
    log.info("wrote %s\n%s", args.out, table)
    checks = {
        "planted recall 1.0": planted_found == planted_keys.size,
        "sampled suppliers exact": report["results"]["exactness"]["all_exact"],
        "global agrees": agrees,
        "find_pairs and find_pairs_by_id agree": report["results"]["per_supplier_functions_agree"],
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        log.error("checks failed: %s", ", ".join(failed))
        return 1
    return 0


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or '' where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    sys.exit(main())
