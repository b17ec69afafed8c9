"""Which master a job sets: spark-submit's --master must reach the session (a cluster run)."""

from __future__ import annotations

from config import load_config
from jobs.spark import choose_master


def test_under_spark_submit_the_job_keeps_the_master_it_was_given():
    config = load_config(None, environ={})
    assert config.spark.master == ""  # the shipped default: keep spark-submit's
    # spark-submit starts the Python driver with the gateway of its JVM in the environment
    assert choose_master(config, {"PYSPARK_GATEWAY_PORT": "40411"}) is None
    assert choose_master(config, {}) == "local[*]"  # run by hand: local mode


def test_a_configured_master_wins_everywhere():
    config = load_config(None, {"spark.master": "spark://10.0.0.5:7077"}, environ={})
    assert choose_master(config, {"PYSPARK_GATEWAY_PORT": "40411"}) == "spark://10.0.0.5:7077"
    assert choose_master(config, {}) == "spark://10.0.0.5:7077"
