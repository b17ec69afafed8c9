"""Two stage runs for different dates at once on the embedded metastore: the second waits its
turn (``jobs.spark.hold_metastore_lock``) and both finish correct, instead of one failing with
Derby's "Another instance of Derby may have already booted the database".

The two runs are separate processes, as when an operator reruns a day by hand while the nightly
DAG is running.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DAYS = ("2024-03-01", "2024-03-02")


def test_two_dates_at_once_both_finish_one_waits(validate_days_at_once, assert_every_listing_stored, tmp_path):
    runs = validate_days_at_once(DAYS)
    for day, (rc, out) in zip(DAYS, runs, strict=True):
        assert rc == 0, f"validate {day} failed (rc {rc}):\n{out[-3000:]}"
        assert "Another instance of Derby" not in out
    assert sum("waiting for it to finish" in out for _, out in runs) == 1
    assert_every_listing_stored(tmp_path / "warehouse", DAYS)
