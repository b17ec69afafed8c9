"""validate: check a day's listings against the contract; valid rows -> `listings`, the rest -> `quarantine`.

Reads ``{paths.listings_root}/dt=RUN_DATE/*.parquet``. File-level problems (a missing required
column, a column of a type Spark cannot read as the contract's, a file or folder that is not
Parquet) stop the run before anything is written, with one message naming every file and column
at fault. Extra columns are ignored (a warning). Row-level problems are checked by the Great
Expectations suite in ``schemas/expectations.py``; a failing row goes to the ``quarantine`` table
with the rule's name (``title_too_long``: more than ``validation.max_title_chars`` characters;
``text_valid_utf8``: a string column holds bytes that are not UTF-8). Duplicate ``listing_id``
within the day: the latest ``updated_at`` wins (on a tie, the later file name, then the later
row), the others are quarantined as ``listing_id_unique``. A row older than the version the
warehouse already holds from an earlier run date (a late replay: its ``updated_at`` is before the
stored one's) is quarantined as ``stale_update``, so it never replaces the newer version. Every
input row is accounted for: rows_in = rows_out + rows_quarantined.

A day folder that is absent, empty, or whose files hold no rows is a run with zero rows (a
warning; ``details.empty_day`` in run_metrics), unless ``validation.fail_on_empty_day`` is true.

    spark-submit jobs/validate.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from config.errors import DedupError
from jobs.stage import StageContext, StageResult, run_stage
from schemas.expectations import DEFAULT_MAX_TITLE_CHARS, TEXT_COLUMNS, ListingsValidator
from schemas.tables import (
    LISTINGS,
    LISTINGS_REQUIRED_COLUMNS,
    QUARANTINE,
    TABLES,
    VALIDATED_LISTINGS,
    to_ddl,
    to_ddl_type,
)

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
        DedupError: when the folder holds files that are not Parquet (by name: ``*.parquet``) or
            sub-folders, which would otherwise be skipped silently.
    """
    day = Path(listings_root) / f"dt={run_date}"
    if not day.is_dir():
        return []
    entries = sorted(p for p in day.iterdir() if not p.name.startswith(_IGNORED_PREFIXES))
    files = [p for p in entries if p.is_file()]
    foreign = [p.name for p in files if p.suffix != ".parquet"]
    folders = [p.name for p in entries if p.is_dir()]
    problems = []
    if foreign:
        problems.append(f"files that are not Parquet: {foreign}")
    if folders:
        problems.append(f"sub-folders, which are not read: {folders}")
    if problems:
        raise DedupError(
            f"{day} holds {' and '.join(problems)}; move them out of the day folder "
            "(names starting with '_' or '.' are ignored)"
        )
    return [str(p.resolve()) for p in files]


def type_problem(actual: pa.DataType, expected: pa.DataType) -> str | None:
    """Says why Spark cannot read a Parquet column of ``actual`` type as the contract's type.

    Args:
        actual: the column's type in the file (``pyarrow.parquet.read_schema``).
        expected: the contract's type (``LISTINGS``).

    Returns:
        None when Spark reads it (the same type; a wider string / binary / timestamp encoding; an
        8-32-bit integer or a float32 for a double; an all-null column, which ``read_day`` reads
        as nulls), else what to change.
    """
    if pa.types.is_dictionary(actual):  # e.g. a pandas categorical: stored as plain values
        actual = actual.value_type
    if actual == expected or pa.types.is_null(actual):
        return None
    if pa.types.is_timestamp(expected) and pa.types.is_timestamp(actual):
        if actual.unit == "ns":
            return (
                "Spark cannot read nanosecond timestamps; write microseconds (pyarrow: "
                "pq.write_table(..., coerce_timestamps='us', allow_truncated_timestamps=True), "
                "which pandas.DataFrame.to_parquet passes on)"
            )
        return None  # s / ms / us, with or without a time zone (naive values are read as UTC)
    if pa.types.is_string(expected) and (
        pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_string_view(actual)
    ):
        return None
    if pa.types.is_binary(expected) and (
        pa.types.is_binary(actual) or pa.types.is_large_binary(actual) or pa.types.is_binary_view(actual)
    ):
        return None
    if pa.types.is_floating(expected):
        if actual in (pa.float32(), pa.float64()):
            return None
        if pa.types.is_integer(actual) and actual.bit_width <= 32:
            return None
        return "cast it to double (Spark reads 8-32-bit integers and float32 as double, not this type)"
    return f"write it as {expected}"


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
                hint = type_problem(actual, field.type)
                if hint:
                    problems.append(
                        f"{file}: column '{field.name}' is {actual}, the contract says {field.type}; {hint}"
                    )
        extra = sorted(names - set(LISTINGS.names))
        if extra:
            warnings.append(f"{file}: ignoring columns not in the contract: {extra}")
    if problems:
        raise DedupError(
            "input files break the listings contract (schemas/tables.py LISTINGS); nothing was "
            "written for this date: fix or move these files and rerun:\n  - " + "\n  - ".join(problems)
        )
    return warnings


def count_rows(files: list[str]) -> int:
    """Returns the rows the files hold, from their Parquet footers (no data is read)."""
    return sum(pq.read_metadata(file).num_rows for file in files)


def read_day(spark, files: list[str]):
    """Reads a day's files with the contract's schema (absent optional columns become null).

    A column whose Parquet type is null (pandas writes an all-None column that way) cannot be read
    as the contract's type, so files are read in groups by such columns, without them, and the
    columns are added back as typed nulls.

    Returns:
        A DataFrame of ``LISTINGS`` columns plus ``source_file`` and a ``_row_id``.
    """
    from pyspark.sql import functions as F

    groups: dict[tuple[str, ...], list[str]] = {}
    for file in files:
        schema = pq.read_schema(file)
        nulls = tuple(
            f.name for f in LISTINGS if f.name in schema.names and pa.types.is_null(schema.field(f.name).type)
        )
        groups.setdefault(nulls, []).append(file)
    frame = None
    for nulls, members in sorted(groups.items()):
        present = [name for name in LISTINGS.names if name not in nulls]
        columns = [
            F.col(name) if name in present else F.lit(None).cast(to_ddl_type(LISTINGS.field(name).type)).alias(name)
            for name in LISTINGS.names
        ]
        part = (
            spark.read.schema(to_ddl(LISTINGS, present))
            .parquet(*members)
            .select(*columns, F.col("_metadata.file_path").alias("source_file"))
        )
        frame = part if frame is None else frame.unionByName(part)
    return frame.withColumn("_row_id", F.monotonically_increasing_id())


_VALIDATOR: list = []  # this Python worker's GX suite, built on first use


def validate_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: runs the GX listings suite on each batch.

    Args:
        batches: listing rows with ``_row_id``, ``listing_id``, ``supplier_id``, ``title``,
            ``updated_at``, ``_has_image_bytes``, ``image_uri``.

    Yields:
        ``_row_id``, ``rule``, ``detail`` for each row that broke a row rule.
    """
    if not _VALIDATOR:
        _VALIDATOR.append(ListingsValidator())
    validator = _VALIDATOR[0]
    for batch in batches:
        frame = batch.set_index("_row_id", drop=True)
        failed = validator.failed_rules(frame)
        out = pd.DataFrame(
            {
                "_row_id": failed.index.astype("int64"),
                "rule": failed["rule"].astype(str),
                "detail": failed["detail"].astype(str),
            }
        )
        yield out


VALIDATION_CHUNK_ROWS = 10_000
"""Rows per GX suite run. Spark's Arrow batches are ``spark.arrow_batch_rows`` (256) rows, sized for
the encoder; one GX run costs about the same for 256 rows as for 10,000, so batches are joined."""

VALIDATION_CHUNK_CHARS = 20_000_000
"""Title characters per GX suite run, so a day of huge titles does not pile up in one worker."""


def validate_chunks(batches):
    """mapInPandas body: ``validate_batches`` on chunks of up to
    ``VALIDATION_CHUNK_ROWS`` rows or ``VALIDATION_CHUNK_CHARS`` title characters."""

    def chunks():
        pending, rows, chars = [], 0, 0
        for batch in batches:
            pending.append(batch)
            rows += len(batch)
            chars += int(batch["title"].str.len().sum())
            if rows >= VALIDATION_CHUNK_ROWS or chars >= VALIDATION_CHUNK_CHARS:
                yield pd.concat(pending, ignore_index=True)
                pending, rows, chars = [], 0, 0
        if pending:
            yield pd.concat(pending, ignore_index=True)

    return validate_batches(chunks())


def _with_checked_text(frame, max_title_chars: int):
    """Adds the helper columns Spark computes for the GX suite (see ``schemas/expectations.py``).

    ``_title_within_limit``: the title has at most ``max_title_chars`` characters (0 = no limit);
    ``_utf8_problem``: the string columns whose bytes are not UTF-8 ("" when none);
    ``_text_valid_utf8``: no such column. Such bytes cannot be turned into Python strings, so the
    rows go to GX with their strings repaired (``make_valid_utf8``) and the rule flags them.
    """
    from pyspark.sql import functions as F

    title_ok = (
        F.lit(True)
        if max_title_chars == 0
        else F.coalesce(F.char_length("title") <= F.lit(max_title_chars), F.lit(True))
    )
    problem = F.concat_ws(", ", *[F.when(~F.is_valid_utf8(c), F.lit(c)) for c in TEXT_COLUMNS])
    return (
        frame.withColumn("_title_within_limit", title_ok)
        .withColumn("_utf8_problem", problem)
        .withColumn("_text_valid_utf8", F.col("_utf8_problem") == F.lit(""))
    )


def _detail(max_title_chars: int):
    """The quarantine ``detail``: the broken rules, then the numbers or columns behind them."""
    from pyspark.sql import functions as F

    return F.concat_ws(
        "; ",
        F.col("detail"),
        F.when(
            ~F.col("_title_within_limit"),
            F.format_string(
                "title has %d characters, validation.max_title_chars is %d",
                F.char_length("title"),
                F.lit(max_title_chars),
            ),
        ),
        F.when(~F.col("_text_valid_utf8"), F.concat(F.lit("not valid UTF-8: "), F.col("_utf8_problem"))),
    )


def stored_versions(listings, run_date: str):
    """Returns each listing's newest stored version from run dates before ``run_date``.

    Args:
        listings: the ``listings`` table.
        run_date: the run date D (its own partition is left out, so a rerun of D is unaffected).

    Returns:
        A DataFrame ``listing_id, _stored_updated_at, _stored_run_date``.
    """
    from pyspark.sql import functions as F

    return (
        listings.filter(F.col("run_date") < run_date)
        .groupBy("listing_id")
        .agg(
            F.max("updated_at").alias("_stored_updated_at"),
            F.max_by("run_date", "updated_at").alias("_stored_run_date"),
        )
    )


def split_valid(frame, run_date: str, max_title_chars: int = DEFAULT_MAX_TITLE_CHARS, stored=None):
    """Splits listing rows into valid rows and quarantine rows.

    Args:
        frame: the output of ``read_day`` (persisted by the caller: it is read twice).
        run_date: the run date stamped on both outputs.
        max_title_chars: ``validation.max_title_chars``; 0 = no limit.
        stored: ``stored_versions(...)``; a day winner older than its stored version is
            quarantined as ``stale_update``. None: no such check (no earlier days).

    Returns:
        ``(valid, quarantine, cached)``: DataFrames matching ``VALIDATED_LISTINGS`` and
        ``QUARANTINE``, and the persisted intermediate the caller unpersists when done.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    checked = _with_checked_text(frame, max_title_chars)
    checked_columns = checked.select(
        "_row_id",
        *[F.make_valid_utf8(c).alias(c) for c in ("listing_id", "supplier_id", "title", "image_uri")],
        "updated_at",
        "_title_within_limit",
        "_text_valid_utf8",
        F.col("image").isNotNull().alias("_has_image_bytes"),
    )
    failed = checked_columns.mapInPandas(validate_chunks, schema="_row_id BIGINT, rule STRING, detail STRING")
    # Persisted so the GX suite runs once, though both outputs read it.
    joined = checked.join(failed, on="_row_id", how="left").persist()
    row_bad = joined.filter(F.col("rule").isNotNull()).withColumn("detail", _detail(max_title_chars))
    row_ok = joined.filter(F.col("rule").isNull())

    latest_first = Window.partitionBy("listing_id").orderBy(
        F.col("updated_at").desc(), F.col("source_file").desc(), F.col("_row_id").desc()
    )
    ranked = row_ok.withColumn("_rank", F.row_number().over(latest_first)).withColumn(
        "_winner", F.first("updated_at").over(latest_first)
    )
    superseded = (
        ranked.filter(F.col("_rank") > 1)
        .withColumn("rule", F.lit("listing_id_unique"))
        .withColumn(
            "detail",
            F.concat(
                F.lit("superseded by a newer row with the same listing_id (updated_at "),
                F.col("_winner").cast("string"),
                F.lit(")"),
            ),
        )
    )
    winners = ranked.filter(F.col("_rank") == 1)
    stale = None
    if stored is not None:
        winners = winners.join(stored, on="listing_id", how="left")
        older = F.coalesce(F.col("updated_at") < F.col("_stored_updated_at"), F.lit(False))
        stale = (
            winners.filter(older)
            .withColumn("rule", F.lit("stale_update"))
            .withColumn(
                "detail",
                F.concat(
                    F.lit("older than the stored version of run_date "),
                    F.col("_stored_run_date"),
                    F.lit(" (updated_at "),
                    F.col("_stored_updated_at").cast("string"),
                    F.lit("); a late replay never replaces a newer version"),
                ),
            )
        )
        winners = winners.filter(~older)
    valid = (
        winners.withColumn("is_deleted", F.coalesce(F.col("is_deleted"), F.lit(False)))
        .withColumn("run_date", F.lit(run_date))
        .select(*VALIDATED_LISTINGS.names)
    )
    # Quarantined strings are repaired too, so any reader of the table can decode them.
    rejected = superseded.select(*TABLES["quarantine"].data_columns)
    if stale is not None:
        rejected = rejected.unionByName(stale.select(*TABLES["quarantine"].data_columns))
    quarantine = (
        row_bad.select(*TABLES["quarantine"].data_columns)
        .unionByName(rejected)
        .select(
            *[
                F.make_valid_utf8(c).alias(c) if c in ("listing_id", "supplier_id", "title") else c
                for c in TABLES["quarantine"].data_columns
            ]
        )
        .withColumn("run_date", F.lit(run_date))
    )
    return valid, quarantine, joined


def _empty_day(ctx: StageContext, message: str, files: int) -> StageResult:
    """Writes empty partitions for a day without rows, or fails when configured to."""
    from jobs.warehouse import publish

    if ctx.config.validation.fail_on_empty_day:
        raise DedupError(
            message + " (validation.fail_on_empty_day is true; set it to false to "
            "let a day without listings pass with zero rows)"
        )
    log.warning("%s: the run goes on with zero rows", message)
    partition = {"run_date": ctx.run_date}
    empty = {
        "quarantine": ctx.spark.createDataFrame([], schema=to_ddl(QUARANTINE)),
        "listings": ctx.spark.createDataFrame([], schema=to_ddl(VALIDATED_LISTINGS)),
    }
    publish(ctx.spark, empty, ctx.database, partition)
    return StageResult(0, 0, details={"files": files, "empty_day": True, "message": message})


def run(ctx: StageContext) -> StageResult:
    """Validates the run date's listings and writes `listings` and `quarantine`."""
    from jobs.warehouse import ensure_tables, publish

    day = f"{ctx.config.paths.listings_root}/dt={ctx.run_date}"
    files = list_day_files(ctx.config.paths.listings_root, ctx.run_date)
    partition = {"run_date": ctx.run_date}
    if not files:
        return _empty_day(ctx, f"no listings for {ctx.run_date}: no Parquet files under {day}", 0)
    for warning in check_file_schemas(files):
        log.warning(warning)
    if count_rows(files) == 0:
        return _empty_day(
            ctx,
            f"no listings for {ctx.run_date}: the {len(files)} Parquet file(s) under {day} hold zero rows",
            len(files),
        )

    max_title_chars = ctx.config.validation.max_title_chars
    frame = read_day(ctx.spark, files).persist()
    try:
        rows_in = frame.count()
        log.info("read %d rows from %d files", rows_in, len(files))
        ensure_tables(ctx.spark, ctx.database, ["listings"])
        stored = stored_versions(ctx.spark.table(f"{ctx.database}.listings"), ctx.run_date)
        valid, quarantine, cached = split_valid(frame, ctx.run_date, max_title_chars, stored)
        # Both tables are checked, then written together: a failed check leaves both as they were.
        written = publish(ctx.spark, {"quarantine": quarantine, "listings": valid}, ctx.database, partition)
        written_quarantine, written_valid = written["quarantine"], written["listings"]
        by_rule = {r["rule"]: r["count"] for r in quarantine.groupBy("rule").count().collect()}
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
    return StageResult(
        rows_in,
        written_valid,
        rows_quarantined=written_quarantine,
        details={"files": len(files), "quarantined_by_rule": by_rule},
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.validate, not __main__, so Spark pickles this module's functions by reference
    # and their per-worker caches (models, suites) live as long as the Python worker.
    from jobs.validate import main as _main

    sys.exit(_main())
