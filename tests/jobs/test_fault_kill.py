"""A Spark job killed (SIGKILL) while it writes a partition leaves the old partition visible, and
the retry completes correctly.

The writer (the script ``WRITER`` below) runs in its own process, with the same interpreter,
against a warehouse in a temp dir: it writes version 1 of a
``pairs`` partition, then starts writing version 2 (a few million rows, so the write lasts long
enough), and the test kills the whole process group as soon as Spark's staging directory for the
insert appears. Readers must then see exactly version 1; a retry writes version 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DAY = "2024-03-01"

WRITER = textwrap.dedent(
    f"""
    import sys
    from config import load_config
    from jobs.spark import build_spark
    from jobs.warehouse import replace_partition

    root, version, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = load_config(None, {{
        "paths.warehouse_dir": root + "/warehouse", "paths.metastore_dir": root + "/metastore",
        "spark.master": "local[2]", "spark.shuffle_partitions": "2",
    }}, environ={{}})
    spark = build_spark(config, "fault-writer")
    frame = spark.range(rows).selectExpr(
        "'s1' AS supplier_id",
        "concat('a', lpad(cast(id AS string), 9, '0')) AS listing_id_l",
        "concat('b', lpad(cast(id AS string), 9, '0')) AS listing_id_r",
        f"cast({{version}} / 10.0 AS float) AS similarity_m",
        "cast(NULL AS float) AS similarity_t",
        "cast(NULL AS float) AS similarity_i",
        "cast(NULL AS float) AS match_score",
        f"'v{{version}}' AS model_version",
        "'{DAY}' AS run_date",
    )
    written = replace_partition(spark, frame, "dedup", "pairs", {{"run_date": "{DAY}"}})
    print(f"WROTE {{written}}", flush=True)
    spark.stop()
    """
)


def _write(root: Path, version: int, rows: int, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(version), str(rows)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"writer failed (rc {proc.returncode}):\n{out[-3000:]}"
    return out


def _partition(root: Path) -> dict[str, int]:
    """Rows per model_version in the visible partition (as any Parquet reader sees it)."""
    folder = root / "warehouse" / "dedup.db" / "pairs" / f"run_date={DAY}"
    if not folder.is_dir():
        return {}
    table = ds.dataset(folder, format="parquet").to_table(columns=["model_version"])
    counts = table.group_by("model_version").aggregate([("model_version", "count")]).to_pydict()
    return dict(zip(counts["model_version"], counts["model_version_count"], strict=True))


def _staging_dirs(root: Path) -> list[Path]:
    table = root / "warehouse" / "dedup.db" / "pairs"
    return list(table.glob(".spark-staging-*")) if table.is_dir() else []


def test_killed_write_leaves_the_old_partition_and_the_retry_completes(tmp_path):
    assert "WROTE 1000" in _finish(_write(tmp_path, 1, 1000))
    assert _partition(tmp_path) == {"v1": 1000}

    big = 1_500_000
    proc = _write(tmp_path, 2, big)
    deadline = time.monotonic() + 300
    while not _staging_dirs(tmp_path):
        assert proc.poll() is None, "the writer finished before it could be killed:\n" + (proc.stdout.read()[-3000:])
        assert time.monotonic() < deadline, "no staging directory appeared within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Python workers, mid-write
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # readers see the complete old version: nothing of the half-written new one
    assert _partition(tmp_path) == {"v1": 1000}

    assert f"WROTE {big}" in _finish(_write(tmp_path, 2, big))
    assert _partition(tmp_path) == {"v2": big}
