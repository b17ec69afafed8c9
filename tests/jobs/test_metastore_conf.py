"""The Spark settings of a metastore in a database server (warehouse.metastore_jdbc_url), without Spark."""

from __future__ import annotations

import argparse
import json

import pytest

from config import load_config
from jobs.spark import _HELD_LOCKS, hold_metastore_lock, spark_conf

URL = "jdbc:postgresql://127.0.0.1:5433/sspr_metastore"
JAR = "/usr/share/java/postgresql.jar"


def _config(**warehouse):
    return load_config(None, {f"warehouse.{k}": v for k, v in warehouse.items()}, environ={})


def test_a_postgres_url_gets_its_driver_login_and_class_path_and_never_alters_the_schema():
    conf = spark_conf(
        _config(metastore_jdbc_url=URL, metastore_user="sspr", metastore_password="pw", metastore_jdbc_jars=JAR)
    )
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"] == URL
    assert conf["spark.hadoop.javax.jdo.option.ConnectionDriverName"] == "org.postgresql.Driver"
    assert conf["spark.hadoop.javax.jdo.option.ConnectionUserName"] == "sspr"
    assert conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] == "pw"
    assert conf["spark.driver.extraClassPath"] == JAR
    # DataNucleus' lazy table creation deadlocks on PostgreSQL: bin/metastore-db made the schema
    assert conf["spark.hadoop.datanucleus.schema.autoCreateAll"] == "false"
    # Hive's direct SQL breaks on PostgreSQL for int partition keys (catalog's bucket)
    assert conf["spark.hadoop.hive.metastore.try.direct.sql"] == "false"
    assert conf["spark.sql.hive.metastorePartitionPruningFallbackOnException"] == "true"


def test_the_default_stays_embedded_derby_with_no_login():
    conf = spark_conf(_config())
    assert conf["spark.hadoop.javax.jdo.option.ConnectionURL"].startswith("jdbc:derby:;databaseName=")
    assert not any("ConnectionUserName" in k or "ConnectionDriverName" in k for k in conf)
    assert "spark.driver.extraClassPath" not in conf


@pytest.mark.parametrize("url", ["postgresql://127.0.0.1/m", "jdbc:oracle:thin:@h:1521/m"])
def test_an_unknown_metastore_url_is_refused_with_what_is_expected(url):
    with pytest.raises(ValueError, match="jdbc:<kind>"):
        spark_conf(_config(metastore_jdbc_url=url))


def test_no_metastore_lock_is_taken_on_a_database_server(tmp_path):
    config = load_config(
        None, {"warehouse.metastore_jdbc_url": URL, "paths.metastore_dir": str(tmp_path / "m")}, environ={}
    )
    held = dict(_HELD_LOCKS)
    hold_metastore_lock(config)
    assert _HELD_LOCKS == held and not (tmp_path / "m").exists()


def test_the_password_never_reaches_the_recorded_config():
    config = load_config(
        None, {"warehouse.metastore_jdbc_url": URL}, environ={"SSPR__WAREHOUSE__METASTORE_PASSWORD": "s3cret"}
    )
    assert config.warehouse.metastore_password == "s3cret"
    text = config.to_json()
    assert "s3cret" not in text and json.loads(text)["warehouse"]["metastore_password"] == "***"


def test_the_backfill_passes_the_jdbc_jars_as_driver_class_path():
    from jobs.backfill import stage_command
    from jobs.stage import PIPELINE_STAGES

    args = argparse.Namespace(
        spark_submit="spark-submit", master="local[2]", end_date="2024-03-02", config=None, overrides=[], reembed=False
    )
    for stage in PIPELINE_STAGES:
        command = stage_command(args, stage, "2024-03-01", None, JAR)
        assert command[command.index("--driver-class-path") + 1] == JAR
        assert command.index("--driver-class-path") < command.index("--run-date")
    assert "--driver-class-path" not in stage_command(args, "pairs", "2024-03-01")


@pytest.mark.spark
def test_a_table_another_job_created_first_is_no_error_but_other_failures_are(spark):
    """What a shared metastore answers when two jobs create one table at once: "already exists"."""
    from pyspark.errors import AnalysisException

    from jobs.warehouse import create_if_missing

    spark.sql("CREATE DATABASE IF NOT EXISTS race_test")
    statement = "CREATE TABLE race_test.t (a INT) USING parquet"  # no IF NOT EXISTS: the loser's view
    create_if_missing(spark, statement)
    create_if_missing(spark, statement)  # exists now: the metastore refuses, the caller gets its table
    assert spark.table("race_test.t").columns == ["a"]
    with pytest.raises(AnalysisException):
        create_if_missing(spark, "CREATE TABLE race_test.u (a NO_SUCH_TYPE) USING parquet")
    spark.sql("DROP DATABASE race_test CASCADE")
