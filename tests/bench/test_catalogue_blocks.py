"""bench/catalogue_blocks.py: both layouts in real Spark, the same pairs, its JSON and table (not timed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


def test_the_sampler_reads_the_memory_of_pyspark_worker_processes(load_bench):
    bench = load_bench("catalogue_blocks")
    # a process whose command line names pyspark.daemon, holding ~200 MiB
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; b = bytearray(200 << 20); print(1, flush=True); time.sleep(30)",
            "pyspark.daemon",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        worker.stdout.readline()  # its memory is allocated
        with bench.PeakSampler(every=0.01) as sampler:
            time.sleep(0.1)
    finally:
        worker.kill()
        worker.wait()
    assert sampler.peak >= 200


@pytest.mark.spark
@pytest.mark.slow
def test_small_run_gives_the_same_pairs_both_ways_and_writes_the_table(tmp_path, load_bench):
    bench = load_bench("catalogue_blocks")
    readme = tmp_path / "README.md"
    readme.write_text(f"kept\n{bench.BEGIN}\nOLD\n{bench.END}\nkept too\n")
    out = tmp_path / "blocks.json"
    argv = ["--listings", "3000", "--block", "1000", "--repeats", "1", "--out", str(out), "--readme", str(readme)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["same_pairs"] is True and report["pair_count"] > 0
    # whole: 750 new listings in one query block; blocked: that block x 3 catalogue blocks
    assert report["whole"]["tasks"] == 1 and report["whole"]["largest_task_rows"] == 3000
    assert report["blocked"]["tasks"] == 3 and report["blocked"]["largest_task_rows"] == 1000
    assert report["whole"]["worker_peak_mib"] > 0 and report["blocked"]["worker_peak_mib"] > 0
    table = readme.read_text()
    assert "OLD" not in table and table.startswith("kept\n") and table.endswith("kept too\n")
    assert "| 3,000 | 750 | catalogue blocks | 3 | 1,000 |" in table
