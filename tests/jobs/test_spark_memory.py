"""The driver heap check: a JVM smaller than spark.driver_memory is named with the fix."""

from __future__ import annotations

import dataclasses
import logging

import pytest

pytestmark = pytest.mark.spark


def test_a_driver_heap_smaller_than_configured_is_warned_about(spark, pipeline_config, caplog):
    from jobs.spark import check_driver_memory, jvm_bytes

    heap = int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
    assert heap >= 0.85 * jvm_bytes(pipeline_config.spark.driver_memory)  # the session got what it asked
    with caplog.at_level(logging.WARNING, logger="jobs.spark"):
        check_driver_memory(spark, pipeline_config)
    assert not caplog.records
    bigger = dataclasses.replace(
        pipeline_config, spark=dataclasses.replace(pipeline_config.spark, driver_memory="512g")
    )
    with caplog.at_level(logging.WARNING, logger="jobs.spark"):
        check_driver_memory(spark, bigger)
    assert "--driver-memory 512g" in "\n".join(caplog.messages)
