"""Match-quality metrics: retrieval (MRR, Recall@k), pair classification and cluster pairs.

Pure numpy. Every function takes similarities (higher = closer) and ground-truth labels and
returns plain floats / ints, so the evaluation harness and the tests share one definition.

Conventions
-----------
* **Retrieval** follows the paper's protocol: a query ranks a gallery by similarity; the rank of
  a query is the rank of its *first* relevant gallery item; ``MRR`` is the mean of ``1 / rank``
  and ``Recall@k`` is the fraction of queries whose first relevant item is in the top ``k``.
  Ties are broken **pessimistically**: a relevant item tied with non-relevant ones is ranked
  after all of them, so a method cannot score by giving everything the same similarity.
  Queries without any relevant gallery item are not counted (the caller filters them and
  reports how many remained).
* **Pairs** are predicted positive when ``similarity >= threshold`` (inclusive, as in
  ``dedup.find_pairs``).
* **Cluster pairs** compare two partitions of the same items by the pairs they put together:
  precision = share of predicted same-group pairs that are true, recall = share of true
  same-group pairs that are predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)


@dataclass(frozen=True)
class PairScores:
    """Precision / recall / F1 of a set of predicted pairs against the true pairs.

    Attributes:
        precision: tp / (tp + fp); 0.0 when nothing was predicted.
        recall: tp / (tp + fn); 0.0 when there are no true pairs.
        f1: harmonic mean of precision and recall; 0.0 when both are 0.
        tp, fp, fn: the counts behind them.
    """

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class ThresholdChoice:
    """A similarity threshold and the pair scores it gives.

    Attributes:
        threshold: pairs with ``similarity >= threshold`` are predicted positive.
        scores: the pair scores at that threshold.
    """

    threshold: float
    scores: PairScores


def scores_from_counts(tp: int, fp: int, fn: int) -> PairScores:
    """Builds PairScores from counts.

    Args:
        tp, fp, fn: true positives, false positives and false negatives (>= 0).

    Returns:
        The precision, recall and F1 for those counts (0.0 where a denominator is 0).
    """
    tp, fp, fn = int(tp), int(fp), int(fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairScores(precision, recall, f1, tp, fp, fn)


def as_binary_labels(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Checks labels are 0/1 (or bool) of length ``n``; returns them as a bool array [n]."""
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"labels have shape {array.shape}, expected ({n},) like the similarities")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError("labels must be 0/1 or bool (1 = same product)")
    return array.astype(bool)


def as_similarities(similarities: Sequence[float] | np.ndarray) -> np.ndarray:
    """Checks similarities are finite and 1-d; returns them as a float64 array [n]."""
    array = np.asarray(similarities, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"similarities must be 1-d, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("similarities contain NaN or infinity")
    return array


def score_pairs(
    similarities: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    threshold: float,
) -> PairScores:
    """Scores pair classification at one threshold.

    Args:
        similarities: [n] similarity of each labelled pair.
        labels: [n] 1 (or True) for a matching pair, 0 for a non-matching one.
        threshold: pairs with ``similarity >= threshold`` are predicted positive.

    Returns:
        PairScores over the n labelled pairs.

    Raises:
        ValueError: on mismatched lengths, non-binary labels or non-finite similarities.
    """
    sims = as_similarities(similarities)
    truth = as_binary_labels(labels, sims.shape[0])
    predicted = sims >= threshold
    tp = int(np.count_nonzero(predicted & truth))
    fp = int(np.count_nonzero(predicted & ~truth))
    fn = int(np.count_nonzero(~predicted & truth))
    return scores_from_counts(tp, fp, fn)


def threshold_curve(
    similarities: np.ndarray, weights_pos: np.ndarray, weights_neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative positive / negative weight predicted at every distinct threshold.

    Args:
        similarities: [n] float64 similarities.
        weights_pos: [n] weight of each pair as a positive (its label, or a bootstrap count).
        weights_neg: [n] weight of each pair as a negative.

    Returns:
        ``(thresholds, tp, fp)``: distinct similarity values in descending order and, for each,
        the total positive and negative weight with ``similarity >= threshold``.
    """
    order = np.argsort(-similarities, kind="stable")
    sims = similarities[order]
    tp = np.cumsum(weights_pos[order])
    fp = np.cumsum(weights_neg[order])
    # keep the last row of each run of equal similarities: a threshold takes all ties at once
    last = np.r_[sims[1:] != sims[:-1], True]
    return sims[last], tp[last], fp[last]


def best_f1_threshold(
    similarities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> ThresholdChoice:
    """Finds the threshold with the highest pair F1 (the oracle or validation choice).

    Every distinct similarity is a candidate threshold. Among equal F1, the highest threshold
    wins (fewer predicted pairs).

    Args:
        similarities: [n] similarity of each labelled pair.
        labels: [n] 1 for a matching pair, 0 otherwise; at least one 1.

    Returns:
        The best threshold and its scores.

    Raises:
        ValueError: on bad input or when no pair is labelled a match.
    """
    sims = as_similarities(similarities)
    truth = as_binary_labels(labels, sims.shape[0])
    n_pos = int(truth.sum())
    if n_pos == 0:
        raise ValueError("no pair is labelled a match; F1 is undefined")
    thresholds, tp, fp = threshold_curve(sims, truth.astype(np.float64), (~truth).astype(np.float64))
    f1 = 2 * tp / (tp + fp + n_pos)  # = 2PR / (P + R)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return ThresholdChoice(
        float(thresholds[best]),
        scores_from_counts(int(tp[best]), int(fp[best]), n_pos - int(tp[best])),
    )


def rank_of_first_relevant(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Rank (1-based) of the first relevant gallery item for each query, ties pessimistic.

    Args:
        similarity: float [n_queries, n_gallery]; use ``-inf`` to exclude an item (e.g. the
            query itself) from a query's ranking.
        relevant: bool [n_queries, n_gallery]; every row needs at least one relevant item
            with a finite similarity.

    Returns:
        int64 [n_queries]: 1 + the number of non-relevant items whose similarity is at least
        that of the best relevant item.

    Raises:
        ValueError: on shape mismatch or a query without a usable relevant item.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if similarity.shape != relevant.shape or similarity.ndim != 2:
        raise ValueError(
            f"similarity {similarity.shape} and relevant {relevant.shape} must be the same 2-d "
            "shape [n_queries, n_gallery]"
        )
    best_relevant = np.where(relevant, similarity, -np.inf).max(axis=1)  # [q]
    if not np.isfinite(best_relevant).all():
        bad = np.flatnonzero(~np.isfinite(best_relevant))[:5].tolist()
        raise ValueError(f"queries {bad} have no relevant gallery item; drop them before ranking")
    outranking = (similarity >= best_relevant[:, None]) & ~relevant  # [q, g]
    return 1 + outranking.sum(axis=1).astype(np.int64)


def retrieval_metrics(ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """MRR and Recall@k from the rank of each query's first relevant item.

    Args:
        ranks: [n_queries] 1-based ranks (see ``rank_of_first_relevant``); at least one.
        ks: the cut-offs for Recall@k.

    Returns:
        ``{"mrr": ..., "recall@1": ..., "recall@5": ..., ...}`` as floats in [0, 1].

    Raises:
        ValueError: when there are no ranks or a rank is below 1.
    """
    array = np.asarray(ranks, dtype=np.int64)
    if array.size == 0:
        raise ValueError("no queries to score")
    if (array < 1).any():
        raise ValueError("ranks are 1-based; got a rank below 1")
    metrics = {"mrr": float(np.mean(1.0 / array))}
    for k in ks:
        metrics[f"recall@{k}"] = float(np.mean(array <= k))
    return metrics


def rank_queries(
    queries: np.ndarray,
    gallery: np.ndarray,
    relevant: np.ndarray,
    exclude: np.ndarray | None = None,
    block_size: int = 1024,
) -> np.ndarray:
    """Ranks a gallery for each query by inner product and returns first-relevant ranks.

    Args:
        queries: float [n_queries, dim] L2-normalised vectors (or a scipy sparse matrix).
        gallery: float [n_gallery, dim] L2-normalised vectors (or a scipy sparse matrix).
        relevant: bool [n_queries, n_gallery] ground truth.
        exclude: optional bool [n_queries, n_gallery]; True items are left out of the
            ranking (e.g. the query itself when the gallery contains the queries).
        block_size: queries scored per block, to bound memory.

    Returns:
        int64 [n_queries] ranks (see ``rank_of_first_relevant``).
    """
    ranks = []
    for start in range(0, queries.shape[0], block_size):
        stop = start + block_size
        sims = queries[start:stop] @ gallery.T
        sims = np.asarray(sims.todense() if hasattr(sims, "todense") else sims, dtype=np.float64)
        if exclude is not None:
            sims[exclude[start:stop]] = -np.inf
        ranks.append(rank_of_first_relevant(sims, relevant[start:stop]))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def _same_group_pairs(sizes: np.ndarray) -> int:
    """Number of unordered pairs inside groups of the given sizes."""
    sizes = sizes.astype(np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


def cluster_pair_scores(predicted: Sequence[object] | np.ndarray, truth: Sequence[object] | np.ndarray) -> PairScores:
    """Pairwise precision / recall / F1 of a predicted grouping against the true one.

    Each item has a predicted group label and a true group label; an item alone in its label
    is a singleton. A pair of items counts as predicted when both have the same predicted
    label, and as true when both have the same true label.

    Args:
        predicted: [n] predicted group label per item (any hashable; give singletons unique
            labels).
        truth: [n] true group label per item.

    Returns:
        PairScores over item pairs (tp = pairs together in both).

    Raises:
        ValueError: if the lengths differ.
    """
    predicted = np.asarray(predicted, dtype=object)
    truth = np.asarray(truth, dtype=object)
    if predicted.shape != truth.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} must be 1-d of one length")
    _, pred_codes = np.unique(predicted.astype(str), return_inverse=True)
    _, true_codes = np.unique(truth.astype(str), return_inverse=True)
    joint = pred_codes.astype(np.int64) * (int(true_codes.max(initial=0)) + 1) + true_codes
    tp = _same_group_pairs(np.unique(joint, return_counts=True)[1])
    n_pred = _same_group_pairs(np.bincount(pred_codes))
    n_true = _same_group_pairs(np.bincount(true_codes))
    return scores_from_counts(tp, n_pred - tp, n_true - tp)


def pair_set_scores(predicted_pairs: set[tuple[str, str]], true_pairs: set[tuple[str, str]]) -> PairScores:
    """Scores a set of predicted unordered pairs against the true pairs.

    Args:
        predicted_pairs: pairs ``(a, b)`` with ``a < b``.
        true_pairs: pairs ``(a, b)`` with ``a < b``.

    Returns:
        PairScores of the two sets.
    """
    tp = len(predicted_pairs & true_pairs)
    return scores_from_counts(tp, len(predicted_pairs) - tp, len(true_pairs) - tp)
