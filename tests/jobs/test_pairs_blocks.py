"""The pairs stage's query blocks on real Spark: a supplier split into blocks gives the one-block answer.

Two new listings in different blocks find each other from both; the union must hold the pair
once, with the same rows as when the supplier is searched in one block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dedup.config import DedupConfig
from encoder.config import EncoderConfig
from schemas.vectors import pack_vectors

pytestmark = pytest.mark.spark


def _frames(spark):
    rng = np.random.default_rng(7)
    base = rng.normal(size=(6, 16)).astype(np.float32)
    # three near-copy couples, so every pair's two listings sit in different blocks of size 1 and 2
    vectors = np.concatenate([base[:3], base[:3] + 0.05 * rng.normal(size=(3, 16)).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"l{k}" for k in range(6)]
    stored = pack_vectors(vectors)
    catalogue = pd.DataFrame(
        {
            "supplier_id": "s",
            "listing_id": ids,
            "emb_m": stored,
            "emb_t": stored,
            "emb_i": pack_vectors(np.zeros_like(vectors)),
            "has_text": True,
            "has_image": False,
        }
    )
    queries = catalogue[["supplier_id", "listing_id"]].assign(model_version="mv")
    return spark.createDataFrame(queries), spark.createDataFrame(catalogue)


@pytest.mark.parametrize("block_size", [1, 2])
def test_blocks_give_each_pair_once_and_the_one_block_rows(spark, block_size):
    from jobs.pairs import find_supplier_pairs

    queries, catalogue = _frames(spark)

    def run(size):
        config = DedupConfig(min_similarity=0.9, query_block_size=size, verifier="")
        pairs, _saturated, found = find_supplier_pairs(queries, catalogue, config, "2024-03-01", EncoderConfig())
        rows = pairs.toPandas().sort_values(["listing_id_l", "listing_id_r"]).reset_index(drop=True)
        tasks = found.filter("kind = 'candidates'").count()
        found.unpersist()
        return rows, tasks

    whole, one_task = run(100)
    split, tasks = run(block_size)
    assert one_task == 1 and tasks == -(-6 // block_size)  # the supplier really was split
    assert list(zip(whole["listing_id_l"], whole["listing_id_r"], strict=True)) == [
        ("l0", "l3"),
        ("l1", "l4"),
        ("l2", "l5"),
    ]
    pd.testing.assert_frame_equal(split, whole)
