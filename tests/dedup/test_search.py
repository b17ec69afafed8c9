"""Tests for dedup.search: exact range search against a brute-force numpy oracle."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

from dedup.search import FoundPairs, find_pairs, find_pairs_by_id

logger = logging.getLogger(__name__)

SEED = 20_240_611

BACKENDS = [
    pytest.param("faiss", "cpu", id="faiss-cpu"),
    pytest.param("blocked", "cpu", id="blocked-numpy"),
    pytest.param("blocked", "torch:cpu", id="blocked-torch-cpu"),
]


def _rng(*salt: int) -> np.random.Generator:
    seed = [SEED, *salt]
    logger.info("random seed %s", seed)
    return np.random.default_rng(seed)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # [n, d]


def _make_data(rng: np.random.Generator, n_queries: int, n_index: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vectors; every third query is a noisy copy of an index vector,
    and a few index vectors come in near-duplicate bunches."""
    index = rng.standard_normal((n_index, dim))  # [n_index, d]
    bunch_src = rng.integers(0, n_index, size=n_index // 10)
    for _k, src in enumerate(bunch_src):  # near-duplicate bunches inside the index
        dst = rng.integers(0, n_index, size=3)
        index[dst] = index[src] + 0.05 * rng.standard_normal((3, dim))
    index = _normalise(index)
    queries = rng.standard_normal((n_queries, dim))  # [n_queries, d]
    planted = np.arange(0, n_queries, 3)
    src = rng.integers(0, n_index, size=planted.shape[0])
    noise = rng.uniform(0.01, 0.6, size=(planted.shape[0], 1))
    queries[planted] = index[src] + noise * rng.standard_normal((planted.shape[0], dim)) / np.sqrt(dim)
    return _normalise(queries), index


def _gap_threshold(sims: np.ndarray, target: float, margin: float = 1e-4) -> float:
    """A threshold near ``target`` with no similarity within ``margin`` (no float ties)."""
    values = np.sort(sims.ravel())
    for t in np.linspace(target, target + 0.1, 1001):
        pos = np.searchsorted(values, t)
        near = values[max(pos - 1, 0) : pos + 1]
        if near.size == 0 or np.min(np.abs(near - t)) > margin:
            return float(t)
    raise AssertionError("no threshold gap found; change the data")


def _oracle(queries: np.ndarray, index: np.ndarray, thr: float) -> dict[tuple[int, int], float]:
    sims = queries.astype(np.float64) @ index.astype(np.float64).T  # [n_queries, n_index]
    rows, cols = np.nonzero(sims >= thr)
    return {(int(r), int(c)): float(sims[r, c]) for r, c in zip(rows, cols, strict=True)}


def _assert_sorted(found: FoundPairs) -> None:
    order = np.lexsort((found.index_idx, -found.similarity, found.query_idx))
    np.testing.assert_array_equal(order, np.arange(len(found)))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "n_queries,n_index,dim,block",
    [
        pytest.param(40, 60, 4, 7, id="q40-x60-d4"),
        pytest.param(150, 300, 16, 64, id="q150-x300-d16"),
        pytest.param(90, 500, 64, 4096, id="q90-x500-d64-one-block"),
    ],
)
def test_find_pairs_matches_brute_force(backend, device, n_queries, n_index, dim, block):
    rng = _rng(n_queries, n_index, dim)
    queries, index = _make_data(rng, n_queries, n_index, dim)
    sims = queries.astype(np.float64) @ index.astype(np.float64).T
    thr = _gap_threshold(sims, target=0.5 if dim <= 4 else 0.3)
    expected = _oracle(queries, index, thr)
    assert 0 < len(expected) < sims.size  # the test is not vacuous

    found = find_pairs(
        queries,
        index,
        thr,
        max_results_per_query=n_index,
        query_block_size=block,
        backend=backend,
        device=device,
    )

    assert found.query_idx.dtype == np.int64 and found.index_idx.dtype == np.int64
    assert found.similarity.dtype == np.float32 and found.saturated.dtype == np.bool_
    assert found.saturated.shape == (n_queries,) and not found.saturated.any()
    got = {
        (int(q), int(j)): float(s) for q, j, s in zip(found.query_idx, found.index_idx, found.similarity, strict=True)
    }
    assert len(got) == len(found)  # no duplicate pairs
    assert set(got) == set(expected)
    keys = sorted(expected)
    np.testing.assert_allclose([got[k] for k in keys], [expected[k] for k in keys], atol=1e-5)
    _assert_sorted(found)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_find_pairs_threshold_is_inclusive(backend, device):
    s = np.float32(0.7)  # 0.699999988..., just below the float64 0.7
    below = np.nextafter(s, np.float32(-np.inf))
    above = np.nextafter(s, np.float32(np.inf))  # 0.70000005, just above 0.7

    def unit_with_first(c: np.float32) -> list[float]:
        return [float(c), float(np.sqrt(1.0 - float(c) ** 2)), 0.0, 0.0]

    query = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)  # dot with row = first component, exact
    index = np.array([unit_with_first(below), unit_with_first(s), unit_with_first(above)], dtype=np.float32)
    assert np.float32(query[0] @ index[1]) == s  # the constructed inner product is exact

    found = find_pairs(query, index, float(s), backend=backend, device=device)
    assert found.index_idx.tolist() == [2, 1]  # exactly-at-threshold pair kept, below dropped
    assert found.similarity.tolist() == [float(above), float(s)]

    # a float64 threshold is compared exactly: float32(0.7) < 0.7 is not a hit
    found = find_pairs(query, index, 0.7, backend=backend, device=device)
    assert found.index_idx.tolist() == [2]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_find_pairs_budget_keeps_top_hits_and_flags(backend, device, caplog):
    dim = 8
    angles = np.linspace(0.05, 0.6, 20)  # distinct similarities cos(angle) for query 0
    index = np.zeros((30, dim), dtype=np.float64)
    index[:20, 0] = np.cos(angles)
    index[:20, 1] = np.sin(angles)
    index[20:22, 2] = 1.0  # two hits for query 1
    index[22:, 3:6] = _rng(1).standard_normal((8, 3))  # far away from all queries
    index = _normalise(index)
    perm = _rng(2).permutation(30)  # the best hits are not simply the lowest indices
    index = index[perm]
    queries = np.eye(dim, dtype=np.float32)[[0, 2, 7]]  # query 2: no hits at all
    sims = queries.astype(np.float64) @ index.astype(np.float64).T

    with caplog.at_level(logging.WARNING, logger="dedup.search"):
        found = find_pairs(
            queries, index, 0.5, max_results_per_query=5, query_block_size=2, backend=backend, device=device
        )

    assert found.saturated.tolist() == [True, False, False]
    q0 = found.query_idx == 0
    assert q0.sum() == 5
    expected_top = np.argsort(-sims[0], kind="stable")[:5]
    assert found.index_idx[q0].tolist() == expected_top.tolist()
    assert sorted(found.index_idx[found.query_idx == 1].tolist()) == sorted(np.flatnonzero(sims[1] >= 0.5).tolist())
    assert (found.query_idx == 2).sum() == 0
    assert any(r.levelno == logging.WARNING and "1 of 3 queries" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_find_pairs_budget_ties_break_by_lower_index(backend, device, caplog):
    dim = 4
    index = np.zeros((12, dim), dtype=np.float32)
    tied = [9, 3, 7, 1, 11]  # identical vectors: similarity exactly 1.0
    index[tied, 0] = 1.0
    index[[0, 2], 0] = 0.6
    index[[0, 2], 1] = 0.8
    index[[4, 5, 6, 8, 10], 2] = 1.0
    query = np.eye(dim, dtype=np.float32)[:1]
    found = find_pairs(query, index, 0.5, max_results_per_query=3, backend=backend, device=device)
    assert found.saturated.tolist() == [True]
    assert found.index_idx.tolist() == [1, 3, 7]
    assert found.similarity.tolist() == [1.0, 1.0, 1.0]

    found = find_pairs(query, index, 0.5, max_results_per_query=6, backend=backend, device=device)
    assert found.saturated.tolist() == [True]
    assert found.index_idx.tolist() == [1, 3, 7, 9, 11, 0]

    found = find_pairs(query, index, 0.5, max_results_per_query=7, backend=backend, device=device)
    assert found.saturated.tolist() == [False]
    assert found.index_idx.tolist() == [1, 3, 7, 9, 11, 0, 2]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_find_pairs_empty_inputs(backend, device):
    vectors = _normalise(_rng(3).standard_normal((5, 8)))
    empty = np.zeros((0, 8), dtype=np.float32)

    found = find_pairs(empty, vectors, 0.5, backend=backend, device=device)
    assert len(found) == 0 and found.saturated.shape == (0,)

    found = find_pairs(vectors, empty, 0.5, backend=backend, device=device)
    assert len(found) == 0
    assert found.saturated.tolist() == [False] * 5
    assert found.query_idx.dtype == np.int64 and found.similarity.dtype == np.float32


def test_find_pairs_accepts_float64_and_non_contiguous():
    rng = _rng(4)
    queries, index = _make_data(rng, 20, 40, 8)
    expected = find_pairs(queries, index, 0.4)
    found = find_pairs(np.asfortranarray(queries.astype(np.float64)), index[:, :].T.copy().T, 0.4)
    np.testing.assert_array_equal(found.query_idx, expected.query_idx)
    np.testing.assert_array_equal(found.index_idx, expected.index_idx)


def test_find_pairs_backends_agree_on_self_search():
    vectors = _make_data(_rng(5), 0, 400, 16)[1]
    results = [
        find_pairs(vectors, vectors, 0.6, max_results_per_query=400, query_block_size=100, backend=b, device=d)
        for b, d in [("faiss", "cpu"), ("blocked", "cpu"), ("blocked", "torch:cpu")]
    ]
    assert len(results[0]) > 400  # more than the diagonal
    for other in results[1:]:
        np.testing.assert_array_equal(other.query_idx, results[0].query_idx)
        np.testing.assert_array_equal(other.index_idx, results[0].index_idx)
        np.testing.assert_allclose(other.similarity, results[0].similarity, atol=1e-5)


@pytest.mark.parametrize(
    "queries,index,kwargs,message",
    [
        pytest.param(
            np.ones((2, 4)),
            np.ones((3, 5)),
            {},
            "queries have dimension 4 but index_vectors have dimension 5",
            id="dim-mismatch",
        ),
        pytest.param(np.ones(4), np.ones((3, 4)), {}, "queries must be a 2-D array", id="1d-queries"),
        pytest.param(np.ones((2, 4), dtype=np.int64), np.ones((3, 4)), {}, r"astype\(np\.float32\)", id="int-dtype"),
        pytest.param(np.full((2, 4), np.nan), np.ones((3, 4)), {}, "NaN or infinite", id="nan-vectors"),
        pytest.param(np.ones((2, 0)), np.ones((3, 0)), {}, "dimension 0", id="zero-dim"),
        pytest.param(
            np.ones((2, 4)),
            np.ones((3, 4)),
            {"min_similarity": 1.5},
            r"min_similarity must be a number in \[-1, 1\]",
            id="sim-too-high",
        ),
        pytest.param(np.ones((2, 4)), np.ones((3, 4)), {"min_similarity": -1.01}, r"in \[-1, 1\]", id="sim-too-low"),
        pytest.param(np.ones((2, 4)), np.ones((3, 4)), {"min_similarity": float("nan")}, r"in \[-1, 1\]", id="sim-nan"),
        pytest.param(np.ones((2, 4)), np.ones((3, 4)), {"min_similarity": "0.5"}, r"in \[-1, 1\]", id="sim-str"),
        pytest.param(
            np.ones((2, 4)),
            np.ones((3, 4)),
            {"max_results_per_query": 0},
            "max_results_per_query must be an integer >= 1",
            id="budget-0",
        ),
        pytest.param(
            np.ones((2, 4)),
            np.ones((3, 4)),
            {"query_block_size": 0},
            "query_block_size must be an integer >= 1",
            id="block-0",
        ),
        pytest.param(
            np.ones((2, 4)), np.ones((3, 4)), {"backend": "annoy"}, "backend must be one of", id="bad-backend"
        ),
        pytest.param(np.ones((2, 4)), np.ones((3, 4)), {"device": "cuda"}, "use backend='blocked'", id="faiss-on-cuda"),
        pytest.param(
            np.ones((2, 4)), np.ones((3, 4)), {"backend": "blocked", "device": "tpu"}, "device must be", id="bad-device"
        ),
    ],
)
def test_find_pairs_rejects_bad_arguments(queries, index, kwargs, message):
    kwargs = {"min_similarity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        find_pairs(queries, index, **kwargs)


def test_find_pairs_cuda_unavailable_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        find_pairs(np.ones((2, 4)), np.ones((3, 4)), 0.5, backend="blocked", device="cuda")


@pytest.mark.gpu
def test_find_pairs_cuda_matches_faiss():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    queries, index = _make_data(_rng(6), 300, 2000, 64)
    expected = find_pairs(queries, index, 0.3, max_results_per_query=7)
    found = find_pairs(
        queries, index, 0.3, max_results_per_query=7, backend="blocked", device="cuda", query_block_size=128
    )
    np.testing.assert_array_equal(found.saturated, expected.saturated)
    np.testing.assert_array_equal(found.query_idx, expected.query_idx)
    np.testing.assert_array_equal(found.index_idx, expected.index_idx)
    np.testing.assert_allclose(found.similarity, expected.similarity, atol=1e-5)


# --------------------------------------------------------------------------- #
# find_pairs_by_id
# --------------------------------------------------------------------------- #


def _pairs_oracle(q_ids, queries, x_ids, index, thr) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for (qi, xj), sim in _oracle(queries, index, thr).items():
        a, b = q_ids[qi], x_ids[xj]
        if a == b:
            continue
        key = (min(a, b), max(a, b))
        out[key] = max(sim, out.get(key, -2.0))
    return out


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_find_pairs_by_id_matches_brute_force(backend, device):
    rng = _rng(7)
    extra_q, index = _make_data(rng, 30, 250, 16)
    x_ids = [f"L{n:04d}" for n in rng.permutation(9000)[:250]]  # unsorted ids
    in_index = rng.choice(250, size=60, replace=False)
    queries = np.concatenate([index[in_index], extra_q])  # most queries are also in the index
    q_ids = [x_ids[i] for i in in_index] + [f"Q{n:03d}" for n in range(30)]
    sims = queries.astype(np.float64) @ index.astype(np.float64).T
    thr = _gap_threshold(sims, 0.35)
    expected = _pairs_oracle(q_ids, queries, x_ids, index, thr)

    pairs, saturated = find_pairs_by_id(
        pa.array(q_ids),
        queries,
        np.array(x_ids),
        index,
        thr,
        max_results_per_query=250,
        backend=backend,
        device=device,
        query_block_size=32,
    )

    assert pairs.schema == pa.schema(
        [("listing_id_l", pa.string()), ("listing_id_r", pa.string()), ("similarity", pa.float32())]
    )
    assert saturated == []
    left, right = pairs.column("listing_id_l").to_pylist(), pairs.column("listing_id_r").to_pylist()
    got = dict(zip(zip(left, right, strict=True), pairs.column("similarity").to_pylist(), strict=True))
    assert all(l < r for l, r in zip(left, right, strict=True))  # canonical, hence no self pairs
    assert len(got) == pairs.num_rows  # no duplicates
    assert list(zip(left, right, strict=True)) == sorted(got)
    assert len(expected) > 60 and set(got) == set(expected)
    keys = sorted(expected)
    np.testing.assert_allclose([got[k] for k in keys], [expected[k] for k in keys], atol=1e-5)


def test_find_pairs_by_id_reports_saturated_ids():
    index = np.zeros((6, 4), dtype=np.float32)
    index[:5, 0] = 1.0  # five identical listings
    index[5, 1] = 1.0
    ids = ["e", "d", "c", "b", "a", "z"]
    pairs, saturated = find_pairs_by_id(ids, index, ids, index, 0.9, max_results_per_query=2)
    assert saturated == ["e", "d", "c", "b", "a"]
    assert all(l < r for l, r in zip(pairs.column(0).to_pylist(), pairs.column(1).to_pylist(), strict=True))
    assert "z" not in set(pairs.column(0).to_pylist() + pairs.column(1).to_pylist())


def test_find_pairs_by_id_empty_and_bad_ids():
    vectors = np.eye(3, dtype=np.float32)
    pairs, saturated = find_pairs_by_id([], np.zeros((0, 3)), ["a", "b", "c"], vectors, 0.5)
    assert pairs.num_rows == 0 and pairs.schema.names == ["listing_id_l", "listing_id_r", "similarity"]
    assert saturated == []
    with pytest.raises(ValueError, match="query_ids has 2 ids but query_vectors has 3 rows"):
        find_pairs_by_id(["a", "b"], vectors, ["a", "b", "c"], vectors, 0.5)
    with pytest.raises(ValueError, match="only str ids"):
        find_pairs_by_id([1, 2, 3], vectors, ["a", "b", "c"], vectors, 0.5)
    with pytest.raises(ValueError, match="null ids"):
        find_pairs_by_id(pa.array(["a", None, "c"]), vectors, ["a", "b", "c"], vectors, 0.5)


def test_find_pairs_by_id_keeps_the_stronger_direction():
    # query vectors differ from the index vectors of the same ids (e.g. re-encoded listings),
    # so a -> b and b -> a have different similarities; the pair appears once with the larger one
    index = np.array([[1.0, 0.0], [0.8, 0.6]], dtype=np.float32)  # a, b
    queries = np.array([[0.6, 0.8], [0.6, 0.8]], dtype=np.float32)  # a', b'
    # a'.b = 0.96 and b'.a = 0.6 (both hits); a'.a and b'.b are self pairs
    for q_ids, q_vectors in [(["a", "b"], queries), (["b", "a"], queries[::-1])]:
        pairs, _ = find_pairs_by_id(q_ids, q_vectors, ["a", "b"], index, 0.5)
        assert pairs.to_pydict() == {
            "listing_id_l": ["a"],
            "listing_id_r": ["b"],
            "similarity": [pytest.approx(0.96)],
        }
