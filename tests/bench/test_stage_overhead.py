"""bench/stage_overhead.py: medians per stage from run_metrics rows written like the stages write them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _write_metrics(warehouse, rows):
    for run_date, stage, seconds, timings in rows:
        folder = warehouse / "dedup.db" / "run_metrics" / f"run_date={run_date}" / f"stage={stage}"
        folder.mkdir(parents=True)
        details = json.dumps({"timings": timings} if timings else {"files": 1})
        pq.write_table(pa.table({"seconds": [seconds], "details": [details]}), folder / "part-0.parquet")


def test_medians_and_overhead_share_per_stage_in_pipeline_order(load_bench, tmp_path):
    bench = load_bench("stage_overhead")
    t = lambda lock, start, checks, work: {
        "lock_wait": lock,
        "spark_start": start,
        "metastore_checks": checks,
        "work": work,
    }
    _write_metrics(
        tmp_path,
        [
            ("2024-03-01", "pairs", 40.0, t(0.0, 20.0, 10.0, 10.0)),  # overhead 3/4
            ("2024-03-02", "pairs", 20.0, t(0.0, 10.0, 5.0, 5.0)),
            ("2024-03-03", "pairs", 30.0, t(1.0, 14.0, 6.0, 9.0)),  # overhead 0.7
            ("2024-03-01", "validate", 10.0, t(0.0, 5.0, 0.0, 5.0)),
            ("2024-03-01", "groups", 10.0, None),  # written before timings existed: ignored
        ],
    )
    rows = bench.summarise(bench.read_timings(tmp_path))
    assert [r["stage"] for r in rows] == ["validate", "pairs"]
    pairs = rows[1]
    assert pairs["runs"] == 3 and pairs["seconds"] == 30.0 and pairs["spark_start"] == 14.0 and pairs["work"] == 9.0
    assert pairs["overhead_share"] == pytest.approx(0.75)  # median of 0.75, 0.75, 0.7
    assert "| pairs | 3 |" in bench.render(rows)


def test_a_warehouse_without_timings_says_what_to_do(load_bench, tmp_path):
    bench = load_bench("stage_overhead")
    with pytest.raises(SystemExit, match="make nightly"):
        bench.read_timings(tmp_path)
