"""The SparkSession factory: Hive support, the warehouse location and GPU scheduling from config.

Default (one machine): an embedded Derby metastore under ``paths.metastore_dir`` and table data
under ``paths.warehouse_dir``. On a cluster set ``warehouse.metastore_uris`` (a Hive metastore
service) or ``warehouse.metastore_jdbc_url`` (a database server, e.g. PostgreSQL from
``bin/metastore-db``) and ``paths.warehouse_dir`` to shared storage; nothing else changes.
Embedded Derby admits one JVM at a time, so jobs on it must not overlap: every stage takes
``hold_metastore_lock`` before it starts Spark, and a second job (a manual rerun while the nightly
run is going, another DAG's task) waits its turn instead of failing on a Derby lock.
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
    warehouse = config.warehouse
    if warehouse.metastore_uris:
        conf["spark.hadoop.hive.metastore.uris"] = warehouse.metastore_uris
    elif warehouse.metastore_jdbc_url:
        conf.update(jdbc_metastore_conf(config))
    else:
        # Only the spark.hadoop.-prefixed key reaches the metastore client (docs/STACK.md section 2).
        conf["spark.hadoop.javax.jdo.option.ConnectionURL"] = (
            f"jdbc:derby:;databaseName={config.paths.metastore_dir}/metastore_db;create=true"
        )
    if config.spark.executor_gpus > 0:
        conf["spark.executor.resource.gpu.amount"] = str(config.spark.executor_gpus)
        conf["spark.task.resource.gpu.amount"] = str(config.spark.task_gpus or 1)
        if config.spark.gpu_discovery_script:
            conf["spark.executor.resource.gpu.discoveryScript"] = config.spark.gpu_discovery_script
    conf.update(config.spark.conf)
    return conf


JDBC_DRIVERS = {
    "postgresql": "org.postgresql.Driver",
    "mysql": "com.mysql.cj.jdbc.Driver",
    "mariadb": "org.mariadb.jdbc.Driver",
    "derby": "org.apache.derby.jdbc.EmbeddedDriver",
}


def jdbc_metastore_conf(config: PipelineConfig) -> dict[str, str]:
    """Returns the settings of a metastore kept in a database server (``warehouse.metastore_jdbc_url``).

    The JDBC driver class follows from the URL (``jdbc:postgresql:`` -> ``org.postgresql.Driver``).
    The database must hold the metastore's tables already (``bin/metastore-db start`` creates
    them): DataNucleus' lazy ``schema.autoCreateAll`` deadlocks on PostgreSQL, so jobs never
    create tables there, and they run side by side on a fixed schema. The driver's jar goes on the driver JVM's class path, which only
    takes effect when this process starts the JVM: under spark-submit, pass it as
    ``--driver-class-path`` (the DAGs and ``jobs.backfill`` do, from ``metastore_jdbc_jars``).

    Args:
        config: the pipeline config, with ``warehouse.metastore_jdbc_url`` set.

    Returns:
        ``spark.hadoop.*`` metastore keys and ``spark.driver.extraClassPath`` when jars are set.

    Raises:
        ValueError: for a URL that is not ``jdbc:<kind>:...`` of a known kind.
    """
    warehouse = config.warehouse
    url = warehouse.metastore_jdbc_url
    kind = url.split(":")[1] if url.startswith("jdbc:") and url.count(":") >= 2 else ""
    if kind not in JDBC_DRIVERS:
        raise ValueError(
            f"warehouse.metastore_jdbc_url={url!r}: expected jdbc:<kind>:... with kind one of "
            f"{', '.join(sorted(JDBC_DRIVERS))} (e.g. jdbc:postgresql://127.0.0.1:5433/sspr_metastore)"
        )
    conf = {
        # Only the spark.hadoop.-prefixed keys reach the metastore client (docs/STACK.md section 2).
        "spark.hadoop.javax.jdo.option.ConnectionURL": url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": JDBC_DRIVERS[kind],
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        # Hive's direct-SQL partition filter casts every table's partition values at a numeric key's
        # position (catalog's int bucket) and PostgreSQL fails on run_metrics' "validate"; its ORM
        # path filters string keys only, so an int-key filter falls back to listing the table's
        # partitions and filtering them in Spark (what Derby gets from direct SQL anyway).
        "spark.hadoop.hive.metastore.try.direct.sql": "false",
        "spark.sql.hive.metastorePartitionPruningFallbackOnException": "true",
        "spark.sql.hive.metastorePartitionPruningFastFallback": "true",  # partition names, then Spark's filter
    }
    if warehouse.metastore_user:
        conf["spark.hadoop.javax.jdo.option.ConnectionUserName"] = warehouse.metastore_user
    if warehouse.metastore_password:
        conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] = warehouse.metastore_password
    if warehouse.metastore_jdbc_jars:
        conf["spark.driver.extraClassPath"] = warehouse.metastore_jdbc_jars
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
    if config.warehouse.metastore_jdbc_url and not config.warehouse.metastore_uris:
        check_jdbc_metastore(spark, config)
        # An int-key partition filter takes the planned fallback (jdbc_metastore_conf); Spark logs
        # each one as a WARN with a stack trace, some 30 a night: keep them out of the task logs.
        jvm = spark.sparkContext._jvm
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
            "org.apache.spark.sql.hive.client.Shim_v2_3", jvm.org.apache.logging.log4j.Level.ERROR
        )
    return spark


def check_jdbc_metastore(spark, config: PipelineConfig) -> None:
    """Checks that the metastore database answers and holds the Hive tables, before any query.

    Without it a stopped server or an empty database surfaces later as a long Hive stack trace
    (or, with an empty database, as a hang: see ``jdbc_metastore_conf``).

    Raises:
        DedupError: the database does not answer, its driver is missing, or it has no Hive
            metastore tables; the message says what to do.
    """
    from py4j.protocol import Py4JJavaError

    from config.errors import DedupError

    warehouse = config.warehouse
    url = warehouse.metastore_jdbc_url
    jvm = spark.sparkContext._jvm
    try:
        connection = jvm.java.sql.DriverManager.getConnection(
            url, warehouse.metastore_user or None, warehouse.metastore_password or None
        )
    except Py4JJavaError as error:
        reason = error.java_exception.getMessage()
        hint = (
            "put the JDBC driver's jar in warehouse.metastore_jdbc_jars (e.g. /usr/share/java/postgresql.jar) "
            "and pass it to spark-submit as --driver-class-path"
            if "No suitable driver" in str(reason)
            else "start it (.venv/bin/python bin/metastore-db start) or fix warehouse.metastore_jdbc_url / "
            "metastore_user / metastore_password"
        )
        raise DedupError(f"the metastore database {url} does not answer ({reason}): {hint}") from None
    try:
        found = connection.getMetaData().getTables(None, None, "DBS", None).next()
    finally:
        connection.close()
    if not found:
        raise DedupError(
            f"the metastore database {url} has no Hive metastore tables (no DBS table): create them with "
            ".venv/bin/python bin/metastore-db start (a new server), or Hive's schematool for a server of your own"
        )


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
