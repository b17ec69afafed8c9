"""embed: encode the run date's validated listings into m / t / i vectors -> `embeddings`.

The encoder (``encoder/``) is built inside each executor's Python worker, once per worker, never on
the driver. With GPU scheduling configured (``spark.executor_gpus`` / ``spark.task_gpus`` in the
config, i.e. ``spark.executor.resource.gpu.amount`` / ``spark.task.resource.gpu.amount``) each task
encodes on the GPU Spark assigned to it; otherwise on CPU. A broken or unreadable image is not
fatal: the listing is embedded text-only and ``image_error`` says why; an ``image_uri`` that
``validation.image_uri_schemes`` / ``_roots`` / ``_hosts`` do not allow is not even opened
(``image_uri_not_allowed: ...``, ``schemas.uris``). A listing with neither a usable title nor a
usable image (a blank title and a corrupt image) gets no vectors, is kept out of the catalogue and
is counted as skipped (``not_embeddable``). Deleted listings (``is_deleted``) are written as
tombstones without vectors and counted as skipped, so
rows_in = rows_out + rows_skipped. With ``--reembed`` (after a model change) the stage also
re-embeds, from their latest ``listings`` row, every listing of the previous catalogue whose vectors
are of another model version, so the whole catalogue moves to the configured encoder's version
(they count in rows_in and in ``details.reembedded``). Vectors are stored as float16 bytes of the neural encoder's output (``schemas.vectors``: 1,536
bytes a listing for the shipped model); a hybrid's lexical part is left out, the pairs stage adds
it from the title. Before anything is written, the output suite checks that every
vector has the stored width and unit norm (``jobs.warehouse.publish``).

    spark-submit jobs/embed.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from config.sections import ValidationConfig
from encoder.config import EncoderConfig, stored_dim
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import EMBEDDINGS, TABLES, to_ddl
from schemas.uris import PREFIX as NOT_ALLOWED
from schemas.uris import check_image_uri, local_image_path
from schemas.vectors import pack_vectors

log = logging.getLogger(__name__)
STAGE = "embed"

_ENCODERS: dict = {}  # this Python worker's encoders, by config, built on first use


def _gpu_addresses() -> list[str]:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return []
    gpu = context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def get_encoder(encoder_config: EncoderConfig):
    """Returns this worker's encoder for the config, building it on first use.

    Args:
        encoder_config: the encoder settings (frozen, so it keys the cache).

    Returns:
        An encoder with ``encode(titles, images)`` and ``model_version``. On a GPU executor the
        device is the GPU Spark assigned to the task (``spark.task.resource.gpu.amount``).
    """
    from encoder.factory import build_encoder

    key = encoder_config
    if key not in _ENCODERS:
        started = time.monotonic()
        addresses = _gpu_addresses()
        _ENCODERS[key] = build_encoder(encoder_config, addresses)
        log.info(
            "encoder %s built in %.1fs (Spark GPU addresses: %s)",
            _ENCODERS[key].model_version,
            time.monotonic() - started,
            addresses or "none",
        )
    return _ENCODERS[key]


def read_image_uri(uri: str, validation: ValidationConfig) -> tuple[bytes | None, str | None]:
    """Reads image bytes from a local path or fsspec URL that the config allows.

    Args:
        uri: the listing's ``image_uri``.
        validation: the ``image_uri_schemes`` / ``_roots`` / ``_hosts`` rules
            (``schemas.uris.check_image_uri``).

    Returns:
        ``(bytes, None)``, or ``(None, reason)`` when the uri is not allowed (``image_uri_not_allowed:
        ...``; nothing is opened) or cannot be read (``image_uri_unreadable: ...``).
    """
    refused = check_image_uri(
        uri,
        schemes=validation.image_uri_schemes,
        roots=validation.image_uri_roots,
        hosts=validation.image_uri_hosts,
    )
    if refused:
        return None, refused[:500]
    # A local file is opened by the resolved path that was checked, not via fsspec, which would
    # expand "~" and strip "file://" its own way.
    path = local_image_path(uri)
    try:
        if path is not None:
            with open(path, "rb") as handle:
                return handle.read(), None
        import fsspec

        with fsspec.open(uri, "rb") as handle:
            return handle.read(), None
    except Exception as exc:  # noqa: BLE001 - any IO failure means "embed text-only and flag"
        return None, f"image_uri_unreadable: {type(exc).__name__}: {exc}"[:500]


def embed_batches(
    batches: Iterator[pd.DataFrame], encoder_config: EncoderConfig, validation: ValidationConfig
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: encodes listings into m / t / i vectors.

    Args:
        batches: rows with ``listing_id``, ``supplier_id``, ``updated_at``, ``title``, ``image``,
            ``image_uri`` (deleted listings are filtered out before).
        encoder_config: the encoder settings.
        validation: which ``image_uri`` values may be read (``read_image_uri``).

    Yields:
        Rows of the ``embeddings`` contract without ``run_date``.
    """
    encoder = get_encoder(encoder_config)
    for batch in batches:
        started = time.monotonic()
        images: list[bytes | None] = []
        uri_errors: list[str | None] = []
        refused = 0
        for data, uri in zip(batch["image"], batch["image_uri"], strict=True):
            if data is not None and not (isinstance(data, float) and np.isnan(data)):
                images.append(bytes(data))
                uri_errors.append(None)
            elif isinstance(uri, str) and uri.strip():
                data, error = read_image_uri(uri.strip(), validation)
                images.append(data)
                uri_errors.append(error)
                refused += bool(error and error.startswith(NOT_ALLOWED))
            else:
                images.append(None)
                uri_errors.append(None)
        titles = [t if isinstance(t, str) else None for t in batch["title"]]
        try:
            frame = _encoded_frame(batch, encode_for_storage(encoder, titles, images), uri_errors)
        except ValueError:
            # A row with no usable title or image (e.g. a blank title and a corrupt image) fails
            # the batch; encode row by row so only that row goes without vectors.
            frame = pd.concat(
                [_encode_one(encoder, batch.iloc[[k]], titles[k], images[k], uri_errors[k]) for k in range(len(batch))],
                ignore_index=True,
            )
        yield frame
        log.info(
            "embedded %d listings in %.2fs; %d image_uri not allowed (validation.image_uri_*), not read",
            len(batch),
            time.monotonic() - started,
            refused,
        )


def encode_for_storage(encoder, titles: list[str | None], images: list[bytes | None]):
    """The vectors the stage stores: the neural encoder's, labelled with the whole encoder's version.

    A hybrid's lexical part is not stored (``schemas.vectors``): ``jobs.pairs`` computes it from
    the catalogue's title with the same settings, which ``model_version`` pins.

    Returns:
        ``EncodedListings`` of ``stored_dim`` wide vectors.

    Raises:
        ValueError: as the encoder's ``encode``.
    """
    from dataclasses import replace

    from encoder.hybrid import HybridEncoder

    if isinstance(encoder, HybridEncoder):
        return replace(encoder.base.encode(titles, images), model_version=encoder.model_version)
    return encoder.encode(titles, images)


def _encoded_frame(batch: pd.DataFrame, encoded, uri_errors: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "listing_id": batch["listing_id"].to_numpy(),
            "supplier_id": batch["supplier_id"].to_numpy(),
            "updated_at": batch["updated_at"].to_numpy(),
            "is_deleted": False,
            "has_text": encoded.has_text,
            "has_image": encoded.has_image,
            "image_error": [u or e for u, e in zip(uri_errors, encoded.image_error, strict=True)],
            "emb_m": pack_vectors(encoded.m),
            "emb_t": pack_vectors(encoded.t),
            "emb_i": pack_vectors(encoded.i),
            "model_version": encoded.model_version,
        }
    )


def _encode_one(
    encoder, row: pd.DataFrame, title: str | None, image: bytes | None, uri_error: str | None
) -> pd.DataFrame:
    """Encodes one listing; a listing the encoder rejects gets null vectors and the reason."""
    try:
        return _encoded_frame(row, encode_for_storage(encoder, [title], [image]), [uri_error])
    except ValueError as exc:
        return pd.DataFrame(
            {
                "listing_id": row["listing_id"].to_numpy(),
                "supplier_id": row["supplier_id"].to_numpy(),
                "updated_at": row["updated_at"].to_numpy(),
                "is_deleted": False,
                "has_text": False,
                "has_image": False,
                "image_error": [f"not_embeddable: {uri_error or exc}"[:500]],
                "emb_m": [None],
                "emb_t": [None],
                "emb_i": [None],
                "model_version": encoder.model_version,
            }
        )


def embed_listings(listings, encoder_config: EncoderConfig, validation: ValidationConfig, partitions: int):
    """Encodes listings (not deleted) into embedding rows.

    Args:
        listings: rows of the ``listings`` table.
        encoder_config: the encoder settings.
        validation: which ``image_uri`` values may be read; kept out of ``encoder_config`` because
            that feeds the model_version hash.
        partitions: how many tasks to spread the encoding over.

    Returns:
        A DataFrame of ``EMBEDDINGS`` columns without ``run_date``.
    """
    columns = TABLES["embeddings"].data_columns
    live = listings.filter("NOT is_deleted").select(
        "listing_id", "supplier_id", "updated_at", "title", "image", "image_uri"
    )
    # Hash partitioning plus a sort makes every task see the same rows in the same order on a
    # rerun, so encoder batches (and the float rounding inside them) repeat exactly: reruns
    # write byte-identical vectors.
    return (
        live.repartition(partitions, "listing_id")
        .sortWithinPartitions("listing_id")
        .mapInPandas(
            lambda batches: embed_batches(batches, encoder_config, validation), schema=to_ddl(EMBEDDINGS, columns)
        )
    )


def tombstones(listings):
    """Returns embedding rows (no vectors) for deleted listings, so they leave the catalogue."""
    from pyspark.sql import functions as F

    columns = TABLES["embeddings"].data_columns
    vector = F.lit(None).cast("binary")
    return (
        listings.filter("is_deleted")
        .select(
            "listing_id",
            "supplier_id",
            "updated_at",
            F.lit(True).alias("is_deleted"),
            F.lit(False).alias("has_text"),
            F.lit(False).alias("has_image"),
            F.lit(None).cast("string").alias("image_error"),
            vector.alias("emb_m"),
            vector.alias("emb_t"),
            vector.alias("emb_i"),
            F.lit(None).cast("string").alias("model_version"),
        )
        .select(*columns)
    )


def stale_listings(spark, database: str, run_date: str, encoder_config: EncoderConfig):
    """The latest ``listings`` row of every listing in the previous catalogue whose vectors are of
    another model version than ``encoder_config``'s; None without a previous catalogue."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from encoder.factory import compute_model_version
    from jobs.warehouse import previous_run_date

    previous = previous_run_date(spark, database, "catalog", run_date)
    if previous is None:
        return None
    current = compute_model_version(encoder_config)
    stale = (
        spark.table(f"{database}.catalog")
        .filter((F.col("run_date") == previous) & (F.col("model_version") != current))
        .select("listing_id", "updated_at")
    )
    latest = Window.partitionBy("listing_id").orderBy(F.col("run_date").desc(), F.col("updated_at").desc())
    rows = spark.table(f"{database}.listings").join(stale, on=["listing_id", "updated_at"], how="left_semi")
    return rows.withColumn("_rank", F.row_number().over(latest)).filter("_rank = 1").drop("_rank")


def run(ctx: StageContext) -> StageResult:
    """Embeds the run date's listings and writes the `embeddings` partition."""
    from pyspark.sql import functions as F

    from jobs.warehouse import ensure_tables, publish

    ensure_tables(ctx.spark, ctx.database, ["listings", "catalog"])
    listings = ctx.spark.table(f"{ctx.database}.listings").filter(F.col("run_date") == ctx.run_date)
    reembedded = 0
    if getattr(ctx.args, "reembed", False):
        stale = stale_listings(ctx.spark, ctx.database, ctx.run_date, ctx.config.encoder)
        if stale is not None:
            stale = stale.join(listings.select("listing_id"), on="listing_id", how="left_anti").persist()
            reembedded = stale.count()
            listings = listings.unionByName(stale)
            log.info("re-embedding %d catalogue listings of other model versions", reembedded)
    rows_in = listings.count()
    partitions = max(1, min(ctx.spark.sparkContext.defaultParallelism, rows_in // 64 + 1))
    embedded = embed_listings(listings, ctx.config.encoder, ctx.config.validation, partitions)
    out = embedded.unionByName(tombstones(listings)).withColumn("run_date", F.lit(ctx.run_date)).persist()
    try:
        stats = out.agg(
            F.sum(F.col("is_deleted").cast("int")).alias("deleted"),
            F.sum(F.col("has_image").cast("int")).alias("with_image"),
            F.sum(F.col("image_error").isNotNull().cast("int")).alias("image_errors"),
            F.sum((~F.col("is_deleted") & F.col("emb_m").isNull()).cast("int")).alias("not_embeddable"),
        ).first()
        versions = [r[0] for r in out.filter("NOT is_deleted").select("model_version").distinct().collect()]
        written = publish(
            ctx.spark,
            {"embeddings": out},
            ctx.database,
            {"run_date": ctx.run_date},
            embedding_dim=stored_dim(ctx.config.encoder),
        )["embeddings"]
    finally:
        out.unpersist()
    deleted = int(stats["deleted"] or 0)
    not_embeddable = int(stats["not_embeddable"] or 0)
    if stats["image_errors"]:
        log.warning(
            "%d listings had unusable images and were embedded text-only (see image_error)", stats["image_errors"]
        )
    return StageResult(
        rows_in=rows_in,
        rows_out=written - deleted - not_embeddable,
        rows_skipped=deleted + not_embeddable,
        details={
            "skipped_by_reason": {"is_deleted": deleted, "not_embeddable": not_embeddable},
            "with_image": int(stats["with_image"] or 0),
            "image_errors": int(stats["image_errors"] or 0),
            "model_versions": versions,
            "reembedded": reembedded,
            "tasks": partitions,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.embed, not __main__, so Spark pickles this module's functions by reference
    # and their per-worker caches (models, suites) live as long as the Python worker.
    from jobs.embed import main as _main

    sys.exit(_main())
