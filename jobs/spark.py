"""The SparkSession factory: Hive support, the warehouse location and GPU scheduling from config.

Default (one machine): an embedded Derby metastore under ``paths.metastore_dir`` and table data
under ``paths.warehouse_dir``. On a cluster set ``warehouse.metastore_uris`` (or
``warehouse.metastore_jdbc_url``) and ``paths.warehouse_dir`` to shared storage; nothing else
changes. Embedded Derby admits one JVM at a time, so jobs on it must not overlap: every stage
takes ``hold_metastore_lock`` before it starts Spark, and a second job (a manual rerun while the
nightly run is going, another DAG's task) waits its turn instead of failing on a Derby lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from pathlib import Path

from config import PipelineConfig

log = logging.getLogger(__name__)


LOCK_NAME = ".sspr-metastore.lock"


_HELD_LOCKS: dict[str, object] = {}  # lock path -> open file, kept until the process exits


def hold_metastore_lock(config: PipelineConfig) -> None:
    """Takes the embedded Derby metastore for this process, waiting while another job has it.

    Embedded Derby admits one JVM at a time; a second Spark application fails with "Another
    instance of Derby may have already booted the database". So a job takes an OS file lock
    (``fcntl.flock`` on ``<metastore_dir>/.sspr-metastore.lock``) before it starts Spark and
    keeps it until the process exits, when the OS drops it (also when the job is killed). A
    second job logs that it waits and blocks until then. Calling it again in the same process
    does nothing. With an external metastore (``warehouse.metastore_uris`` /
    ``metastore_jdbc_url``) or a remote metastore folder no lock is taken.

    Args:
        config: the pipeline config.
    """
    folder = config.paths.metastore_dir
    if config.warehouse.metastore_uris or config.warehouse.metastore_jdbc_url or "://" in folder:
        return
    path = Path(folder).resolve() / LOCK_NAME
    if str(path) in _HELD_LOCKS:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning(
            "another job is using the embedded metastore in %s; waiting for it to finish "
            "(embedded Derby admits one job at a time)",
            folder,
        )
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        log.info("metastore free after %.1fs of waiting", time.monotonic() - started)
    _HELD_LOCKS[str(path)] = handle


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
        # effective when this process starts the JVM (a stage run by hand); under spark-submit
        # its --driver-memory decides (see check_driver_memory)
        "spark.driver.memory": config.spark.driver_memory,
        "spark.executor.memory": config.spark.executor_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if config.warehouse.metastore_uris:
        conf["spark.hadoop.hive.metastore.uris"] = config.warehouse.metastore_uris
    else:
        url = config.warehouse.metastore_jdbc_url or (
            f"jdbc:derby:;databaseName={config.paths.metastore_dir}/metastore_db;create=true"
        )
        # Only the spark.hadoop.-prefixed key reaches the metastore client (docs/STACK.md section 2).
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

    The master is ``spark.master`` from config when set, else spark-submit's ``--master``, else
    ``local[*]`` for a stage run by hand (``choose_master``).

    Args:
        config: the pipeline config.
        app_name: the Spark application name, e.g. ``"sspr-embed-2024-03-01"``.

    Returns:
        A ``pyspark.sql.SparkSession``.
    """
    from pyspark.sql import SparkSession

    # Python workers must run this interpreter (the venv with torch / faiss), not `python3` on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for directory in (config.paths.warehouse_dir, config.paths.metastore_dir):
        if "://" not in directory:
            Path(directory).mkdir(parents=True, exist_ok=True)

    builder = SparkSession.builder.appName(app_name).enableHiveSupport()
    master = choose_master(config, os.environ)
    if master:
        builder = builder.master(master)
    for key, value in spark_conf(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not config.warehouse.metastore_uris and not config.warehouse.metastore_jdbc_url:
        # Derby writes derby.log into its system home; keep it beside the metastore instead of the
        # working directory. The metastore client starts lazily, so this is still in time.
        spark.sparkContext._jvm.java.lang.System.setProperty("derby.system.home", config.paths.metastore_dir)
    log.info("spark session %s ready (master %s)", app_name, spark.sparkContext.master)
    check_driver_memory(spark, config)
    return spark


def choose_master(config: PipelineConfig, environ) -> str | None:
    """Returns the master a job must set, or None to keep the one spark-submit was given.

    Under spark-submit the Python driver is started by the JVM, which hands it its gateway in
    ``PYSPARK_GATEWAY_PORT``; ``--master`` is then already in that JVM's conf (a Python-side
    ``SparkConf()`` cannot see it before the context exists, so it is not asked).

    Args:
        config: ``spark.master`` wins when set.
        environ: the process environment.

    Returns:
        ``spark.master``; else None under spark-submit; else ``local[*]`` (a stage run by hand).
    """
    if config.spark.master:
        return config.spark.master
    if environ.get("PYSPARK_GATEWAY_PORT"):
        return None
    return "local[*]"


def jvm_bytes(size: str) -> int:
    """Returns the bytes of a JVM size such as ``4g`` or ``512m``."""
    return int(size[:-1]) * 1024 ** "kmgt".index(size[-1].lower()) * 1024


def check_driver_memory(spark, config: PipelineConfig) -> None:
    """Warns when the driver JVM's heap is smaller than ``spark.driver_memory`` asks.

    A JVM started by spark-submit without ``--driver-memory`` keeps Spark's 1g default, which
    is what ran out on one big supplier; the warning says how to pass the configured size.
    """
    wanted = jvm_bytes(config.spark.driver_memory)
    heap = int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
    # the JVM reports a little less than -Xmx (one survivor space), so allow 15%
    if heap < 0.85 * wanted:
        log.warning(
            "the driver JVM has a %.1f GiB heap but spark.driver_memory is %s: pass "
            "--driver-memory %s to spark-submit (the DAGs and jobs.backfill do), or large "
            "suppliers may run out of memory",
            heap / 2**30,
            config.spark.driver_memory,
            config.spark.driver_memory,
        )
