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

import pandas as pd

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
        create_if_missing(spark, f"CREATE DATABASE IF NOT EXISTS `{database}`")
        _ENSURED.add((id(spark), database, ""))
    for name in wanted:
        _ENSURED.add((id(spark), database, name))
        spec = TABLES[name]
        create_if_missing(
            spark,
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{name}` ({to_ddl(spec.schema)}) "
            f"USING parquet PARTITIONED BY ({', '.join(spec.partition_by)})",
        )
        upgrade_table(spark, database, spec)


def create_if_missing(spark, statement: str) -> None:
    """Runs a ``CREATE ... IF NOT EXISTS`` that another application may be running at the same time.

    On a shared metastore two jobs can both see the table missing and both create it; the
    metastore then refuses the second, which Spark reports as "already exists" although the
    statement said IF NOT EXISTS. The object exists either way, which is all the caller asked.
    """
    from pyspark.errors import AnalysisException

    try:
        spark.sql(statement)
    except AnalysisException as error:
        if "ALREADY_EXISTS" not in (error.getCondition() or "") and "already exists" not in str(error):
            raise
        log.info("created by another job at the same time: %s", statement.split("(")[0].strip())


def upgrade_table(spark, database: str, spec: TableSpec) -> None:
    """Adds the contract's new trailing columns to a table created by an older version.

    Old files read the added columns as null. A table whose columns are not a prefix of the
    contract's (renamed, reordered, retyped) cannot be upgraded in place.

    Raises:
        DedupError: the table's columns do not match the contract's; the message says what to do.
    """
    from pyspark.sql.types import StructType

    name = f"`{database}`.`{spec.name}`"
    fields = [f for f in spark.table(name).schema.fields if f.name not in spec.partition_by]
    existing = [f.name for f in fields]
    wanted = spec.data_columns
    contract = {f.name: f.dataType.simpleString() for f in StructType.fromDDL(to_ddl(spec.schema)).fields}
    retyped = [
        f"{f.name} {f.dataType.simpleString()} (the contract: {contract[f.name]})"
        for f in fields
        if f.name in contract and f.dataType.simpleString() != contract[f.name]
    ]
    if retyped:
        # e.g. vectors stored as array<float> before schemas.vectors' float16 bytes
        raise DedupError(
            f"table {database}.{spec.name} was made by an incompatible version: columns {retyped}. "
            f"Move the warehouse away (or DROP TABLE {database}.{spec.name}) and backfill the dates "
            "(dedup_backfill) so they are rebuilt in today's layout"
        )
    if existing == wanted:
        return
    if wanted[: len(existing)] != existing:
        raise DedupError(
            f"table {database}.{spec.name} has columns {existing}, the contract {wanted}: it was made by an "
            f"incompatible version. Move it away (or DROP TABLE {database}.{spec.name}) and backfill"
        )
    added = wanted[len(existing) :]
    log.warning("upgrading table %s.%s: adding columns %s (null in earlier rows)", database, spec.name, added)
    spark.sql(f"ALTER TABLE {name} ADD COLUMNS ({to_ddl(spec.schema, added)})")


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


def _partition_sql(values: Mapping[str, Any]) -> str:
    return ", ".join(f"`{k}`={v}" if isinstance(v, int) else f"`{k}`='{v}'" for k, v in values.items())


def list_partitions(spark, database: str, table: str, partition: Mapping[str, str] | None = None) -> list[dict]:
    """Returns the table's partitions (all, or those inside ``partition``) as column -> value dicts.

    Values are strings, as the metastore keeps them (``{"run_date": "2024-03-01", "stage": "pairs"}``).
    """
    ensure_tables(spark, database, [table])
    sql = f"SHOW PARTITIONS {qualified(database, table)}"
    if partition:
        sql += f" PARTITION ({_partition_sql(partition)})"
    rows = spark.sql(sql).collect()
    return [dict(part.split("=", 1) for part in row[0].split("/")) for row in rows]


def stage_run_dates(spark, database: str, stage: str) -> list[str]:
    """Returns the run dates a stage has finished (its ``run_metrics`` rows), oldest first."""
    return sorted(p["run_date"] for p in list_partitions(spark, database, "run_metrics") if p.get("stage") == stage)


def previous_run_date(spark, database: str, stage: str, run_date: str) -> str | None:
    """Returns the latest run date before ``run_date`` that ``stage`` finished, or None."""
    earlier = [d for d in stage_run_dates(spark, database, stage) if d < run_date]
    return earlier[-1] if earlier else None


def previous_night(spark, database: str, stage: str, run_date: str, needs: str, why: str) -> str | None:
    """Checks the chain a stage builds on; returns the previous catalogued night (None: the first).

    Args:
        stage: the stage asking; it must have finished the previous catalogued night.
        needs: the stage that must have finished ``run_date`` first.
        why: what the previous night's output is needed for (for the message).

    Raises:
        DedupError: ``needs`` has not run for ``run_date``, or ``stage`` did not finish the
            previous night; the message says what to rerun.
    """
    if run_date not in stage_run_dates(spark, database, needs):
        raise DedupError(f"the {needs} stage has not run for {run_date}: run it first")
    previous = previous_run_date(spark, database, "catalog", run_date)
    if previous is not None and previous not in stage_run_dates(spark, database, stage):
        raise DedupError(
            f"the {stage} stage did not finish for {previous}, the previous catalogued night, so {why}: "
            f"rerun {previous} first (dedup_backfill start_date={previous})"
        )
    return previous


def replace_partition(spark, df, database: str, table: str, partition: dict[str, str]) -> int:
    """Atomically replaces one partition of a table with the rows of ``df``.

    Args:
        spark: the SparkSession.
        df: rows to write; must match the table's contract and carry the partition values.
        database: the Hive database.
        table: a table name from ``TABLES``.
        partition: the partition being replaced, e.g. ``{"run_date": "2024-03-01"}``; every row of
            ``df`` must belong to it. For a table with more partition columns (``catalog``:
            run date, then supplier bucket) it names the leading ones, and every sub-partition
            under it is replaced: those the rows fill are overwritten, the others dropped.

    Returns:
        The number of rows written.
    """
    from pyspark.sql import functions as F

    spec = TABLES[table]
    if list(partition) != list(spec.partition_by[: len(partition)]) or not partition:
        raise DedupError(f"table {table} is partitioned by {spec.partition_by}, got {partition}")
    check_schema(df, spec)
    ensure_tables(spark, database, [table])
    name = qualified(database, table)
    ordered = df.select(*spec.data_columns, *spec.partition_by)
    ordered = ordered.persist()
    sub_columns = list(spec.partition_by[len(partition) :])
    try:
        inside = F.expr(" AND ".join(f"`{k}` <=> '{v}'" for k, v in partition.items()))
        counts = ordered.agg(F.count(F.lit(1)).alias("rows"), F.sum((~inside).cast("long")).alias("outside")).first()
        if counts["outside"]:
            raise DedupError(f"{counts['outside']} rows for table {table} fall outside partition {partition}")
        rows = int(counts["rows"])
        written: set[tuple[str, ...]] = set()
        if rows and sub_columns:
            written = {tuple(str(v) for v in r) for r in ordered.select(*sub_columns).distinct().collect()}
        if rows:
            ordered.write.insertInto(name, overwrite=True)
        # Dynamic overwrite replaces only the partitions the rows fill: drop the rest of this
        # partition (all of it when nothing was found), so a rerun never keeps an old answer.
        for existing in list_partitions(spark, database, table, partition) if sub_columns or not rows else []:
            if not rows or tuple(existing[c] for c in sub_columns) not in written:
                spark.sql(f"ALTER TABLE {name} DROP IF EXISTS PARTITION ({_partition_sql(existing)})")
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


def _stored_norms(values: pd.Series) -> pd.Series:
    """pandas UDF body: the norms of a column of stored vectors (``schemas.vectors.vector_norms``)."""
    from schemas.vectors import vector_norms

    return pd.Series(vector_norms([None if v is None else bytes(v) for v in values]))


def with_vector_norms(embeddings):
    """Adds ``VECTOR_NORM_COLUMNS``: each stored vector's norm, for the embeddings output rules.

    Spark SQL cannot read float16 bytes, so a pandas UDF decodes them (``schemas.vectors``).
    """
    from pyspark.sql import functions as F

    from schemas.expectations import VECTOR_NORM_COLUMNS
    from schemas.vectors import VECTOR_COLUMNS

    norms = F.pandas_udf(_stored_norms, "double")
    out = embeddings
    for column, helper in zip(VECTOR_COLUMNS, VECTOR_NORM_COLUMNS, strict=True):
        # a null vector stays null (the rule exempts it); a malformed one is NaN and fails the rule
        out = out.withColumn(helper, F.when(F.col(column).isNotNull(), norms(F.col(column))))
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
    if table == "embeddings":
        if embedding_dim is None:
            raise ValueError("checking embeddings needs embedding_dim, the stored vector width")
        df = with_vector_norms(df)
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
