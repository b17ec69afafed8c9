"""bench/verifier_throughput.py runs the real encoder and verifier and writes its JSON and table (not timed)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_small_run_writes_results_and_table(tmp_path, load_bench):
    bench = load_bench("verifier_throughput")
    readme = tmp_path / "README.md"
    readme.write_text(f"kept\n{bench.BEGIN}\nOLD\n{bench.END}\nkept too\n")
    out = tmp_path / "verifier.json"
    assert bench.main(["--copies", "2", "--repeats", "1", "--out", str(out), "--readme", str(readme)]) == 0
    report = json.loads(out.read_text())
    # two copies of every sample listing: each is a candidate of its noisy copy at least
    assert report["candidates"] >= report["listings"] // 2
    assert report["verifier_pairs_per_s"] > 0 and report["stage_time_vs_search_alone"] > 1.0
    table = readme.read_text()
    assert "OLD" not in table and table.startswith("kept\n") and table.endswith("kept too\n")
    assert "| verifier on the candidates |" in table


def test_bad_arguments_exit_2(tmp_path, load_bench):
    assert (
        load_bench("verifier_throughput").main(["--copies", "0", "--readme", "", "--out", str(tmp_path / "x.json")])
        == 2
    )
