"""bench/block_reuse.py runs the real block search both ways and writes its JSON and table (not timed)."""

from __future__ import annotations

import json


def test_small_run_gives_the_same_rows_both_ways_and_writes_the_table(tmp_path, load_bench):
    bench = load_bench("block_reuse")
    readme = tmp_path / "README.md"
    readme.write_text(f"kept\n{bench.BEGIN}\nOLD\n{bench.END}\nkept too\n")
    out = tmp_path / "reuse.json"
    assert bench.main(["--listings", "2500", "--repeats", "1", "--out", str(out), "--readme", str(readme)]) == 0
    report = json.loads(out.read_text())
    assert report["blocks"] == 2 and report["same_rows"] is True
    assert report["pairs"] > 0  # the planted near-copies are found, so the rows compared are not empty
    assert report["rebuilt_seconds"] > 0 and report["shared_seconds"] > 0
    table = readme.read_text()
    assert "OLD" not in table and table.startswith("kept\n") and table.endswith("kept too\n")
    assert "| 2,500 | 2 |" in table


def test_the_synthetic_supplier_plants_near_copies(load_bench):
    catalogue, ids = load_bench("block_reuse").make_supplier(200, seed=3)
    assert ids == sorted(ids) and len(set(ids)) == 200 == len(catalogue)
    assert catalogue["title"].str.endswith(" new").sum() == 20
