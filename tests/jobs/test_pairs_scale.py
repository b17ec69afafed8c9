"""One night of a 50,000-listing single supplier through the real catalog and pairs stages.

The shipped configuration (conf/sspr.toml: the hybrid encoder's lexical part recomputed from the
titles, the pair verifier, Spark's configured heaps) on synthetic vectors of the stored width with
planted duplicates: the night must complete, split the supplier into (query block x catalogue
block) tasks, and find every planted pair. The earlier layout ran out of the JVM heap on 4,688
listings of one supplier.
"""

from __future__ import annotations

import argparse
import math
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
N = 50_000
PLANTED = 300
DAY = "2024-05-01"


def _shipped(pipeline_config):
    """conf/sspr.toml with the test session's warehouse, metastore and Spark settings."""
    from config import load_config

    paths = pipeline_config.paths
    overrides = {
        "paths.listings_root": str(paths.listings_root),
        "paths.warehouse_dir": str(paths.warehouse_dir),
        "paths.metastore_dir": str(paths.metastore_dir),
        "paths.reports_dir": str(paths.reports_dir),
        "paths.runs_dir": str(paths.runs_dir),
        "spark.shuffle_partitions": str(pipeline_config.spark.shuffle_partitions),
        "spark.master": pipeline_config.spark.master,
        "warehouse.database": "scale_50k",
    }
    return load_config(ROOT / "conf" / "sspr.toml", overrides, environ={})


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct random product-like titles (random words and a model code)."""
    letters = np.array(list(string.ascii_lowercase))
    words = rng.choice(letters, size=(n, 4, 7))
    codes = rng.integers(0, 10**6, size=n)
    return [" ".join("".join(w) for w in words[k]) + f" X{codes[k]:06d}" for k in range(n)]


def _night(shipped, rng: np.random.Generator):
    """The day's validated listings and embeddings (one supplier), and the planted pairs."""
    from encoder.config import stored_dim
    from encoder.factory import compute_model_version
    from schemas.vectors import pack_vectors

    dim = stored_dim(shipped.encoder)
    vectors = rng.standard_normal((N, dim)).astype(np.float32)
    titles = _titles(rng, N)
    planted = set()
    # listing 2k + 1 is a reworded copy of listing 2k: a vector a little off, the same title in capitals
    for k in range(PLANTED):
        a, b = 2 * k, 2 * k + 1
        vectors[b] = vectors[a] + 0.1 * rng.standard_normal(dim).astype(np.float32)
        titles[b] = titles[a].upper()
        planted.add((f"L{a:06d}", f"L{b:06d}"))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"L{k:06d}" for k in range(N)]
    updated = pd.Timestamp("2024-05-01 01:00", tz="UTC")
    listings = pd.DataFrame(
        {
            "listing_id": ids,
            "supplier_id": "big",
            "title": titles,
            "description": None,
            "category": None,
            "brand": "Acme",
            "price": 10.0,
            "currency": "EUR",
            "image": None,
            "image_uri": None,
            "updated_at": updated,
            "is_deleted": False,
            "source_file": "synthetic.parquet",
            "run_date": DAY,
        }
    )
    stored = pack_vectors(vectors)
    embeddings = pd.DataFrame(
        {
            "listing_id": ids,
            "supplier_id": "big",
            "updated_at": updated,
            "is_deleted": False,
            "has_text": True,
            "has_image": False,
            "image_error": None,
            "emb_m": stored,
            "emb_t": stored,
            "emb_i": pack_vectors(np.zeros((N, dim), dtype=np.float32)),
            "model_version": compute_model_version(shipped.encoder),
            "run_date": DAY,
        }
    )
    return listings, embeddings, planted


def _write(spark, shipped, table: str, frame: pd.DataFrame, schema) -> None:
    from jobs.warehouse import ensure_tables, replace_partition
    from schemas.tables import to_ddl

    ensure_tables(spark, shipped.warehouse.database, [table])
    df = spark.createDataFrame(frame, schema=to_ddl(schema))
    replace_partition(spark, df, shipped.warehouse.database, table, {"run_date": DAY})


def _run(spark, config, stage: str):
    import importlib

    from jobs.stage import StageContext, record_metrics

    ctx = StageContext(stage=stage, run_date=DAY, config=config, spark=spark, args=argparse.Namespace())
    result = importlib.import_module(f"jobs.{stage}").run(ctx)
    record_metrics(ctx, result, 0.0)
    return result


def test_a_night_of_one_50000_listing_supplier_runs_the_pairs_stage(spark, pipeline_config):
    from encoder.config import stored_dim
    from schemas.tables import EMBEDDINGS, VALIDATED_LISTINGS

    shipped = _shipped(pipeline_config)
    assert shipped.encoder.lexical_weight > 0 and shipped.dedup.verifier  # the shipped path, not a shortcut
    listings, embeddings, planted = _night(shipped, np.random.default_rng(14))
    _write(spark, shipped, "listings", listings, VALIDATED_LISTINGS)
    _write(spark, shipped, "embeddings", embeddings, EMBEDDINGS)

    catalogued = _run(spark, shipped, "catalog")
    assert catalogued.rows_out == N
    result = _run(spark, shipped, "pairs")

    assert result.rows_in == N
    details = result.details
    assert details["catalogue_size"] == N
    # the supplier is split into (query block x catalogue block) tasks: no task holds its whole catalogue
    blocks = math.ceil(N / shipped.dedup.catalogue_block_size)
    assert blocks > 1 and details["blocked_suppliers"] == 1
    assert details["search_tasks"] == math.ceil(N / shipped.dedup.query_block_size) * blocks
    assert details["largest_task"]["supplier_id"] == "big"
    assert details["largest_task"]["catalogue_rows"] == shipped.dedup.catalogue_block_size
    assert details["search_gflop"] == pytest.approx(
        N * N * (stored_dim(shipped.encoder) + shipped.encoder.lexical_buckets) * 2 / 1e9, rel=1e-3
    )
    assert details["candidates"] >= PLANTED and details["saturated_queries"] == 0

    pairs = spark.table(f"{shipped.warehouse.database}.pairs").filter(f"run_date = '{DAY}'").toPandas()
    found = set(zip(pairs["listing_id_l"], pairs["listing_id_r"], strict=True))
    assert planted <= found, f"{len(planted - found)} planted pairs missing, e.g. {sorted(planted - found)[:3]}"
    assert len(found) <= details["candidates"] and (pairs["supplier_id"] == "big").all()
