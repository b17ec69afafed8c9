"""embed: encode the run date's validated listings into m / t / i vectors -> `embeddings`.

The encoder (``encoder/``) is built inside each executor's Python worker, once per worker, never on
the driver. With GPU scheduling configured (``spark.executor_gpus`` / ``spark.task_gpus`` in the
config, i.e. ``spark.executor.resource.gpu.amount`` / ``spark.task.resource.gpu.amount``) each task
encodes on the GPU Spark assigned to it; otherwise on CPU. A broken or unreadable image is not
fatal: the listing is embedded text-only and ``image_error`` says why. A listing with neither a
usable title nor a usable image (a blank title and a corrupt image) gets no vectors, is kept out of
the catalogue and is counted as skipped (``not_embeddable``). Deleted listings (``is_deleted``) are
written as tombstones without vectors and counted as skipped, so
rows_in = rows_out + rows_skipped. Before anything is written, the output suite checks that every
vector has the encoder's width and unit norm (``jobs.warehouse.publish``).

    spark-submit jobs/embed.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from jobs.errors import DedupError
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import EMBEDDINGS, TABLES, to_ddl

log = logging.getLogger(__name__)
STAGE = "embed"

ENCODER_DIMS: dict[str, int] = {"zero-shot": 1664, "sspr": 256}
"""Width of the m / t / i vectors (``ListingEncoder.dim``) per encoder kind.

Kept here so the driver need not import torch to check the output; a test compares it with the
encoder package, and the output check fails the stage if the encoder ever disagrees.
"""


def encoder_dim(config) -> int:
    """Returns the vector width of the encoder a config builds.

    Args:
        config: ``EncoderConfig``; a hybrid (``lexical_weight`` > 0) adds ``lexical_buckets``
            to the width of its kind (``encoder.hybrid``).

    Returns:
        The width of its m / t / i vectors.

    Raises:
        DedupError: for a kind without a known width.
    """
    if config.kind not in ENCODER_DIMS:
        raise DedupError(f"no vector width known for encoder kind {config.kind!r}; add it to "
                         "jobs.embed.ENCODER_DIMS")
    return ENCODER_DIMS[config.kind] + (config.lexical_buckets if config.lexical_weight > 0 else 0)


def embed_listings(listings, encoder_config: dict, partitions: int):
    """Encodes listings (not deleted) into embedding rows.

    Args:
        listings: rows of the ``listings`` table.
        encoder_config: ``dataclasses.asdict(EncoderConfig)``.
        partitions: how many tasks to spread the encoding over.

    Returns:
        A DataFrame of ``EMBEDDINGS`` columns without ``run_date``.
    """
    from jobs.executor import embed_batches

    columns = TABLES["embeddings"].data_columns
    live = listings.filter("NOT is_deleted").select(
        "listing_id", "supplier_id", "updated_at", "title", "image", "image_uri"
    )
    # Hash partitioning plus a sort makes every task see the same rows in the same order on a
    # rerun, so encoder batches (and the float rounding inside them) repeat exactly: reruns
    # write byte-identical vectors.
    return live.repartition(partitions, "listing_id").sortWithinPartitions("listing_id").mapInPandas(
        lambda batches: embed_batches(batches, encoder_config), schema=to_ddl(EMBEDDINGS, columns)
    )


def tombstones(listings):
    """Returns embedding rows (no vectors) for deleted listings, so they leave the catalogue."""
    from pyspark.sql import functions as F

    columns = TABLES["embeddings"].data_columns
    vector = F.lit(None).cast("array<float>")
    return listings.filter("is_deleted").select(
        "listing_id", "supplier_id", "updated_at",
        F.lit(True).alias("is_deleted"), F.lit(False).alias("has_text"), F.lit(False).alias("has_image"),
        F.lit(None).cast("string").alias("image_error"),
        vector.alias("emb_m"), vector.alias("emb_t"), vector.alias("emb_i"),
        F.lit(None).cast("string").alias("model_version"),
    ).select(*columns)


def run(ctx: StageContext) -> StageResult:
    """Embeds the run date's listings and writes the `embeddings` partition."""
    from pyspark.sql import functions as F

    from jobs.warehouse import ensure_tables, publish

    ensure_tables(ctx.spark, ctx.database, ["listings"])
    listings = ctx.spark.table(f"{ctx.database}.listings").filter(F.col("run_date") == ctx.run_date)
    rows_in = listings.count()
    partitions = max(1, min(ctx.spark.sparkContext.defaultParallelism, rows_in // 64 + 1))
    encoder_config = dataclasses.asdict(ctx.config.encoder)
    embedded = embed_listings(listings, encoder_config, partitions)
    out = embedded.unionByName(tombstones(listings)).withColumn("run_date", F.lit(ctx.run_date)).persist()
    try:
        stats = out.agg(
            F.sum(F.col("is_deleted").cast("int")).alias("deleted"),
            F.sum(F.col("has_image").cast("int")).alias("with_image"),
            F.sum(F.col("image_error").isNotNull().cast("int")).alias("image_errors"),
            F.sum((~F.col("is_deleted") & F.col("emb_m").isNull()).cast("int")).alias("not_embeddable"),
        ).first()
        versions = [r[0] for r in out.filter("NOT is_deleted").select("model_version").distinct().collect()]
        written = publish(ctx.spark, {"embeddings": out}, ctx.database, {"run_date": ctx.run_date},
                          embedding_dim=encoder_dim(ctx.config.encoder))["embeddings"]
    finally:
        out.unpersist()
    deleted = int(stats["deleted"] or 0)
    not_embeddable = int(stats["not_embeddable"] or 0)
    if stats["image_errors"]:
        log.warning("%d listings had unusable images and were embedded text-only (see image_error)",
                    stats["image_errors"])
    return StageResult(
        rows_in=rows_in, rows_out=written - deleted - not_embeddable, rows_skipped=deleted + not_embeddable,
        details={"skipped_by_reason": {"is_deleted": deleted, "not_embeddable": not_embeddable}, "with_image": int(stats["with_image"] or 0),
                 "image_errors": int(stats["image_errors"] or 0), "model_versions": versions,
                 "tasks": partitions},
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
