"""bench/end_to_end_scale.py without Spark: its synthetic nights, its line fit and its table."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest


def test_supplier_sizes_are_zipf_like_and_sum_to_the_catalogue(load_bench):
    bench = load_bench("end_to_end_scale")
    for total in (300, 2000, 20000):
        sizes = bench.supplier_sizes(total)
        assert sizes.sum() == total and len(sizes) == total // 100 and sizes.min() >= 1
        assert list(sizes) == sorted(sizes, reverse=True)
        assert sizes[0] > (10 if total >= 2000 else 2) * sizes[-1]  # skewed: a few large suppliers


def test_the_nights_follow_the_contract_and_plant_reworded_pairs_in_one_supplier(load_bench, tmp_path):
    bench = load_bench("end_to_end_scale")
    first, second, planted = bench.make_nights(2000, seed=3)
    assert len(first) == 2000 and 150 <= len(second) <= 250
    ids = [r["listing_id"] for r in first + second]
    assert len(set(ids)) == len(ids)
    by_id = {r["listing_id"]: r for r in first + second}
    assert len(planted) > 20
    for old, new in planted:
        a, b = by_id[old], by_id[new]
        assert a["supplier_id"] == b["supplier_id"] and a["title"] != b["title"]
        code = a["title"].split()[-1]
        assert (code[0] + "-" + code[1:]).lower() in b["title"].lower()  # the reworded model code
    bench.write_listings(tmp_path / "dt=x", second)
    schema = pq.read_schema(tmp_path / "dt=x" / "part-00000.parquet")
    expected = pq.read_schema(next((bench.ROOT / "examples" / "listings").glob("dt=*/*.parquet")))
    assert schema.equals(expected)
    assert bench.make_nights(2000, seed=3) == (first, second, planted)  # reproducible


def _size(new: int, seconds_per_stage):
    stages = {
        s: {"seconds": seconds_per_stage(s, new), "peak_rss_mib": 1000.0 + new / 10}
        for s in ("validate", "embed", "catalog", "pairs", "groups", "report")
    }
    return {
        "catalogue": 10 * new,
        "new": new,
        "planted_pairs": 5,
        "planted_recall": 1.0,
        "nights": [{"stages": stages}, {"stages": stages}],
    }


def test_the_extrapolation_recovers_a_linear_cost_and_the_table_shows_it(load_bench):
    bench = load_bench("end_to_end_scale")
    cost = lambda stage, new: 30.0 + (0.01 if stage == "embed" else 0.001) * new
    sizes = [_size(n, cost) for n in (200, 600, 2000)]
    fit = bench.extrapolate(sizes)
    assert fit["embed"]["intercept"] == pytest.approx(30.0)
    assert fit["embed"]["per_new_listing"] == pytest.approx(0.01)
    assert fit["embed"]["at_target"] == pytest.approx(30.0 + 0.01 * bench.TARGET_NEW)
    assert fit["pairs"]["at_target"] == pytest.approx(30.0 + 0.001 * bench.TARGET_NEW)
    table = bench.render(
        {"sizes": sizes, "cpus": 2, "command": "python bench/end_to_end_scale.py", "wall_minutes": 1.0}
    )
    assert "| embed |" in table and f"{(30.0 + 0.01 * bench.TARGET_NEW) / 60:.1f} min" in table
    assert "100,000 new vs 1,000,000" in table
