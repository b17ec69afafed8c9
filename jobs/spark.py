"""The SparkSession factory: Hive support, the warehouse location and GPU scheduling from config.

Default (one machine): an embedded Derby metastore under ``paths.metastore_dir`` and table data
under ``paths.warehouse_dir``. On a cluster set ``warehouse.metastore_uris`` (or
``warehouse.metastore_jdbc_url``) and ``paths.warehouse_dir`` to shared storage; nothing else
changes. Embedded Derby admits one JVM at a time, so warehouse-writing jobs must not overlap
(the DAG runs its tasks one after another and allows one active run).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from jobs.config import PipelineConfig

log = logging.getLogger(__name__)


def spark_conf(config: PipelineConfig) -> dict[str, str]:
    """Returns the Spark settings a job applies on top of spark-submit's.

    Args:
        config: the pipeline config.

    Returns:
        A ``spark.*`` key -> value dict (warehouse, metastore, Arrow, GPU resources, ``spark.conf``).
    """
    conf = {
        "spark.sql.warehouse.dir": config.paths.warehouse_dir,
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.session.timeZone": "UTC",
        # Spark's default INT96 timestamps read back as naive nanoseconds outside Spark; the
        # contract says timestamp[us, tz=UTC].
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.shuffle.partitions": str(config.spark.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.spark.arrow_batch_rows),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if config.warehouse.metastore_uris:
        conf["spark.hadoop.hive.metastore.uris"] = config.warehouse.metastore_uris
    else:
        url = config.warehouse.metastore_jdbc_url or (
            f"jdbc:derby:;databaseName={config.paths.metastore_dir}/metastore_db;create=true"
        )
        # Only the spark.hadoop.-prefixed key reaches the metastore client (STACK.md section 2).
        conf["spark.hadoop.javax.jdo.option.ConnectionURL"] = url
    if config.spark.executor_gpus > 0:
        conf["spark.executor.resource.gpu.amount"] = str(config.spark.executor_gpus)
        conf["spark.task.resource.gpu.amount"] = str(config.spark.task_gpus or 1)
        if config.spark.gpu_discovery_script:
            conf["spark.executor.resource.gpu.discoveryScript"] = config.spark.gpu_discovery_script
    conf.update(config.spark.conf)
    return conf


def build_spark(config: PipelineConfig, app_name: str):
    """Creates (or returns the running) SparkSession with Hive support for a pipeline job.

    Under ``spark-submit`` the master comes from spark-submit; run by hand it is
    ``spark.master`` from config, else ``local[*]``.

    Args:
        config: the pipeline config.
        app_name: the Spark application name, e.g. ``"sspr-embed-2024-03-01"``.

    Returns:
        A ``pyspark.sql.SparkSession``.
    """
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    # Python workers must run this interpreter (the venv with torch / faiss), not `python3` on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for directory in (config.paths.warehouse_dir, config.paths.metastore_dir):
        if "://" not in directory:
            Path(directory).mkdir(parents=True, exist_ok=True)

    builder = SparkSession.builder.appName(app_name).enableHiveSupport()
    if config.spark.master:
        builder = builder.master(config.spark.master)
    elif not SparkConf().contains("spark.master"):
        builder = builder.master("local[*]")
    for key, value in spark_conf(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not config.warehouse.metastore_uris and not config.warehouse.metastore_jdbc_url:
        # Derby writes derby.log into its system home; keep it beside the metastore instead of the
        # working directory. The metastore client starts lazily, so this is still in time.
        spark.sparkContext._jvm.java.lang.System.setProperty(  # noqa: SLF001 (no public API)
            "derby.system.home", config.paths.metastore_dir
        )
    log.info("spark session %s ready (master %s)", app_name, spark.sparkContext.master)
    return spark
