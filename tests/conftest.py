"""Shared fixtures: one local SparkSession with Hive support for the whole test session.

The session runs in local[2] with a Derby metastore and warehouse in a temp dir (never the
project's var/), Spark UI off, few shuffle partitions. Tests that use it are marked ``spark``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

log = logging.getLogger(__name__)
# py4j logs at INFO from __del__ at interpreter exit, after pytest closed its capture stream.
logging.getLogger("py4j").setLevel(logging.WARNING)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def pipeline_config(tmp_path_factory):
    """A PipelineConfig whose warehouse, metastore, reports and runs live in a temp dir."""
    from config import load_config

    root = tmp_path_factory.mktemp("sspr")
    overrides = {
        "paths.listings_root": str(root / "listings"),
        "paths.warehouse_dir": str(root / "warehouse"),
        "paths.metastore_dir": str(root / "metastore"),
        "paths.reports_dir": str(root / "reports"),
        "paths.runs_dir": str(root / "runs"),
        "spark.shuffle_partitions": "2",
        "encoder.num_threads": "1",
        "spark.master": "local[2]",
    }
    return load_config(None, overrides, environ={})


@pytest.fixture(scope="session")
def spark(pipeline_config):
    """The session-scoped SparkSession, built by the same factory the jobs use."""
    from jobs.spark import build_spark

    session = build_spark(pipeline_config, "sspr-tests")
    yield session
    session.stop()


@pytest.fixture
def validate_days_at_once(tmp_path):
    """Returns ``run(days, env) -> [(exit code, output)]``: ``jobs/validate.py`` for each day,
    all started at once as separate processes (an operator's rerun beside the nightly), over the
    sample listings with a warehouse in ``tmp_path``; ``env`` adds environment variables."""

    def run(days, env=None):
        listings = REPO / "examples" / "listings"
        config = tmp_path / "sspr.toml"
        config.write_text(
            "[paths]\n"
            f'listings_root = "{listings}"\n'
            'warehouse_dir = "warehouse"\nmetastore_dir = "metastore"\n'
            'reports_dir = "reports"\nruns_dir = "runs"\n'
            '[spark]\nmaster = "local[1]"\nshuffle_partitions = 2\n'
        )
        full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable}
        # output to files, not pipes: a full pipe would stall one job behind the other
        logs = [tmp_path / f"validate-{day}.log" for day in days]
        procs = []
        for day, log_path in zip(days, logs, strict=True):
            with log_path.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(REPO / "jobs" / "validate.py"),
                            "--run-date",
                            day,
                            "--config",
                            str(config),
                        ],
                        cwd=tmp_path,
                        env=full_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        return [(proc.wait(timeout=900), log_path.read_text()) for proc, log_path in zip(procs, logs, strict=True)]

    return run


@pytest.fixture
def assert_every_listing_stored():
    """Returns ``check(warehouse, days)``: every input row of each day's sample listings is in
    ``listings`` or ``quarantine`` of that warehouse."""
    return _assert_every_listing_stored


def _assert_every_listing_stored(warehouse: Path, days) -> None:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    for day in days:
        files = (REPO / "examples" / "listings" / f"dt={day}").glob("*.parquet")
        read = sum(pq.read_metadata(f).num_rows for f in files)
        stored = 0
        for table in ("listings", "quarantine"):
            folder = warehouse / "dedup.db" / table / f"run_date={day}"
            if folder.is_dir():
                stored += ds.dataset(folder, format="parquet").count_rows()
        assert stored == read, f"{day}: read {read} rows, the warehouse holds {stored}"
