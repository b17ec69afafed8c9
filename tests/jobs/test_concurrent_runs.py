"""Two stage runs for different dates at once on the embedded metastore: the second waits its
turn (``jobs.spark.hold_metastore_lock``) and both finish correct, instead of one failing with
Derby's "Another instance of Derby may have already booted the database".

The two runs are separate processes, as when an operator reruns a day by hand while the nightly
DAG is running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LISTINGS = REPO / "examples" / "listings"
DAYS = ("2024-03-01", "2024-03-02")


def test_two_dates_at_once_both_finish_one_waits(tmp_path):
    config = tmp_path / "sspr.toml"
    config.write_text(
        "[paths]\n"
        f'listings_root = "{LISTINGS}"\n'
        'warehouse_dir = "warehouse"\nmetastore_dir = "metastore"\n'
        'reports_dir = "reports"\nruns_dir = "runs"\n'
        '[spark]\nmaster = "local[1]"\nshuffle_partitions = 2\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable}
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "validate.py"), "--run-date", day, "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for day in DAYS
    ]
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    for day, proc, out in zip(DAYS, procs, outputs, strict=True):
        assert proc.returncode == 0, f"validate {day} failed (rc {proc.returncode}):\n{out[-3000:]}"
        assert "Another instance of Derby" not in out
    assert sum("waiting for it to finish" in out for out in outputs) == 1

    for day in DAYS:
        read = sum(pq.read_metadata(f).num_rows for f in (LISTINGS / f"dt={day}").glob("*.parquet"))
        stored = 0
        for table in ("listings", "quarantine"):
            folder = tmp_path / "warehouse" / "dedup.db" / table / f"run_date={day}"
            if folder.is_dir():
                stored += ds.dataset(folder, format="parquet").count_rows()
        assert stored == read, f"{day}: read {read} rows, the warehouse holds {stored}"
