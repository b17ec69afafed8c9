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
from jobs.pairs import check_verifier, find_block_pairs
from schemas.tables import PAIR_SEARCH_ROWS


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
            "emb_m": list(vectors),
            "emb_t": list(vectors),
            "emb_i": list(np.zeros_like(vectors)),
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
    queries = catalogue.loc[[0, 2], ["listing_id", "emb_m"]].assign(model_version="mv")
    dedup = DedupConfig(min_similarity=0.5, verifier=str(tmp_path / "v.json"), min_probability=0.5)
    out = find_block_pairs(("s1", 0), queries, catalogue, dedup, EncoderConfig(lexical_buckets=64))
    assert list(out.columns) == PAIR_SEARCH_ROWS.names
    pairs = out[out["kind"] == "pair"]
    # a-b, a-c, b-c are candidates (d is far); only a-b share the model code WD40EFRX
    assert list(zip(pairs["listing_id_l"], pairs["listing_id_r"], strict=True)) == [("a", "b")]
    assert pairs["match_score"].iloc[0] == pytest.approx(1 / (1 + math.exp(-3)), abs=1e-6)
    assert out.loc[out["kind"] == "candidates", "candidates"].tolist() == [3]

    # without a verifier every candidate is a pair, with a null probability
    plain = find_block_pairs(("s1", 0), queries, catalogue, DedupConfig(min_similarity=0.5))
    plain_pairs = plain[plain["kind"] == "pair"]
    assert len(plain_pairs) == 3 and plain_pairs["match_score"].isna().all()


def test_a_verifier_for_another_model_stops_the_stage_with_what_to_do(tmp_path):
    _code_verifier(tmp_path / "v.json", model_version="other")
    dedup = DedupConfig(verifier=str(tmp_path / "v.json"))
    with pytest.raises(DedupError, match="retrain it"):
        check_verifier(dedup, EncoderConfig(), "mv")
    with pytest.raises(DedupError, match="cannot be read"):
        check_verifier(DedupConfig(verifier=str(tmp_path / "absent.json")), EncoderConfig(), "mv")
    assert check_verifier(DedupConfig(), EncoderConfig(), "mv") is None
