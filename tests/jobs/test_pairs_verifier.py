"""The pairs stage's verified path: candidates scored in the search task, kept by probability.

A one-tree verifier (match when the two titles share their model code) stands in for the trained
one: the code under test moves candidates, attributes and probabilities around and does not care
what the trees learned.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from config.errors import DedupError
from dedup.config import DedupConfig
from dedup.features import FEATURE_NAMES
from dedup.verifier import Tree, Verifier, save_verifier
from encoder.config import EncoderConfig
from jobs import pairs
from jobs.pairs import check_verifier, find_block_pairs, summarise_search
from schemas.tables import PAIR_SEARCH_ROWS
from schemas.vectors import pack_vectors

# the block output is built from typed parts: pandas dtype guessing (a FutureWarning) is a regression
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")


def _code_verifier(path, model_version="mv") -> None:
    """p = sigmoid(+3) when code_min > 0.5, else sigmoid(-3); a missing code counts as no match."""
    stump = Tree(
        feature=np.array([FEATURE_NAMES.index("code_min"), 0, 0]),
        threshold=np.array([0.5, 0.0, 0.0]),
        missing_left=np.array([True, False, False]),
        left=np.array([1, 0, 0]),
        right=np.array([2, 0, 0]),
        value=np.array([0.0, -3.0, 3.0]),
        leaf=np.array([False, True, True]),
    )
    save_verifier(Verifier((stump,), 0.0, 1.0, 0.0, FEATURE_NAMES, model_version, "none", 0.0, 10, {}), path)


def _catalogue() -> pd.DataFrame:
    vectors = np.array([[1.0, 0.0], [0.95, 0.31], [0.9, 0.43], [0.0, 1.0]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "listing_id": ["a", "b", "c", "d"],
            "emb_m": pack_vectors(vectors),
            "emb_t": pack_vectors(vectors),
            "emb_i": pack_vectors(np.zeros_like(vectors)),
            "has_text": True,
            "has_image": False,
            "title": ["WD Red WD40EFRX 4TB", "Western Digital WD-40EFRX", "WD Red WD60EFRX 6TB", None],
            "brand": ["WD", None, "WD", None],
            "price": [99.0, np.nan, 150.0, np.nan],
            "currency": ["USD", None, "USD", None],
        }
    )


def test_verified_block_keeps_the_candidates_the_verifier_accepts(tmp_path):
    _code_verifier(tmp_path / "v.json")
    catalogue = _catalogue()
    queries = catalogue.loc[[0, 2], ["listing_id"]].assign(model_version="mv")
    dedup = DedupConfig(min_similarity=0.5, verifier=str(tmp_path / "v.json"), min_probability=0.5)
    out = find_block_pairs(("s1", 0), queries, catalogue, dedup, EncoderConfig(lexical_buckets=64))
    assert list(out.columns) == PAIR_SEARCH_ROWS.names
    pairs = out[out["kind"] == "pair"]
    # a-b, a-c, b-c are candidates (d is far); only a-b share the model code WD40EFRX
    assert list(zip(pairs["listing_id_l"], pairs["listing_id_r"], strict=True)) == [("a", "b")]
    assert pairs["match_score"].iloc[0] == pytest.approx(1 / (1 + math.exp(-3)), abs=1e-6)
    counted = out[out["kind"] == "candidates"]
    assert counted["candidates"].tolist() == [3]
    # the task's size: 2 queries x 4 catalogue rows of 2 dimensions (no lexical part: weight 0)
    assert counted[["queries", "catalogue_rows", "dim"]].values.tolist() == [[2, 4, 2]]
    assert counted["search_seconds"].iloc[0] >= 0.0

    # without a verifier every candidate is a pair, with a null probability
    plain = find_block_pairs(("s1", 0), queries, catalogue, DedupConfig(min_similarity=0.5), EncoderConfig())
    plain_pairs = plain[plain["kind"] == "pair"]
    assert len(plain_pairs) == 3 and plain_pairs["match_score"].isna().all()


def test_a_supplier_catalogue_is_vectorised_once_for_all_its_query_blocks(tmp_path):
    """Blocks of one supplier share its catalogue's vectors on a worker; a changed catalogue does not."""
    _code_verifier(tmp_path / "v.json")
    catalogue = _catalogue()
    dedup = DedupConfig(
        min_similarity=0.5, verifier=str(tmp_path / "v.json"), min_probability=0.0, max_results_per_query=2
    )
    hybrid = EncoderConfig(lexical_weight=0.2, lexical_buckets=64)
    blocks = [catalogue.loc[[0, 1], ["listing_id"]], catalogue.loc[[2, 3], ["listing_id"]]]
    blocks = [b.assign(model_version="mv") for b in blocks]

    pairs.forget_catalogue_vectors()
    fresh = []
    for number, block in enumerate(blocks):  # each block computed from scratch, as without the cache
        pairs.forget_catalogue_vectors()
        fresh.append(find_block_pairs(("s1", number), block, catalogue, dedup, hybrid))
    pairs.forget_catalogue_vectors()
    # shuffled rows (as the cogroup hands them over) are the same catalogue
    shared = [
        find_block_pairs(("s1", n), b, catalogue.sample(frac=1, random_state=n), dedup, hybrid)
        for n, b in enumerate(blocks)
    ]
    for got, want in zip(shared, fresh, strict=True):
        got, want = got.drop(columns="search_seconds"), want.drop(columns="search_seconds")
        pd.testing.assert_frame_equal(got, want)
    assert (shared[0]["kind"] == "pair").sum() > 0

    ordered = catalogue.sort_values("listing_id").reset_index(drop=True)
    lexical, index_m = pairs.catalogue_vectors(ordered, hybrid)
    again = pairs.catalogue_vectors(ordered.copy(), hybrid)
    assert again[0] is lexical and again[1] is index_m  # reused, not recomputed
    assert not index_m.flags.writeable  # shared: read-only
    renamed = ordered.assign(title=["WD Blue WD10EZEX 1TB", *ordered["title"][1:]])
    changed = pairs.catalogue_vectors(renamed, hybrid)
    assert changed[1] is not index_m and not np.array_equal(changed[0][0], lexical[0])
    np.testing.assert_array_equal(changed[0][1:], lexical[1:])
    assert pairs.catalogue_vectors(ordered, EncoderConfig())[0] is None  # no hybrid: no lexical part


def test_a_verifier_for_another_model_stops_the_stage_with_what_to_do(tmp_path):
    _code_verifier(tmp_path / "v.json", model_version="other")
    dedup = DedupConfig(verifier=str(tmp_path / "v.json"))
    with pytest.raises(DedupError, match="retrain it"):
        check_verifier(dedup, EncoderConfig(), "mv")
    with pytest.raises(DedupError, match="cannot be read"):
        check_verifier(DedupConfig(verifier=str(tmp_path / "absent.json")), EncoderConfig(), "mv")
    assert check_verifier(DedupConfig(), EncoderConfig(), "mv") is None


def _tasks(*rows):
    columns = ["supplier_id", "candidates", "queries", "catalogue_rows", "dim", "search_seconds"]
    return pd.DataFrame(list(rows), columns=columns)


def test_the_search_summary_names_the_largest_task_and_the_achieved_speed():
    # s-big: 10 x 1000 x 256 x 2 = 5.12 MFLOP; s-small: 2 x 20 x 256 x 2 = 20,480 FLOP
    summary = summarise_search(_tasks(("s-small", 1, 2, 20, 256, 0.001), ("s-big", 7, 10, 1000, 256, 0.002)))
    floor = 10 * 1000 * 256 * 2 + 2 * 20 * 256 * 2
    assert summary["search_tasks"] == 2 and summary["candidates"] == 8
    assert summary["largest_task"] == {"supplier_id": "s-big", "queries": 10, "catalogue_rows": 1000}
    assert summary["largest_task_share"] == round(10 * 1000 / (10 * 1000 + 2 * 20), 3)
    assert summary["search_gflop"] == round(floor / 1e9, 3)
    assert summary["search_gflops"] == round(floor / 0.003 / 1e9, 2)


def test_the_search_summary_of_a_night_without_tasks_is_empty_not_an_error():
    summary = summarise_search(_tasks())
    assert summary["search_tasks"] == 0 and summary["largest_task"] is None and summary["search_gflops"] is None
    # and a task too fast to time has no speed rather than a division by zero
    assert summarise_search(_tasks(("s", 0, 1, 1, 4, 0.0)))["search_gflops"] is None


def test_lexical_terms_give_back_the_very_lexical_vectors():
    from jobs.pairs import LEXICAL_TERMS, catalogue_lexical, dense_lexical, lexical_terms

    encoder = EncoderConfig(lexical_weight=0.2, lexical_buckets=64)
    rows = _catalogue()  # one row has no title: an empty term list
    index, value = lexical_terms(rows, encoder)
    assert [len(i) for i in index][3] == 0 and all(len(i) > 5 for i in index[:3])
    assert all(i.dtype == np.int32 and v.dtype == np.float32 for i, v in zip(index, value, strict=True))
    dense = dense_lexical(pd.Series(index), pd.Series(value), 64)
    np.testing.assert_array_equal(dense, catalogue_lexical(rows, encoder))
    # rows carrying their terms are densified, not re-read from the (here blanked) titles
    carried = rows.assign(title=None, **{LEXICAL_TERMS[0]: index, LEXICAL_TERMS[1]: value})
    np.testing.assert_array_equal(catalogue_lexical(carried, encoder), dense)
    assert lexical_terms(rows.iloc[:0], encoder) == ([], [])


@pytest.mark.filterwarnings("error::UserWarning")  # torch on the shared read-only catalogue vectors
def test_the_verifiers_neighbour_search_runs_on_the_configured_backend(tmp_path, monkeypatch):
    """The GPU path (dedup.backend="blocked" on cuda) for the verifier too, run here as torch on the CPU."""
    from dedup import search

    _code_verifier(tmp_path / "v.json")
    catalogue = _catalogue()
    queries = catalogue.loc[[0, 2], ["listing_id"]].assign(model_version="mv")
    calls = []
    real = search.find_pairs

    def recording(*args, **kwargs):  # a spy: the real search runs
        calls.append((kwargs.get("backend", "faiss"), kwargs.get("device", "cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "find_pairs", recording)
    faiss = DedupConfig(min_similarity=0.5, verifier=str(tmp_path / "v.json"), min_probability=0.0)
    torch_cpu = DedupConfig(
        min_similarity=0.5,
        verifier=str(tmp_path / "v.json"),
        min_probability=0.0,
        backend="blocked",
        device="torch:cpu",
    )
    want = find_block_pairs(("s1", 0), queries, catalogue, faiss, EncoderConfig())
    assert calls and set(calls) == {("faiss", "cpu")}
    calls.clear()
    got = find_block_pairs(("s1", 0), queries, catalogue, torch_cpu, EncoderConfig())
    assert calls and set(calls) == {("blocked", "torch:cpu")}  # candidates and neighbour lists alike
    columns = ["kind", "listing_id_l", "listing_id_r"]
    pd.testing.assert_frame_equal(got[columns], want[columns])
    np.testing.assert_allclose(got["match_score"].to_numpy(float), want["match_score"].to_numpy(float), atol=1e-6)
    np.testing.assert_allclose(got["similarity_m"].to_numpy(float), want["similarity_m"].to_numpy(float), atol=1e-6)
