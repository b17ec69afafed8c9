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


def _size(catalogue: int, seconds_per_stage):
    """A measured size as run_size returns it: night 1 loads the catalogue, night 2 brings a tenth."""
    new = catalogue // 10
    nights = []
    for listings, after in ((catalogue, catalogue), (new, catalogue + new)):
        stages = {
            s: {"seconds": seconds_per_stage(s, listings, after), "peak_rss_mib": 1000.0 + listings / 10}
            for s in ("validate", "embed", "catalog", "pairs", "groups", "report")
        }
        nights.append({"listings": listings, "stages": stages})
    return {"catalogue": catalogue, "new": new, "planted_pairs": 5, "planted_recall": 1.0, "nights": nights}


def test_the_fit_recovers_fixed_per_listing_and_per_catalogue_costs_and_the_table_shows_them(load_bench):
    bench = load_bench("end_to_end_scale")

    def cost(stage, listings, catalogue):
        if stage == "embed":
            return 30.0 + 0.01 * listings  # the night's rows only
        if stage == "catalog":
            return 20.0 + 0.002 * catalogue  # rewrites the whole catalogue
        return 25.0 + 0.001 * listings + 0.0005 * catalogue

    sizes = [_size(c, cost) for c in (1000, 10000, 30000)]
    fit = bench.extrapolate(sizes)
    assert fit["embed"]["fixed"] == pytest.approx(30.0, abs=1e-6)
    assert fit["embed"]["per_night_listing"] == pytest.approx(0.01)
    assert fit["embed"]["per_catalogue_listing"] == pytest.approx(0.0, abs=1e-9)
    assert fit["catalog"]["per_catalogue_listing"] == pytest.approx(0.002)
    assert fit["embed"]["at_target"] == pytest.approx(30.0 + 0.01 * bench.TARGET_NEW)
    at = 25.0 + 0.001 * bench.TARGET_NEW + 0.0005 * bench.TARGET_CATALOGUE
    assert fit["pairs"]["at_target"] == pytest.approx(at) and fit["pairs"]["rms_residual"] == pytest.approx(0.0)
    table = bench.render(
        {"sizes": sizes, "cpus": 2, "command": "python bench/end_to_end_scale.py", "wall_minutes": 1.0}
    )
    assert "| embed | 40.0 / 31.0 |" in table  # night 1 / night 2 seconds at C=1,000
    assert f"{(30.0 + 0.01 * bench.TARGET_NEW) / 60:.1f} min" in table
    assert "100,000 new vs 1,000,000" in table


def test_noise_that_would_make_a_cost_fall_is_held_at_zero(load_bench):
    bench = load_bench("end_to_end_scale")
    # the time falls as the nights grow (noise on a fixed cost): a plain line would extrapolate
    # to negative minutes
    points = [(1000, 1000, 40.0), (100, 1100, 45.0), (10000, 10000, 36.0), (1000, 11000, 38.0)]
    fixed, per_listing, per_catalogue, residual = bench.fit_cost(points)
    assert per_listing >= 0.0 and per_catalogue >= 0.0 and fixed > 0.0
    assert residual > 0.0
    assert fixed + per_listing * bench.TARGET_NEW + per_catalogue * bench.TARGET_CATALOGUE >= fixed
