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

import logging
import sys
import time

import numpy as np
import pandas as pd

from config.errors import DedupError
from dedup.config import DedupConfig
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import PAIR_SEARCH_ROWS, PAIRS, empty_frame, to_ddl

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


def _stack(column: pd.Series) -> np.ndarray:
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in column])  # [n, dim]


def _modality_similarity(vectors: np.ndarray, present: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine of the two sides' vectors of one modality; NaN where either side lacks it."""
    sims = np.einsum("nd,nd->n", vectors[left], vectors[right]).astype(np.float32)  # [n_pairs]
    sims[~(present[left] & present[right])] = np.nan
    return sims


def find_block_pairs(
    key: tuple, queries: pd.DataFrame, catalogue: pd.DataFrame, dedup_config: DedupConfig
) -> pd.DataFrame:
    """cogroup body: finds the duplicate pairs of one (supplier, query block).

    Args:
        key: ``(supplier_id, query_block)``.
        queries: the block's new listings (``listing_id``, ``emb_m``, ``model_version``).
        catalogue: the supplier's catalogue (``listing_id``, ``emb_m``, ``emb_t``, ``emb_i``,
            ``has_text``, ``has_image``); it contains the queries themselves.
        dedup_config: the search settings.

    Returns:
        Rows of ``PAIR_SEARCH_ROWS``; each pair once with ``listing_id_l < listing_id_r``.
    """
    from dedup.search import find_pairs_by_id

    supplier_id = key[0]
    if queries.empty or catalogue.empty:
        return empty_frame(PAIR_SEARCH_ROWS)
    model_version = str(queries["model_version"].iloc[0])
    started = time.monotonic()
    # Rows arrive in shuffle order; sorting fixes the search's row order, so a rerun computes
    # every similarity with the same operations and writes identical values.
    queries = queries.sort_values("listing_id", kind="stable")
    catalogue = catalogue.sort_values("listing_id", kind="stable").reset_index(drop=True)
    index_m = _stack(catalogue["emb_m"])
    pairs, saturated = find_pairs_by_id(
        queries["listing_id"].tolist(),
        _stack(queries["emb_m"]),
        catalogue["listing_id"].tolist(),
        index_m,
        min_similarity=dedup_config.min_similarity,
        max_results_per_query=dedup_config.max_results_per_query,
        backend=dedup_config.backend,
        device=dedup_config.device,
    )
    left_ids = pairs.column("listing_id_l").to_pylist()
    right_ids = pairs.column("listing_id_r").to_pylist()
    position = {listing_id: i for i, listing_id in enumerate(catalogue["listing_id"])}
    left = np.array([position[i] for i in left_ids], dtype=np.int64)
    right = np.array([position[i] for i in right_ids], dtype=np.int64)
    if len(left):
        sim_t = _modality_similarity(_stack(catalogue["emb_t"]), catalogue["has_text"].to_numpy(bool), left, right)
        sim_i = _modality_similarity(_stack(catalogue["emb_i"]), catalogue["has_image"].to_numpy(bool), left, right)
    else:
        sim_t = sim_i = np.zeros(0, dtype=np.float32)
    out = pd.DataFrame(
        {
            "kind": "pair",
            "supplier_id": supplier_id,
            # explicit dtype: an empty list would be inferred float64, which Spark cannot cast
            "listing_id_l": pd.Series(left_ids, dtype=object),
            "listing_id_r": pd.Series(right_ids, dtype=object),
            "similarity_m": pairs.column("similarity").to_numpy().astype(np.float32),
            "similarity_t": sim_t,
            "similarity_i": sim_i,
            "model_version": model_version,
        },
        columns=PAIR_SEARCH_ROWS.names,
    )
    # Float rounding can put a dot product of unit vectors at 1.0000001; the contract says [-1, 1].
    similarity_columns = ["similarity_m", "similarity_t", "similarity_i"]
    out[similarity_columns] = out[similarity_columns].clip(-1.0, 1.0)
    if saturated:
        flagged = empty_frame(PAIR_SEARCH_ROWS).reindex(range(len(saturated)))
        flagged = flagged.assign(
            kind="saturated",
            supplier_id=supplier_id,
            listing_id_l=pd.Series(saturated, dtype=object),
            model_version=model_version,
        )
        flagged[similarity_columns] = np.nan
        out = pd.concat([out, flagged], ignore_index=True)
    log.info(
        "supplier %s block %s: %d queries x %d catalogue -> %d pairs (%d saturated) in %.2fs",
        supplier_id,
        key[1],
        len(queries),
        len(catalogue),
        len(left_ids),
        len(saturated),
        time.monotonic() - started,
    )
    return out


def find_supplier_pairs(queries, catalogue, dedup_config: DedupConfig, run_date: str):
    """Finds pairs per (supplier, query block).

    Args:
        queries: the run date's live embeddings.
        catalogue: ``catalogue_as_of(...)`` restricted to the queries' model version.
        dedup_config: the search settings.
        run_date: stamped on the output.

    Returns:
        ``(pairs, saturated, found)``: pairs matching the ``PAIRS`` contract, the saturated query
        ids, and the persisted search output both read (the caller unpersists it when done).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    block = Window.partitionBy("supplier_id").orderBy("listing_id")
    # Queries and catalogue both come from the embeddings table; fresh aliases give the query side
    # new column identities, or Spark finds the cogroup's columns ambiguous.
    queries = queries.select(*[F.col(c).alias(c) for c in queries.columns])
    blocked = queries.withColumn(
        "query_block", F.floor((F.row_number().over(block) - 1) / dedup_config.query_block_size)
    ).select("supplier_id", "query_block", "listing_id", "emb_m", "model_version")
    blocks = blocked.select(
        F.col("supplier_id").alias("supplier_id"), F.col("query_block").alias("query_block")
    ).distinct()
    index = catalogue.join(blocks, on="supplier_id").select(
        "supplier_id", "query_block", "listing_id", "emb_m", "emb_t", "emb_i", "has_text", "has_image"
    )
    found = (
        blocked.groupBy("supplier_id", "query_block")
        .cogroup(index.groupBy("supplier_id", "query_block"))
        .applyInPandas(lambda key, q, c: find_block_pairs(key, q, c, dedup_config), schema=to_ddl(PAIR_SEARCH_ROWS))
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
        (F.col("run_date") == ctx.run_date) & ~F.col("is_deleted") & F.col("emb_m").isNotNull()
    ).persist()
    rows_in = queries.count()
    versions = [r[0] for r in queries.select("model_version").distinct().collect()]
    if len(versions) > 1:
        raise DedupError(
            f"run date {ctx.run_date} has embeddings of several model versions {versions}; "
            "re-run the embed stage for it"
        )
    catalogue = catalogue_as_of(embeddings, ctx.run_date)
    stale = 0
    if versions:
        stale = catalogue.filter(F.col("model_version") != versions[0]).count()
        if stale:
            log.warning(
                "%d catalogue listings have embeddings of another model version and are left out; "
                "re-embed them (backfill with re-embed) to compare them again",
                stale,
            )
        catalogue = catalogue.filter(F.col("model_version") == versions[0])
    pairs, saturated, found = find_supplier_pairs(queries, catalogue, ctx.config.dedup, ctx.run_date)
    try:
        written = publish(
            ctx.spark,
            {"pairs": pairs},
            ctx.database,
            {"run_date": ctx.run_date},
            listing_suppliers=catalogue.select("listing_id", "supplier_id"),
        )["pairs"]
        saturated_ids = [r["listing_id_l"] for r in saturated.distinct().limit(1000).collect()]
        catalogue_size = catalogue.count()
    finally:
        found.unpersist()
        queries.unpersist()
    if saturated_ids:
        log.warning(
            "%d listings hit the per-query budget of %d pairs (first: %s); raise "
            "dedup.min_similarity or dedup.max_results_per_query",
            len(saturated_ids),
            ctx.config.dedup.max_results_per_query,
            saturated_ids[:5],
        )
    return StageResult(
        rows_in=rows_in,
        rows_out=written,
        details={
            "min_similarity": ctx.config.dedup.min_similarity,
            "catalogue_size": catalogue_size,
            "stale_model_version": stale,
            "saturated_queries": len(saturated_ids),
            "model_version": versions[0] if versions else None,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.pairs, not __main__, so Spark pickles this module's functions by reference
    # and their per-worker caches (models, suites) live as long as the Python worker.
    from jobs.pairs import main as _main

    sys.exit(_main())
