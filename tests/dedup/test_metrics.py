"""Metric and calibration functions against hand-computed values and naive references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dedup.calibration import CalibrationError, calibrate
from dedup.metrics import (
    best_f1_threshold,
    cluster_pair_scores,
    pair_set_scores,
    rank_of_first_relevant,
    rank_queries,
    retrieval_metrics,
    score_pairs,
)


def test_mrr_and_recall_on_a_three_query_toy():
    # query 0: relevant item ranked 1st; query 1: 2nd; query 2: 4th
    similarity = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],
            [0.8, 0.7, 0.1, 0.0],
            [0.9, 0.8, 0.7, 0.6],
        ]
    )
    relevant = np.array(
        [
            [1, 0, 0, 0],
            [0, 1, 0, 0],
            [0, 0, 0, 1],
        ],
        dtype=bool,
    )
    ranks = rank_of_first_relevant(similarity, relevant)
    assert ranks.tolist() == [1, 2, 4]
    metrics = retrieval_metrics(ranks, ks=(1, 2, 5))
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["recall@5"] == pytest.approx(1.0)


def test_rank_uses_the_best_relevant_item_and_breaks_ties_pessimistically():
    similarity = np.array([[0.5, 0.5, 0.9, 0.1], [0.3, 0.3, 0.3, 0.3]])
    relevant = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], dtype=bool)
    # row 0: best relevant 0.5 tied with a non-relevant 0.5 and below 0.9 -> rank 3
    # row 1: everything tied -> after both non-relevant items -> rank 3
    assert rank_of_first_relevant(similarity, relevant).tolist() == [3, 3]


def test_rank_rejects_a_query_without_relevant_items():
    with pytest.raises(ValueError, match="no relevant"):
        rank_of_first_relevant(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], dtype=bool))


def test_rank_queries_matches_a_naive_loop_and_excludes_self():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = rng.integers(0, 8, size=40)
    relevant = labels[:, None] == labels[None, :]
    exclude = np.eye(40, dtype=bool)
    relevant &= ~exclude
    keep = relevant.any(axis=1)
    ranks = rank_queries(vectors[keep], vectors, relevant[keep], exclude[keep], block_size=7)
    expected = []
    for q in np.flatnonzero(keep):
        order = sorted(
            (j for j in range(40) if j != q),
            key=lambda j: (-(vectors[q] @ vectors[j]), relevant[q, j]),  # relevant last on ties
        )
        expected.append(1 + next(r for r, j in enumerate(order) if relevant[q, j]))
    assert ranks.tolist() == expected


def test_score_pairs_threshold_is_inclusive():
    scores = score_pairs([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 1], threshold=0.8)
    assert (scores.tp, scores.fp, scores.fn) == (2, 1, 1)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 / 3)


def test_best_f1_threshold_on_a_toy():
    choice = best_f1_threshold([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert choice.threshold == pytest.approx(0.7)
    assert choice.scores.f1 == pytest.approx(0.8)
    assert (choice.scores.tp, choice.scores.fp, choice.scores.fn) == (2, 1, 0)


def test_best_f1_threshold_takes_ties_together_and_matches_brute_force():
    rng = np.random.default_rng(0)
    sims = np.round(rng.uniform(size=300), 2)  # many ties
    labels = (rng.uniform(size=300) < sims).astype(int)
    choice = best_f1_threshold(sims, labels)
    brute = max(score_pairs(sims, labels, t).f1 for t in np.unique(sims))
    assert choice.scores.f1 == pytest.approx(brute)
    assert score_pairs(sims, labels, choice.threshold).f1 == pytest.approx(brute)


def test_cluster_pair_scores_by_hand_and_against_brute_force():
    scores = cluster_pair_scores(["a", "a", "a", "b", "c"], ["x", "x", "y", "y", "z"])
    # predicted pairs {01, 02, 12}; true pairs {01, 23}; common {01}
    assert (scores.tp, scores.fp, scores.fn) == (1, 2, 1)
    assert scores.f1 == pytest.approx(0.4)

    rng = np.random.default_rng(1)
    predicted, truth = rng.integers(0, 6, 50), rng.integers(0, 9, 50)
    pairs = list(itertools.combinations(range(50), 2))
    pred_pairs = {p for p in pairs if predicted[p[0]] == predicted[p[1]]}
    true_pairs = {p for p in pairs if truth[p[0]] == truth[p[1]]}
    assert cluster_pair_scores(predicted, truth) == pair_set_scores(pred_pairs, true_pairs)


def test_calibrate_takes_the_lowest_threshold_reaching_the_target():
    sims = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6]
    labels = [1, 1, 0, 1, 0, 1]
    # precision by threshold: 1, 1, 2/3, 3/4, 3/5, 4/6
    assert calibrate(sims, labels, 0.75, n_bootstrap=0).threshold == pytest.approx(0.8)
    assert calibrate(sims, labels, 0.70, n_bootstrap=0).threshold == pytest.approx(0.8)
    assert calibrate(sims, labels, 0.65, n_bootstrap=0).threshold == pytest.approx(0.6)
    top = calibrate(sims, labels, 1.0, n_bootstrap=0)
    assert top.threshold == pytest.approx(0.9)
    assert (top.precision, top.recall) == (pytest.approx(1.0), pytest.approx(0.5))


def test_calibrate_matches_a_naive_scan():
    rng = np.random.default_rng(5)
    sims = rng.uniform(size=400)
    labels = (rng.uniform(size=400) < sims**2).astype(int)
    for target in (0.6, 0.8, 0.9):
        reaching = [t for t in np.unique(sims) if (s := score_pairs(sims, labels, t)).tp and s.precision >= target]
        assert calibrate(sims, labels, target, n_bootstrap=0).threshold == pytest.approx(min(reaching))


def test_calibrate_bootstrap_interval_is_seeded_and_brackets_the_threshold():
    rng = np.random.default_rng(7)
    sims = rng.uniform(size=2000)
    labels = (rng.uniform(size=2000) < sims**3).astype(int)
    first = calibrate(sims, labels, 0.8, n_bootstrap=200, seed=11)
    again = calibrate(sims, labels, 0.8, n_bootstrap=200, seed=11)
    assert first == again
    assert first.ci_low <= first.threshold <= first.ci_high
    assert first.ci_low < first.ci_high
    assert 0 < first.n_bootstrap_reached <= 200
    other = calibrate(sims, labels, 0.8, n_bootstrap=200, seed=12)
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_calibrate_says_when_the_target_cannot_be_reached():
    with pytest.raises(CalibrationError, match="best precision on these 2 pairs is 0.500"):
        calibrate([0.9, 0.8], [0, 1], 0.9)
    with pytest.raises(ValueError, match="target_precision"):
        calibrate([0.9], [1], 1.5)
