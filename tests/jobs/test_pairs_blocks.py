"""The pairs stage's blocks on real Spark: however a supplier is split, the answer is the one-task answer.

Query blocks: two new listings in different blocks find each other from both; the union must hold
the pair once, with the same rows as when the supplier is searched in one block.

Catalogue blocks: a supplier whose catalogue is bigger than ``dedup.catalogue_block_size`` is
searched as (catalogue block x query block) tasks, its per-query budget merged over the blocks,
its verifier's neighbour lists from a second blocked search; with the shipped verifier (whose
neighbour features see those lists) and the hybrid's lexical part, the pairs, similarities,
probabilities and saturated queries must equal the whole-catalogue path's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dedup.config import DedupConfig
from encoder.config import EncoderConfig
from schemas.vectors import pack_vectors

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]


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


def _rows(search) -> pd.DataFrame:
    rows = search.pairs.toPandas().sort_values(["listing_id_l", "listing_id_r"]).reset_index(drop=True)
    return rows


@pytest.mark.parametrize("block_size", [1, 2])
def test_blocks_give_each_pair_once_and_the_one_block_rows(spark, block_size):
    from jobs.pairs import candidate_counts, find_supplier_pairs, summarise_search

    queries, catalogue = _frames(spark)

    def run(size):
        config = DedupConfig(min_similarity=0.9, query_block_size=size, verifier="")
        search = find_supplier_pairs(queries, catalogue, config, "2024-03-01", EncoderConfig())
        rows = _rows(search)
        tasks = search.found.filter("kind = 'candidates'").count()
        counted = summarise_search(candidate_counts(search.found).toPandas())["candidates"]
        search.release()
        return rows, tasks, counted

    whole, one_task, whole_counted = run(100)
    split, tasks, split_counted = run(block_size)
    assert one_task == 1 and tasks == -(-6 // block_size)  # the supplier really was split
    # every pair joins two blocks here, and each block finds it: counted once all the same
    assert whole_counted == split_counted == 3
    assert list(zip(whole["listing_id_l"], whole["listing_id_r"], strict=True)) == [
        ("l0", "l3"),
        ("l1", "l4"),
        ("l2", "l5"),
    ]
    pd.testing.assert_frame_equal(split, whole)


def _catalogue(rng: np.random.Generator, supplier: str, n: int, dim: int = 24) -> pd.DataFrame:
    """n listings in families of near-copies (shared model code, reworded titles), some with photos."""
    families = rng.normal(size=(n // 4 + 1, dim)).astype(np.float32)
    family = np.arange(n) // 4
    m = families[family] + 0.25 * rng.normal(size=(n, dim)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    i = families[family] + 0.1 * rng.normal(size=(n, dim)).astype(np.float32)
    i /= np.linalg.norm(i, axis=1, keepdims=True)
    has_image = rng.random(n) < 0.5
    words = ["Acme", "Bolt", "Cobalt", "Delta", "Ember", "Flux"]
    titles = [
        f"{words[f % 6]} {['drill', 'kettle', 'lamp'][f % 3]} {'X' if k % 2 else 'x'}{f:03d}-{k % 3} {k % 4}L"
        for k, f in enumerate(family)
    ]
    return pd.DataFrame(
        {
            "supplier_id": supplier,
            "listing_id": [f"{supplier}-{k:03d}" for k in range(n)],
            "emb_m": pack_vectors(m),
            "emb_t": pack_vectors(m),
            "emb_i": pack_vectors(np.where(has_image[:, None], i, 0.0).astype(np.float32)),
            "has_text": True,
            "has_image": has_image,
            "title": titles,
            "brand": [words[f % 6] for f in family],
            "price": 10.0 + family.astype(float),
            "currency": "EUR",
            "model_version": "mv",
        }
    )


def test_a_catalogue_split_into_blocks_gives_the_whole_catalogue_answer(spark):
    from jobs.pairs import find_supplier_pairs

    rng = np.random.default_rng(11)
    catalogue = pd.concat([_catalogue(rng, "big", 46), _catalogue(rng, "small", 6)], ignore_index=True)
    # every other listing is new tonight: pairs of two new listings, and of a new and an old one
    queries = catalogue.iloc[::2]
    catalogue_df, queries_df = spark.createDataFrame(catalogue), spark.createDataFrame(queries)
    encoder = EncoderConfig(
        lexical_weight=0.2, lexical_buckets=2048, lexical_idf=str(ROOT / "encoder/weights/lexical-idf.npy")
    )

    def run(catalogue_block_size: int, query_block_size: int):
        config = DedupConfig(
            min_similarity=0.35,
            max_results_per_query=6,  # a few queries have more hits: the budget merge is exercised
            query_block_size=query_block_size,
            catalogue_block_size=catalogue_block_size,
            verifier=str(ROOT / "dedup/weights/verifier.json"),
            min_probability=0.05,
        )
        search = find_supplier_pairs(queries_df, catalogue_df, config, "2024-03-01", encoder)
        rows = _rows(search)
        saturated = sorted(r[1] for r in search.saturated.collect())
        tasks = search.found.filter("kind = 'candidates' and queries is not null").toPandas()
        candidates = int(search.found.filter("kind = 'candidates'").toPandas()["candidates"].sum())
        blocked = search.blocked_suppliers
        search.release()
        return rows, saturated, tasks, candidates, blocked

    # one task per supplier (each candidate counted once), against 5-query x 7-row tasks
    whole, whole_saturated, whole_tasks, whole_candidates, none = run(1000, 1000)
    split, split_saturated, split_tasks, split_candidates, blocked = run(7, 5)

    assert none == [] and blocked == ["big"]
    # big: 23 queries in 5 query blocks x 46 rows in 7 catalogue blocks; small: 1 task, whole
    big = split_tasks[split_tasks["supplier_id"] == "big"]
    assert len(big) == 5 * 7 and big["catalogue_rows"].max() <= 7
    assert big["queries"].sum() == 23 * 7 and big["catalogue_rows"].sum() == 46 * 5
    assert sorted(whole_tasks["catalogue_rows"]) == [6, 46]
    # the data exercises what the merge must get right
    assert whole_saturated and len(whole) >= 20 and whole["match_score"].min() < whole["match_score"].max()
    assert split_saturated == whole_saturated
    assert split_candidates == whole_candidates
    assert list(zip(split["listing_id_l"], split["listing_id_r"], strict=True)) == list(
        zip(whole["listing_id_l"], whole["listing_id_r"], strict=True)
    )
    for column in ("similarity_m", "similarity_t", "similarity_i", "match_score"):
        np.testing.assert_allclose(split[column], whole[column], atol=1e-5, err_msg=column)
    assert split["similarity_i"].isna().tolist() == whole["similarity_i"].isna().tolist()


def test_a_skewed_night_is_planned_into_bounded_tasks_that_cover_every_comparison_once(spark):
    from jobs.pairs import find_supplier_pairs

    rng = np.random.default_rng(5)
    # one giant supplier beside Zipf-like small ones
    sizes = {"giant": 60, **{f"s{k}": max(1, 24 // (k + 1)) for k in range(8)}}
    catalogue = pd.concat([_catalogue(rng, s, n) for s, n in sizes.items()], ignore_index=True)
    queries = catalogue.iloc[::3]
    new = queries.groupby("supplier_id").size().to_dict()
    config = DedupConfig(min_similarity=0.5, query_block_size=8, catalogue_block_size=16, verifier="")
    search = find_supplier_pairs(
        spark.createDataFrame(queries), spark.createDataFrame(catalogue), config, "2024-03-01", EncoderConfig()
    )
    tasks = search.found.filter("kind = 'candidates' and queries is not null").toPandas()
    pairs = search.pairs.toPandas()
    search.release()

    assert search.blocked_suppliers == ["giant", "s0"]  # 60 and 24 rows > 16
    # no task is bigger than a query block x a catalogue block
    assert tasks["queries"].max() <= 8 and tasks["catalogue_rows"].max() <= 16
    # every (new listing, catalogue listing) comparison of a supplier is made exactly once
    work = (tasks["queries"] * tasks["catalogue_rows"]).groupby(tasks["supplier_id"]).sum().to_dict()
    assert work == {s: new[s] * sizes[s] for s in new}
    assert len(pairs) > 0 and (pairs["listing_id_l"] < pairs["listing_id_r"]).all()
    assert all(
        l.split("-")[0] == r.split("-")[0] == s
        for l, r, s in pairs[["listing_id_l", "listing_id_r", "supplier_id"]].itertuples(index=False)
    )
