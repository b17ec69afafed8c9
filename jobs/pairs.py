"""pairs: per supplier, the run date's new listings against that supplier's catalogue -> `pairs`.

The catalogue of run date D is every listing's latest embedding with ``run_date <= D`` (deleted
listings removed), which includes D's own listings, so duplicates arriving the same night are found
too. Search is exact (``dedup.find_pairs``: faiss ``IndexFlatIP`` range search at
``dedup.min_similarity`` on ``m``); each pair is written once (``listing_id_l < listing_id_r``) with
its ``similarity_m`` and the per-modality evidence ``similarity_t`` / ``similarity_i`` (null where
either side lacks the modality). A supplier's new listings are split into blocks of
``dedup.query_block_size`` so a giant supplier becomes several tasks. A query with more hits than
``dedup.max_results_per_query`` keeps its best ones and is counted as saturated.

Before the partition is written, the output suite checks that both listings of every pair belong
to the pair's supplier and that similarities lie within [-1, 1] (``jobs.warehouse.publish``).

Cost: sum over suppliers of (new listings x catalogue size), never N^2 over the marketplace.

    spark-submit jobs/pairs.py --run-date 2024-03-01 --config conf/sspr.toml [--min-similarity 0.9]
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from jobs.errors import DedupError
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import PAIRS

log = logging.getLogger(__name__)
STAGE = "pairs"


def catalogue_as_of(embeddings, run_date: str):
    """Returns each listing's latest embedding up to ``run_date``, without deleted listings.

    Args:
        embeddings: the ``embeddings`` table.
        run_date: the run date D.

    Returns:
        One row per live listing.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("listing_id").orderBy(F.col("run_date").desc(), F.col("updated_at").desc())
    return (
        embeddings.filter(F.col("run_date") <= run_date)
        .withColumn("_rank", F.row_number().over(latest))
        .filter("_rank = 1 AND NOT is_deleted AND emb_m IS NOT NULL")
        .drop("_rank")
    )


def find_supplier_pairs(queries, catalogue, dedup_config: dict, run_date: str):
    """Finds pairs per (supplier, query block).

    Args:
        queries: the run date's live embeddings.
        catalogue: ``catalogue_as_of(...)`` restricted to the queries' model version.
        dedup_config: ``dataclasses.asdict(DedupConfig)``.
        run_date: stamped on the output.

    Returns:
        ``(pairs, saturated)``: pairs matching the ``PAIRS`` contract, and the saturated query ids.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.executor import PAIR_OUTPUT_DDL, find_block_pairs

    block = Window.partitionBy("supplier_id").orderBy("listing_id")
    # Queries and catalogue both come from the embeddings table; fresh aliases give the query side
    # new column identities, or Spark finds the cogroup's columns ambiguous.
    queries = queries.select(*[F.col(c).alias(c) for c in queries.columns])
    blocked = queries.withColumn(
        "query_block", F.floor((F.row_number().over(block) - 1) / int(dedup_config["query_block_size"]))
    ).select("supplier_id", "query_block", "listing_id", "emb_m", "model_version")
    blocks = blocked.select(F.col("supplier_id").alias("supplier_id"),
                            F.col("query_block").alias("query_block")).distinct()
    index = catalogue.join(blocks, on="supplier_id").select(
        "supplier_id", "query_block", "listing_id", "emb_m", "emb_t", "emb_i", "has_text", "has_image"
    )
    found = (
        blocked.groupBy("supplier_id", "query_block")
        .cogroup(index.groupBy("supplier_id", "query_block"))
        .applyInPandas(lambda key, q, c: find_block_pairs(key, q, c, dedup_config), schema=PAIR_OUTPUT_DDL)
    ).persist()
    pairs = (
        found.filter("kind = 'pair'")
        .drop("kind")
        # Two new listings in different query blocks are found from both blocks: keep one row.
        .dropDuplicates(["supplier_id", "listing_id_l", "listing_id_r"])
        .withColumn("similarity_t", F.nanvl("similarity_t", F.lit(None).cast("float")))
        .withColumn("similarity_i", F.nanvl("similarity_i", F.lit(None).cast("float")))
        .withColumn("run_date", F.lit(run_date))
        .select(*PAIRS.names)
    )
    saturated = found.filter("kind = 'saturated'").select("supplier_id", "listing_id_l")
    return pairs, saturated, found


def run(ctx: StageContext) -> StageResult:
    """Finds the run date's pairs and writes the `pairs` partition."""
    from pyspark.sql import functions as F

    from jobs.warehouse import ensure_tables, publish

    ensure_tables(ctx.spark, ctx.database, ["embeddings"])
    embeddings = ctx.spark.table(f"{ctx.database}.embeddings")
    queries = embeddings.filter(
        (F.col("run_date") == ctx.run_date) & ~F.col("is_deleted") & F.col("emb_m").isNotNull()).persist()
    rows_in = queries.count()
    versions = [r[0] for r in queries.select("model_version").distinct().collect()]
    if len(versions) > 1:
        raise DedupError(f"run date {ctx.run_date} has embeddings of several model versions {versions}; "
                         "re-run the embed stage for it")
    catalogue = catalogue_as_of(embeddings, ctx.run_date)
    stale = 0
    if versions:
        stale = catalogue.filter(F.col("model_version") != versions[0]).count()
        if stale:
            log.warning("%d catalogue listings have embeddings of another model version and are left out; "
                        "re-embed them (backfill with re-embed) to compare them again", stale)
        catalogue = catalogue.filter(F.col("model_version") == versions[0])
    dedup_config = dataclasses.asdict(ctx.config.dedup)
    pairs, saturated, found = find_supplier_pairs(queries, catalogue, dedup_config, ctx.run_date)
    try:
        written = publish(ctx.spark, {"pairs": pairs}, ctx.database, {"run_date": ctx.run_date},
                          listing_suppliers=catalogue.select("listing_id", "supplier_id"))["pairs"]
        saturated_ids = [r["listing_id_l"] for r in saturated.distinct().limit(1000).collect()]
        catalogue_size = catalogue.count()
    finally:
        found.unpersist()
        queries.unpersist()
    if saturated_ids:
        log.warning("%d listings hit the per-query budget of %d pairs (first: %s); raise "
                    "dedup.min_similarity or dedup.max_results_per_query", len(saturated_ids),
                    ctx.config.dedup.max_results_per_query, saturated_ids[:5])
    return StageResult(
        rows_in=rows_in, rows_out=written,
        details={"min_similarity": ctx.config.dedup.min_similarity, "catalogue_size": catalogue_size,
                 "stale_model_version": stale, "saturated_queries": len(saturated_ids),
                 "model_version": versions[0] if versions else None},
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
