"""Warehouse tables: created from the contracts in ``schemas``, written one partition at a time.

Every write goes through ``replace_partition``: the DataFrame is checked against the table's
contract, then written with ``INSERT OVERWRITE`` under dynamic partition overwrite, so a rerun of a
run date replaces exactly that date's partition and nothing else. Spark stages the new files in a
``.spark-staging-*`` directory and moves them into place at job commit, so readers never see a
half-written partition. An empty result drops the partition, so a rerun that finds nothing does
not leave yesterday's answer in place.
"""

from __future__ import annotations

import logging

from jobs.errors import DedupError
from schemas.tables import TABLES, TableSpec, to_ddl

log = logging.getLogger(__name__)

_ENSURED: set[tuple[int, str, str]] = set()  # (id(spark), database, table) created in this process


def qualified(database: str, table: str) -> str:
    """Returns ``database.table`` for a table name from ``schemas.tables.TABLES``."""
    if table not in TABLES:
        raise DedupError(f"unknown table {table!r}; known tables: {sorted(TABLES)}")
    return f"{database}.{table}"


def ensure_tables(spark, database: str, names: list[str] | None = None) -> None:
    """Creates the database and the named tables (all when None) if they do not exist.

    Args:
        spark: the SparkSession.
        database: the Hive database, e.g. ``"dedup"``.
        names: table names from ``TABLES``.
    """
    wanted = [n for n in (names if names is not None else list(TABLES)) if (id(spark), database, n) not in _ENSURED]
    if not wanted:
        return
    if (id(spark), database, "") not in _ENSURED:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        _ENSURED.add((id(spark), database, ""))
    for name in wanted:
        _ENSURED.add((id(spark), database, name))
        spec = TABLES[name]
        spark.sql(
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{name}` ({to_ddl(spec.schema)}) "
            f"USING parquet PARTITIONED BY ({', '.join(spec.partition_by)})"
        )


def check_schema(df, spec: TableSpec) -> None:
    """Checks that a DataFrame has exactly the table's columns with the contract's types.

    Args:
        df: the DataFrame about to be written.
        spec: the table's contract.

    Raises:
        DedupError: naming every missing, extra or mistyped column.
    """
    from pyspark.sql.types import StructType

    # Compared as type strings: nullability is not part of the contract.
    expected = {f.name: f.dataType.simpleString() for f in StructType.fromDDL(to_ddl(spec.schema)).fields}
    actual = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    problems = [f"missing column {n}" for n in expected if n not in actual]
    problems += [f"unexpected column {n}" for n in actual if n not in expected]
    problems += [
        f"column {n} is {actual[n]}, contract says {t}"
        for n, t in expected.items()
        if n in actual and actual[n] != t
    ]
    if problems:
        raise DedupError(f"output for table {spec.name} breaks its contract: " + "; ".join(problems))


def replace_partition(spark, df, database: str, table: str, partition: dict[str, str]) -> int:
    """Atomically replaces one partition of a table with the rows of ``df``.

    Args:
        spark: the SparkSession.
        df: rows to write; must match the table's contract and carry the partition values.
        database: the Hive database.
        table: a table name from ``TABLES``.
        partition: the partition being replaced, e.g. ``{"run_date": "2024-03-01"}``; every row of
            ``df`` must belong to it.

    Returns:
        The number of rows written.
    """
    from pyspark.sql import functions as F

    spec = TABLES[table]
    if set(partition) != set(spec.partition_by):
        raise DedupError(f"table {table} is partitioned by {spec.partition_by}, got {partition}")
    check_schema(df, spec)
    ensure_tables(spark, database, [table])
    name = qualified(database, table)
    ordered = df.select(*spec.data_columns, *spec.partition_by)
    ordered = ordered.persist()
    try:
        inside = F.expr(" AND ".join(f"`{k}` <=> '{v}'" for k, v in partition.items()))
        counts = ordered.agg(F.count(F.lit(1)).alias("rows"),
                             F.sum((~inside).cast("long")).alias("outside")).first()
        if counts["outside"]:
            raise DedupError(f"{counts['outside']} rows for table {table} fall outside partition {partition}")
        rows = int(counts["rows"])
        if rows == 0:
            spec_sql = ", ".join(f"{k}='{v}'" for k, v in partition.items())
            spark.sql(f"ALTER TABLE {name} DROP IF EXISTS PARTITION ({spec_sql})")
        else:
            ordered.write.insertInto(name, overwrite=True)
    finally:
        ordered.unpersist()
    log.info("wrote %d rows to %s %s", rows, name, partition)
    return rows
