"""Shared fixtures: one local SparkSession with Hive support for the whole test session.

The session runs in local[2] with a Derby metastore and warehouse in a temp dir (never the
project's var/), Spark UI off, few shuffle partitions. Tests that use it are marked ``spark``.
"""

from __future__ import annotations

import logging
import os
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
