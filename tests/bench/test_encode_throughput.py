"""bench/encode_throughput.py runs the real encoders and writes its JSON and table (not timed)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_small_run_writes_results_and_table(tmp_path, load_bench):
    bench = load_bench("encode_throughput")
    readme = tmp_path / "README.md"
    readme.write_text(f"kept\n{bench.BEGIN}\nOLD\n{bench.END}\nkept too\n")
    out = tmp_path / "throughput.json"
    assert bench.main(["--limit", "6", "--repeats", "1", "--out", str(out), "--readme", str(readme)]) == 0
    report = json.loads(out.read_text())
    text_rows = {r["encoder"]: r for r in report["results"] if r["case"] == "text-only"}
    assert set(text_rows) == {"zero-shot", "sspr", "hybrid", "lexical part alone", bench.ST_NAME}
    assert text_rows[bench.ST_NAME]["speed_vs_sentence_transformers"] == 1.0
    assert all(text_rows[name]["peak_rss_mb"] > 100 for name in ("zero-shot", "sspr", "hybrid", bench.ST_NAME))
    titles, _ = bench.read_samples(6)
    assert all(r["records"] == sum(1 for t in titles if t) for r in text_rows.values())
    assert text_rows["zero-shot"]["speed_vs_zero_shot"] == 1.0
    assert all(r["seconds"] > 0 and r["records_per_s"] > 0 for r in report["results"])
    table = readme.read_text()
    assert "OLD" not in table and table.startswith("kept\n") and table.endswith("kept too\n")
    assert "| hybrid | text-only | " in table


def test_bad_arguments_exit_2(tmp_path, load_bench):
    with pytest.raises(SystemExit) as exit_info:
        load_bench("encode_throughput").main(["--repeats", "0", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
