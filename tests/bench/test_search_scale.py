"""bench/search_scale.py at a small size: its data, checks, JSON and table (not timed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from schemas.vectors import pack_vectors, unpack_vectors

SMALL = ["--listings", "20000", "--suppliers", "50", "--giants", "2", "--giant-min", "2000"]
SMALL += ["--global-queries", "500", "--check-suppliers", "10", "--peak-size", "512", "--peak-repeats", "2"]


def test_small_run_finds_every_planted_pair_and_matches_brute_force(tmp_path, load_bench):
    bench = load_bench("search_scale")
    out, md = tmp_path / "search_scale.json", tmp_path / "README.md"
    assert bench.main([*SMALL, "--out", str(out), "--readme", str(md)]) == 0
    report = json.loads(out.read_text())
    results, data = report["results"], report["data"]
    assert data["listings"] == 20000 and data["suppliers"] == 50
    assert data["largest_suppliers"][1] >= 2000 and data["planted_pairs"] > 500
    low, high = data["planted_similarity_min_max"]
    assert 0.9 < low <= high < 1.0
    assert results["planted_recall"]["recall"] == 1.0
    assert results["planted_recall"]["found"] == results["planted_recall"]["planted"] == data["planted_pairs"]
    exact = results["exactness"]
    assert exact["all_exact"] and len(exact["suppliers"]) == 10
    assert exact["suppliers"][0]["size"] == data["largest_suppliers"][0]
    assert all(s["brute_force_pairs"] == s["found_pairs"] for s in exact["suppliers"])
    assert sum(s["brute_force_pairs"] for s in exact["suppliers"]) > 0
    assert results["per_supplier_functions_agree"]
    assert results["global"]["agrees_with_per_supplier"] and results["global"]["cross_supplier_hits"] == 0
    assert results["global"]["queries_timed"] == 500 and results["global"]["total_queries"] == 20000
    # every pair found is a planted one: random 256-d vectors are never 0.9 alike
    assert results["per_supplier"]["pairs"] == data["planted_pairs"]
    assert results["per_supplier"]["floor_gflop"] == pytest.approx(data["sum_of_squared_sizes"] * 256 * 2 / 1e9, 0.01)
    for key in ("per_supplier", "per_supplier_search_only", "global"):
        assert results[key]["gflops"] > 0 and results[key]["fraction_of_peak"] > 0
    assert results["speed_ratio"] > 0 and results["gemm_peak"]["gflops"] > 0
    assert report["machine"]["cpus"] >= 1 and report["machine"]["faiss"] and report["data"]["generation_s"] >= 0
    table = md.read_text()
    assert "| per supplier, `find_pairs_by_id` |" in table and "scaled from 500 queries" in table


def test_supplier_sizes_follow_the_rule(load_bench):
    bench = load_bench("search_scale")
    sizes = bench.supplier_sizes(1_000_000, 10_000, 1.0, 3, 50_000)
    assert sizes.sum() == 1_000_000 and sizes.shape == (10_000,) and sizes.min() >= 1
    assert (sizes[:3] >= 50_000).all() and sizes[0] > 100_000  # Zipf's share of rank 1 exceeds the floor
    assert (np.diff(sizes[3:]) <= 0).all()
    with pytest.raises(ValueError, match="cannot hold"):
        bench.supplier_sizes(1000, 10, 1.0, 3, 500)


def test_listings_are_stored_vectors_with_planted_copies(load_bench):
    bench = load_bench("search_scale")
    sizes = np.array([300, 200, 1], dtype=np.int64)
    vectors, planted = bench.make_listings(sizes, 256, 0.1, seed=3)
    assert vectors.dtype == np.float32 and vectors.shape == (501, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    # the round trip is what the stored float16 bytes give the search, bit for bit
    raw = np.random.default_rng(0).standard_normal((50, 256)).astype(np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_array_equal(bench.stored_round_trip(raw), unpack_vectors(pack_vectors(raw)))
    assert not np.array_equal(bench.stored_round_trip(raw), raw)
    supplier = np.repeat(np.arange(3), sizes)
    assert (supplier[planted[:, 0]] == supplier[planted[:, 1]]).all()
    assert np.unique(planted).size == planted.size  # a listing is a base or a copy, once
    sims = np.sum(vectors[planted[:, 0]] * vectors[planted[:, 1]], axis=1)
    assert (sims > 0.94).all() and (sims < 0.995).all()


def test_brute_force_comparison_sees_a_missing_pair(load_bench):
    bench = load_bench("search_scale")
    vectors, planted = bench.make_listings(np.array([400], dtype=np.int64), 64, 0.2, seed=1)
    brute, saturated = bench.brute_force_pairs(vectors, 0.9, 50)
    assert saturated == 0
    np.testing.assert_array_equal(brute, bench.pair_keys(planted[:, 0], planted[:, 1], 400))
    assert not np.array_equal(brute[1:], brute)
    _, saturated = bench.brute_force_pairs(vectors, 0.9, 1)  # self + copy > a budget of 1
    assert saturated == 2 * planted.shape[0]


def test_bad_arguments_exit_2(tmp_path, load_bench):
    bench = load_bench("search_scale")
    out = str(tmp_path / "x.json")
    assert bench.main(["--listings", "0", "--out", out, "--readme", ""]) == 2
    assert (
        bench.main(["--listings", "100", "--suppliers", "10", "--giant-min", "50", "--out", out, "--readme", ""]) == 2
    )
