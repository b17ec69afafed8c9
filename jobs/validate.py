"""validate: check a day's listings against the contract; valid rows -> `listings`, the rest -> `quarantine`.

Reads ``{paths.listings_root}/dt=RUN_DATE/*.parquet``. File-level problems (a missing required
column, a column of the wrong type, a file that is not Parquet) stop the run with a message naming
the file and column. Row-level problems are checked by the Great Expectations suite in
``schemas/expectations.py``; a failing row goes to the ``quarantine`` table with the rule's name.
Duplicate ``listing_id`` within the day: the latest ``updated_at`` wins, the others are quarantined
as ``listing_id_unique``. Every input row is accounted for: rows_in = rows_out + rows_quarantined.

A day folder that is absent or empty is a run with zero rows (a warning), unless
``validation.fail_on_empty_day`` is true.

    spark-submit jobs/validate.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.errors import DedupError
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import LISTINGS, LISTINGS_REQUIRED_COLUMNS, QUARANTINE, TABLES, VALIDATED_LISTINGS, to_ddl

log = logging.getLogger(__name__)
STAGE = "validate"

_IGNORED_PREFIXES = ("_", ".")  # _SUCCESS, .crc and other writer side files, as Spark ignores them


def list_day_files(listings_root: str, run_date: str) -> list[str]:
    """Lists the Parquet files of one day.

    Args:
        listings_root: the folder holding ``dt=YYYY-MM-DD`` folders.
        run_date: the day.

    Returns:
        Sorted absolute paths; empty when the day folder is absent or empty.

    Raises:
        DedupError: when the folder holds files that are not Parquet.
    """
    day = Path(listings_root) / f"dt={run_date}"
    if not day.is_dir():
        return []
    files = sorted(p for p in day.iterdir() if p.is_file() and not p.name.startswith(_IGNORED_PREFIXES))
    foreign = [p.name for p in files if p.suffix != ".parquet"]
    if foreign:
        raise DedupError(
            f"{day} holds files that are not Parquet: {foreign}; move them out of the day folder "
            "(names starting with '_' or '.' are ignored)"
        )
    return [str(p.resolve()) for p in files]


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected:
        return True
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_binary(expected):
        return pa.types.is_binary(actual) or pa.types.is_large_binary(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    return False


def check_file_schemas(files: list[str]) -> list[str]:
    """Checks each file's Parquet schema against the listings contract.

    Args:
        files: Parquet file paths.

    Returns:
        Warnings (extra columns, which are ignored).

    Raises:
        DedupError: naming every file with a missing required column, a wrongly typed column, or
            an unreadable footer.
    """
    problems: list[str] = []
    warnings: list[str] = []
    for file in files:
        try:
            schema = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as exc:
            problems.append(f"{file}: not a readable Parquet file ({exc})")
            continue
        names = set(schema.names)
        for column in LISTINGS_REQUIRED_COLUMNS:
            if column not in names:
                problems.append(f"{file}: required column '{column}' is missing")
        for field in LISTINGS:
            if field.name in names:
                actual = schema.field(field.name).type
                if not _compatible(actual, field.type):
                    problems.append(f"{file}: column '{field.name}' is {actual}, the contract says {field.type}")
        extra = sorted(names - set(LISTINGS.names))
        if extra:
            warnings.append(f"{file}: ignoring columns not in the contract: {extra}")
    if problems:
        raise DedupError(
            "input files break the listings contract (schemas/tables.py LISTINGS):\n  - "
            + "\n  - ".join(problems)
        )
    return warnings


def read_day(spark, files: list[str]):
    """Reads a day's files with the contract's schema (absent optional columns become null).

    Returns:
        A DataFrame of ``LISTINGS`` columns plus ``source_file`` and a ``_row_id``.
    """
    from pyspark.sql import functions as F

    frame = spark.read.schema(to_ddl(LISTINGS)).parquet(*files)
    return frame.select(
        *LISTINGS.names,
        F.col("_metadata.file_path").alias("source_file"),
    ).withColumn("_row_id", F.monotonically_increasing_id())


def split_valid(frame, run_date: str):
    """Splits listing rows into valid rows and quarantine rows.

    Args:
        frame: the output of ``read_day`` (persisted by the caller: it is read twice).
        run_date: the run date stamped on both outputs.

    Returns:
        ``(valid, quarantine, cached)``: DataFrames matching ``VALIDATED_LISTINGS`` and
        ``QUARANTINE``, and the persisted intermediate the caller unpersists when done.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.executor import validate_batches

    checked_columns = frame.select(
        "_row_id", "listing_id", "supplier_id", "title", "updated_at", "image_uri",
        F.col("image").isNotNull().alias("_has_image_bytes"),
    )
    failed = checked_columns.mapInPandas(validate_batches, schema="_row_id BIGINT, rule STRING, detail STRING")
    # Persisted so the GX suite runs once, though both outputs read it.
    joined = frame.join(failed, on="_row_id", how="left").persist()
    row_bad = joined.filter(F.col("rule").isNotNull())
    row_ok = joined.filter(F.col("rule").isNull())

    latest_first = Window.partitionBy("listing_id").orderBy(
        F.col("updated_at").desc(), F.col("source_file").desc(), F.col("_row_id").desc()
    )
    ranked = row_ok.withColumn("_rank", F.row_number().over(latest_first)).withColumn(
        "_winner", F.first("updated_at").over(latest_first)
    )
    superseded = ranked.filter(F.col("_rank") > 1).withColumn("rule", F.lit("listing_id_unique")).withColumn(
        "detail", F.concat(F.lit("superseded by a newer row with the same listing_id (updated_at "),
                           F.col("_winner").cast("string"), F.lit(")"))
    )
    valid = (
        ranked.filter(F.col("_rank") == 1)
        .withColumn("is_deleted", F.coalesce(F.col("is_deleted"), F.lit(False)))
        .withColumn("run_date", F.lit(run_date))
        .select(*VALIDATED_LISTINGS.names)
    )
    quarantine = (
        row_bad.select(*TABLES["quarantine"].data_columns)
        .unionByName(superseded.select(*TABLES["quarantine"].data_columns))
        .withColumn("run_date", F.lit(run_date))
    )
    return valid, quarantine, joined


def run(ctx: StageContext) -> StageResult:
    """Validates the run date's listings and writes `listings` and `quarantine`."""
    from jobs.warehouse import replace_partition

    files = list_day_files(ctx.config.paths.listings_root, ctx.run_date)
    partition = {"run_date": ctx.run_date}
    if not files:
        message = f"no listings for {ctx.run_date} under {ctx.config.paths.listings_root}/dt={ctx.run_date}"
        if ctx.config.validation.fail_on_empty_day:
            raise DedupError(message + " (validation.fail_on_empty_day is true)")
        log.warning("%s: the run goes on with zero rows", message)
        empty = ctx.spark.createDataFrame([], schema=to_ddl(VALIDATED_LISTINGS))
        replace_partition(ctx.spark, empty, ctx.database, "listings", partition)
        replace_partition(ctx.spark, ctx.spark.createDataFrame([], schema=to_ddl(QUARANTINE)),
                          ctx.database, "quarantine", partition)
        return StageResult(0, 0, details={"files": 0, "empty_day": True})

    for warning in check_file_schemas(files):
        log.warning(warning)
    frame = read_day(ctx.spark, files).persist()
    try:
        rows_in = frame.count()
        log.info("read %d rows from %d files", rows_in, len(files))
        valid, quarantine, cached = split_valid(frame, ctx.run_date)
        written_quarantine = replace_partition(ctx.spark, quarantine, ctx.database, "quarantine", partition)
        by_rule = {r["rule"]: r["count"] for r in quarantine.groupBy("rule").count().collect()}
        written_valid = replace_partition(ctx.spark, valid, ctx.database, "listings", partition)
        cached.unpersist()
    finally:
        frame.unpersist()
    if written_valid + written_quarantine != rows_in:
        raise DedupError(
            f"row accounting broken: read {rows_in}, validated {written_valid}, "
            f"quarantined {written_quarantine}; rerun the stage"
        )
    for rule, count in sorted(by_rule.items()):
        log.warning("quarantined %d rows: %s", count, rule)
    return StageResult(rows_in, written_valid, rows_quarantined=written_quarantine,
                       details={"files": len(files), "quarantined_by_rule": by_rule})


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
