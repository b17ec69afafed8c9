"""bench/sample_groups.py: co-grouped pair recall / precision of a warehouse's groups."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq


def _warehouse(tmp_path, rows):
    table = pa.Table.from_pylist(rows)
    pq.write_to_dataset(table, tmp_path / "wh" / "dedup.db" / "group_members", partition_cols=["run_date"])
    return tmp_path / "wh"


def test_scores_pairs_per_supplier_over_all_nights(tmp_path, load_bench):
    bench = load_bench("sample_groups")
    truth = tmp_path / "duplicates.csv"
    truth.write_text(
        "supplier_id,listing_id,product_id\n"
        "s1,a,p1\ns1,b,p1\ns1,c,p1\n"  # three true pairs
        "s2,x,q\ns2,y,q\n"  # one true pair
    )
    rows = [
        # night 1: s1 groups a+b (true), s2 chains x, y and an unrelated z (1 true pair of 3)
        {"run_date": "2024-03-01", "group_id": "g1", "supplier_id": "s1", "listing_id": "a"},
        {"run_date": "2024-03-01", "group_id": "g1", "supplier_id": "s1", "listing_id": "b"},
        {"run_date": "2024-03-01", "group_id": "g2", "supplier_id": "s2", "listing_id": "x"},
        {"run_date": "2024-03-01", "group_id": "g2", "supplier_id": "s2", "listing_id": "y"},
        {"run_date": "2024-03-01", "group_id": "g2", "supplier_id": "s2", "listing_id": "z"},
        # night 2: the same group id again holds a+b (counted once) and a new group b+c
        {"run_date": "2024-03-02", "group_id": "g1", "supplier_id": "s1", "listing_id": "a"},
        {"run_date": "2024-03-02", "group_id": "g1", "supplier_id": "s1", "listing_id": "b"},
        {"run_date": "2024-03-02", "group_id": "g3", "supplier_id": "s1", "listing_id": "c"},
        {"run_date": "2024-03-02", "group_id": "g3", "supplier_id": "s1", "listing_id": "b"},
    ]
    out = tmp_path / "result.json"
    assert bench.main(["--warehouse", str(_warehouse(tmp_path, rows)), "--truth", str(truth), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["all"] == {"true_pairs": 4, "grouped_pairs": 5, "found": 3, "recall": 0.75, "precision": 0.6}
    assert result["suppliers"]["s1"]["recall"] == round(2 / 3, 4)
    assert result["suppliers"]["s1"]["precision"] == 1.0
    assert result["suppliers"]["s2"] == {
        "true_pairs": 1,
        "grouped_pairs": 3,
        "found": 1,
        "recall": 1.0,
        "precision": round(1 / 3, 4),
    }
    assert result["run_dates"] == ["2024-03-01", "2024-03-02"]
    assert "| s2 | 1 | 3 | 1 | 1.000 | 0.333 |" in bench.render(result)


def test_missing_warehouse_exits_2(tmp_path, load_bench):
    bench = load_bench("sample_groups")
    assert bench.main(["--warehouse", str(tmp_path / "nothing"), "--out", ""]) == 2
