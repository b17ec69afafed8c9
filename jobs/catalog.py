"""catalog: the catalogue as of the run date, the latest embedding of every live listing -> `catalog`.

Night D's catalogue is night D-1's (the previous run date this stage finished) with D's
embeddings merged in: a listing embedded on D replaces its old row (``embedded_on`` = D), a
deleted or unembeddable one leaves, every other row is carried over unchanged. So the nightly cost
grows with the catalogue, not with the ``embeddings`` history. Without a previous catalogue (the
first night, or a warehouse from before this table) it is built from the whole embeddings history
once: each listing's latest embedding up to D, the same rows the nightly merge gives.

Rows carry the embedded listing's title, brand, price and currency (for the pair verifier),
``first_seen`` (the run date the listing entered the catalogue) and are partitioned by run date
and ``supplier_bucket`` = ``pmod(xxhash64(supplier_id), warehouse.supplier_buckets)``, so the
pairs stage reads only the folders of the day's suppliers.

    spark-submit jobs/catalog.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import logging
import sys

from config.errors import DedupError
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import TABLES
from schemas.vectors import VECTOR_BUDGET_BYTES, VECTOR_COLUMNS

log = logging.getLogger(__name__)
STAGE = "catalog"
ATTRIBUTES = ("title", "brand", "price", "currency")
"""The listing columns the catalogue carries for the pair verifier."""


def supplier_bucket(n_buckets: int):
    """Returns the Spark column expression of a row's supplier bucket, in ``0 .. n_buckets - 1``."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64("supplier_id"), F.lit(n_buckets)).cast("int")


def suppliers_buckets(suppliers: list[str], spark, n_buckets: int) -> list[int]:
    """Returns the sorted supplier buckets of the given supplier ids (computed by Spark)."""
    if not suppliers:
        return []
    frame = spark.createDataFrame([(s,) for s in suppliers], "supplier_id STRING")
    return sorted({int(r[0]) for r in frame.select(supplier_bucket(n_buckets)).collect()})


def _latest_per_listing(frame, *order):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("listing_id").orderBy(*(F.col(c).desc() for c in order))
    return frame.withColumn("_rank", F.row_number().over(latest)).filter("_rank = 1").drop("_rank")


def _listing_attributes(listings):
    """One row of ATTRIBUTES per (listing_id, run_date, updated_at) of the ``listings`` table."""
    from pyspark.sql import functions as F

    return listings.select(
        F.col("listing_id").alias("listing_id"),
        F.col("run_date").alias("embedded_on"),
        F.col("updated_at").alias("updated_at"),
        *(F.col(c).alias(c) for c in ATTRIBUTES),
    ).dropDuplicates(["listing_id", "embedded_on", "updated_at"])


_VECTOR_COLUMNS = ("listing_id", "supplier_id", "updated_at", "has_text", "has_image", "emb_m", "emb_t", "emb_i")


def merge_day(previous, day_embeddings, listings, run_date: str):
    """Night D's catalogue from night D-1's and D's embeddings.

    Args:
        previous: the previous night's ``catalog`` rows (every bucket).
        day_embeddings: the ``embeddings`` rows of the run date (tombstones included).
        listings: the ``listings`` rows the day's embeddings came from (their attributes); a
            re-embedded listing not among them keeps the attributes of its previous row.
        run_date: D.

    Returns:
        Catalogue rows without ``run_date`` / ``supplier_bucket``.
    """
    from pyspark.sql import functions as F

    day = _latest_per_listing(day_embeddings, "updated_at")
    kept = previous.join(day.select("listing_id"), on="listing_id", how="left_anti")
    fresh = day.filter("NOT is_deleted AND emb_m IS NOT NULL").select(*_VECTOR_COLUMNS, "model_version")
    attributes = _listing_attributes(listings).filter(F.col("embedded_on") == run_date).drop("embedded_on")
    # One join with the previous catalogue (one row per listing): its first_seen always, its
    # attributes only for the same version of the listing (a re-embedded one).
    carried = previous.select(
        "listing_id",
        F.col("updated_at").alias("_old_updated_at"),
        F.col("first_seen").alias("_first_seen"),
        *(F.col(c).alias(f"_old_{c}") for c in ATTRIBUTES),
    )
    fresh = fresh.join(attributes, on=["listing_id", "updated_at"], how="left").join(
        carried, on="listing_id", how="left"
    )
    same_version = F.col("_old_updated_at") == F.col("updated_at")  # null (no) when either is null
    fresh = fresh.select(
        *_VECTOR_COLUMNS,
        "model_version",
        *(F.coalesce(F.col(c), F.when(same_version, F.col(f"_old_{c}"))).alias(c) for c in ATTRIBUTES),
        F.lit(run_date).alias("embedded_on"),
        F.coalesce("_first_seen", F.lit(run_date)).alias("first_seen"),
    )
    columns = TABLES["catalog"].data_columns
    return kept.select(*columns).unionByName(fresh.select(*columns))


def catalogue_from_history(embeddings, listings, run_date: str):
    """Night D's catalogue from the whole embeddings history (first night, or no previous catalogue).

    Each listing's latest embedding up to D (by run date, then ``updated_at``), if it has vectors;
    ``first_seen`` is its earliest run date since it last left (a tombstone or an unembeddable
    version), as the nightly merge would have kept it.

    Returns:
        Catalogue rows without ``run_date`` / ``supplier_bucket``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    history = embeddings.filter(F.col("run_date") <= run_date)
    left = F.col("is_deleted") | F.col("emb_m").isNull()
    per_listing = Window.partitionBy("listing_id")
    stays = (
        history.withColumn("_left_on", F.max(F.when(left, F.col("run_date"))).over(per_listing))
        .filter(F.col("_left_on").isNull() | (F.col("run_date") > F.col("_left_on")))
        .withColumn("first_seen", F.min("run_date").over(per_listing))
    )
    latest = _latest_per_listing(stays, "run_date", "updated_at").withColumnRenamed("run_date", "embedded_on")
    joined = latest.join(_listing_attributes(listings), on=["listing_id", "embedded_on", "updated_at"], how="left")
    return joined.select(*TABLES["catalog"].data_columns)


def build_catalogue(spark, database: str, run_date: str):
    """Returns ``(rows, previous)``: night D's catalogue rows (without partition columns) and the
    previous catalogue's run date it was merged from (None: built from the history).

    Raises:
        DedupError: a date between the previous catalogue and D has embeddings but no catalogue
            (the chain is broken: the message names the dates to run first).
    """
    from pyspark.sql import functions as F

    from jobs.warehouse import list_partitions, previous_run_date

    embeddings = spark.table(f"{database}.embeddings")
    listings = spark.table(f"{database}.listings")
    previous = previous_run_date(spark, database, STAGE, run_date)
    if previous is None:
        log.info("no catalogue before %s: building it from the embeddings history", run_date)
        return catalogue_from_history(embeddings, listings, run_date), None
    skipped = sorted(
        {p["run_date"] for p in list_partitions(spark, database, "embeddings") if previous < p["run_date"] < run_date}
    )
    if skipped:
        raise DedupError(
            f"the catalogue of {run_date} would miss the embeddings of {skipped}: the last catalogue is "
            f"{previous}'s. Run the nightly for those dates first, in order (dedup_backfill start_date="
            f"{skipped[0]})"
        )
    log.info("merging %s's embeddings into the catalogue of %s", run_date, previous)
    rows = merge_day(
        spark.table(f"{database}.catalog").filter(F.col("run_date") == previous),
        embeddings.filter(F.col("run_date") == run_date),
        listings.filter(F.col("run_date") == run_date),
        run_date,
    )
    return rows, previous


def read_catalogue(spark, database: str, run_date: str, buckets: list[int] | None = None):
    """Reads night D's catalogue, only the given supplier buckets' folders when ``buckets`` is set."""
    from pyspark.sql import functions as F

    catalogue = spark.table(f"{database}.catalog").filter(F.col("run_date") == run_date)
    if buckets is not None:
        # a literal list, so Spark prunes the partitions when it plans the scan
        catalogue = catalogue.filter(F.col("supplier_bucket").isin([int(b) for b in buckets]))
    return catalogue


def run(ctx: StageContext) -> StageResult:
    """Builds the run date's catalogue and writes its `catalog` partitions."""
    from pyspark.sql import functions as F

    from jobs.warehouse import ensure_tables, publish

    ensure_tables(ctx.spark, ctx.database, ["listings", "embeddings", "catalog"])
    day = ctx.spark.table(f"{ctx.database}.embeddings").filter(F.col("run_date") == ctx.run_date)
    rows_in = day.count()
    rows, previous = build_catalogue(ctx.spark, ctx.database, ctx.run_date)
    n_buckets = ctx.config.warehouse.supplier_buckets
    out = (
        rows.withColumn("run_date", F.lit(ctx.run_date))
        .withColumn("supplier_bucket", supplier_bucket(n_buckets))
        # one sorted file set per bucket: reruns write the same files
        .repartition("supplier_bucket")
        .sortWithinPartitions("supplier_id", "listing_id")
        .persist()
    )
    # the vector bytes a listing takes (schemas.vectors: the budget is per catalogue listing)
    vector_bytes = sum(F.coalesce(F.octet_length(c), F.lit(0)) for c in VECTOR_COLUMNS)
    try:
        stats = out.agg(
            F.count(F.lit(1)).alias("listings"),
            F.countDistinct("supplier_id").alias("suppliers"),
            F.sum((F.col("embedded_on") == ctx.run_date).cast("long")).alias("embedded_today"),
            F.sum((F.col("first_seen") == ctx.run_date).cast("long")).alias("arrived_today"),
            F.max(vector_bytes).alias("vector_bytes_max"),
            F.sum(vector_bytes.cast("long")).alias("vector_bytes"),
        ).first()
        versions = {r[0]: int(r[1]) for r in out.groupBy("model_version").count().collect()}
        written = publish(ctx.spark, {"catalog": out}, ctx.database, {"run_date": ctx.run_date})["catalog"]
    finally:
        out.unpersist()
    if len(versions) > 1:
        log.warning(
            "the catalogue holds vectors of %d model versions %s; pairs compare only one version's: "
            "re-embed the rest (dedup_backfill with reembed)",
            len(versions),
            versions,
        )
    listings = int(stats["listings"] or 0)
    per_listing = int(stats["vector_bytes_max"] or 0)
    log.info(
        "catalogue of %s: %d listings, vectors %.1f MB (at most %d bytes a listing, budget %d)",
        ctx.run_date,
        listings,
        int(stats["vector_bytes"] or 0) / 1e6,
        per_listing,
        VECTOR_BUDGET_BYTES,
    )
    if per_listing > VECTOR_BUDGET_BYTES:
        log.warning(
            "catalogue listings take up to %d vector bytes, over the %d-byte budget: the configured "
            "encoder's vectors are wider than the shipped eSSPR model's 256 (schemas.vectors)",
            per_listing,
            VECTOR_BUDGET_BYTES,
        )
    return StageResult(
        rows_in=rows_in,
        rows_out=written,
        details={
            "merged_from": previous,
            "built_from_history": previous is None,
            "listings": listings,
            "vector_bytes": int(stats["vector_bytes"] or 0),
            "vector_bytes_per_listing_max": per_listing,
            "suppliers": int(stats["suppliers"] or 0),
            "embedded_today": int(stats["embedded_today"] or 0),
            "arrived_today": int(stats["arrived_today"] or 0),
            "model_versions": versions,
            "supplier_buckets": n_buckets,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.catalog, not __main__, so Spark pickles this module's functions by reference.
    from jobs.catalog import main as _main

    sys.exit(_main())
