"""Warehouse tables: created from the contracts in ``schemas``, written one partition at a time.

Every write goes through ``replace_partition``: the DataFrame is checked against the table's
contract, then written with ``INSERT OVERWRITE`` under dynamic partition overwrite, so a rerun of a
run date replaces exactly that date's partition and nothing else. Spark stages the new files in a
``.spark-staging-*`` directory and moves them into place at job commit, so readers never see a
half-written partition. An empty result drops the partition, so a rerun that finds nothing does
not leave yesterday's answer in place.

Stages write their outputs through ``publish``: it first runs each output's Great Expectations
suite (``schemas.expectations.OUTPUT_RULES``: unit-norm vectors of the model's width, pairs inside
one supplier with similarities in [-1, 1], groups of two or more members, a listing in at most one
group) on the DataFrames about to be written, and writes nothing at all unless every rule passes.
A failure raises ``DedupError`` naming the table, the rule and a few offending ids, so the stage
exits 2 and the previous partitions stay as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from config.errors import DedupError
from schemas.tables import TABLES, TableSpec, to_ddl

log = logging.getLogger(__name__)

_ENSURED: set[tuple[int, str, str]] = set()  # (id(spark), database, table) created in this process
_OUTPUT_VALIDATOR: list[Any] = []  # the process's schemas.expectations.OutputValidator, built on first use


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
        f"column {n} is {actual[n]}, contract says {t}" for n, t in expected.items() if n in actual and actual[n] != t
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
        counts = ordered.agg(F.count(F.lit(1)).alias("rows"), F.sum((~inside).cast("long")).alias("outside")).first()
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


def with_pair_suppliers(pairs, listing_suppliers):
    """Adds the supplier of each side's listing to pairs, for the ``pair_within_one_supplier`` rule.

    Args:
        pairs: rows of the ``pairs`` contract.
        listing_suppliers: one row per listing with ``listing_id`` and ``supplier_id`` (the
            catalogue the pairs were found in).

    Returns:
        ``pairs`` with ``_supplier_id_l`` / ``_supplier_id_r`` (null for a listing not in
        ``listing_suppliers``).
    """
    from pyspark.sql import functions as F

    from schemas.expectations import PAIR_SUPPLIER_COLUMNS

    lookup = listing_suppliers.select("listing_id", "supplier_id")
    out = pairs
    for side, helper in zip(("listing_id_l", "listing_id_r"), PAIR_SUPPLIER_COLUMNS, strict=True):
        # Fresh aliases: pairs and the lookup often descend from the same table.
        side_lookup = lookup.select(F.col("listing_id").alias(side), F.col("supplier_id").alias(helper))
        out = out.join(side_lookup, on=side, how="left")
    return out


def check_output(df, table: str, *, embedding_dim: int | None = None, listing_suppliers=None) -> list:
    """Runs a table's output suite on the DataFrame about to be written.

    Args:
        df: the rows about to be written (the table's contract columns).
        table: a table name from ``TABLES``; tables without output rules are not checked.
        embedding_dim: the encoder's vector width; needed for ``embeddings``.
        listing_suppliers: ``listing_id`` / ``supplier_id`` of every listing the pairs may link;
            needed for ``pairs``.

    Returns:
        A list of ``schemas.expectations.RuleResult``, one per rule (empty for unchecked tables).

    Raises:
        ValueError: when a check's input (``embedding_dim``, ``listing_suppliers``) is missing.
    """
    from schemas.expectations import OUTPUT_RULES, OutputValidator

    if table not in OUTPUT_RULES:
        return []
    if table == "pairs":
        if listing_suppliers is None:
            raise ValueError("checking pairs needs listing_suppliers (listing_id, supplier_id)")
        df = with_pair_suppliers(df, listing_suppliers)
    if table == "embeddings" and embedding_dim is None:
        raise ValueError("checking embeddings needs embedding_dim, the encoder's vector width")
    if not _OUTPUT_VALIDATOR:
        _OUTPUT_VALIDATOR.append(OutputValidator())
    return _OUTPUT_VALIDATOR[0].check(table, df, embedding_dim=embedding_dim)


def publish(
    spark,
    outputs: Mapping[str, Any],
    database: str,
    partition: dict[str, str],
    *,
    embedding_dim: int | None = None,
    listing_suppliers=None,
) -> dict[str, int]:
    """Checks every output, then replaces each one's partition; writes nothing if any check fails.

    Args:
        spark: the SparkSession.
        outputs: table name -> the DataFrame to write into it, written in this order.
        database: the Hive database.
        partition: the partition every output replaces, e.g. ``{"run_date": "2024-03-01"}``.
        embedding_dim: the encoder's vector width (checks ``embeddings``).
        listing_suppliers: ``listing_id`` / ``supplier_id`` of the listings pairs may link
            (checks ``pairs``).

    Returns:
        Table name -> rows written.

    Raises:
        DedupError: an output breaks its contract or an output rule; the message names the table,
            the rule and a few offending ids. No partition has been touched.
    """
    for table, df in outputs.items():
        if table not in TABLES:
            raise DedupError(f"unknown table {table!r}; known tables: {sorted(TABLES)}")
        check_schema(df, TABLES[table])
    failures = [
        result
        for table, df in outputs.items()
        for result in check_output(df, table, embedding_dim=embedding_dim, listing_suppliers=listing_suppliers)
        if not result.success
    ]
    if failures:
        raise DedupError(
            f"output checks failed, nothing was written for {partition} (the previous partitions are "
            "unchanged): "
            + " | ".join(r.describe() for r in failures)
            + ". Fix the stage's input or code and rerun the stage for this date."
        )
    return {table: replace_partition(spark, df, database, table, partition) for table, df in outputs.items()}
