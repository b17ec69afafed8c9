"""The verified pipeline on the benchmarks: candidates, then the pair verifier (task ``verified``).

What the nightly job does with ``dedup.verifier`` set, at the config's operating point
(``dedup.min_similarity`` for candidates, ``dedup.min_probability`` for pairs), scored on the
same pairs and protocols as the similarity-only rows of ``evaluation.tasks``, so both sit in one
table. Method ``verifier`` is the verified pipeline; ``candidates`` is its first stage alone.

* WDC ``valid_medium`` (where the operating point was chosen) and the ``gs`` files: each file's
  offers form the pool (the pipeline's supplier catalogue); candidate recall, candidates per
  offer and pair P/R/F1 at the operating point, plus the oracle (best-F1) probability threshold
  on the file, for reference.
* Leipzig Abt-Buy / Amazon-Google (transfer; nothing chosen on them): every left record queries
  the right table (candidates: range search at ``min_similarity`` within the per-query budget);
  a listing's neighbours are the other table's records. Closed world: a true match that is no
  candidate counts as missed.
* Google within-supplier: all Google records as one supplier, through ``find_pairs_by_id``, the
  verifier and ``cluster_pairs``: pairwise P/R/F1 of the verified pairs and of the groups.
* GroceryStore shop pools: 10 pools of 8 SKUs x 4 *test* photos, every pair labelled (same
  fine class), constructed titles: the image evidence, where same-title variants differ only
  by their photo.

Records go to ``run``; the verifier's provenance to ``run.details["verifier"]``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from benchmarks.datasets import (
    WDC_TEST,
    WDC_VALID,
    MatchingTask,
    grocery_title,
    read_grocery,
    read_leipzig_matching,
    read_wdc_offers,
    read_wdc_pairs,
    shop_pools,
    subset_pairs,
    within_source_groups,
)
from dedup.features import (
    FEATURE_NAMES,
    modality_similarity,
    neighbour_similarities,
    pair_features,
    parse_listings,
    pool_pair_features,
)
from dedup.metrics import PairScores, best_f1_threshold, cluster_pair_scores, pair_set_scores, scores_from_counts
from dedup.search import find_pairs, find_pairs_by_id
from dedup.verifier import Verifier, load_verifier
from evaluation.methods import encoder_method
from evaluation.tasks import Run, _rows, group_labels, text_vectors

logger = logging.getLogger(__name__)

VERIFIER = "verifier"
CANDIDATES = "candidates"
METHODS = (CANDIDATES, VERIFIER)


def _lexical(run: Run, titles: list[str]) -> np.ndarray:
    from encoder.lexical import LexicalVectorizer

    config = run.methods.encoder_config
    return LexicalVectorizer(config.lexical_buckets, config.lexical_idf).transform(titles)


def _scores(predicted: np.ndarray, labels: np.ndarray, positives: int) -> PairScores:
    """P/R/F1 of predicted pairs against ``positives`` true pairs (closed world)."""
    tp = int((predicted & labels).sum())
    return scores_from_counts(tp, int(predicted.sum()) - tp, positives - tp)


def _oracle_f1(probabilities: np.ndarray, labels: np.ndarray, positives: int) -> float:
    """Best F1 over probability thresholds (missed candidates stay missed)."""
    best = 0.0
    for threshold in np.unique(np.round(probabilities, 4)):
        best = max(best, _scores(probabilities >= threshold, labels, positives).f1)
    return best


def evaluate_verified(run: Run) -> None:
    """Scores the verified pipeline on WDC, Leipzig and the Google within-supplier task."""
    if run.dedup is None or not run.dedup.verifier:
        logger.warning("dedup.verifier is not set: the verified pipeline is not scored")
        return
    verifier = load_verifier(run.dedup.verifier)
    if verifier.model_version != run.methods.model_version:
        logger.warning(
            "the verifier was trained on model_version %s, the config's encoder is %s: its scores here "
            "are not what the pipeline would do (it refuses such a pair)",
            verifier.model_version,
            run.methods.model_version,
        )
    run.details["verifier"] = {
        "file": run.dedup.verifier.rsplit("/", 1)[-1],
        "digest": verifier.digest[:16],
        "min_similarity": run.dedup.min_similarity,
        "min_probability": run.dedup.min_probability,
        "info": verifier.info,
    }
    _wdc(run, verifier)
    for name in ("abt_buy", "amazon_google"):
        _leipzig(run, verifier, name)
    _grocery(run, verifier)


GROCERY_POOLS = {"pools": 10, "skus": 8, "per_sku": 4, "seed": 1}
"""Shop-like pools of GroceryStore test photos (the verifier trains on train-photo pools, seed 0)."""


def _grocery(run: Run, verifier: Verifier) -> None:
    """GroceryStore test photos in shop-like pools: same-title variants that only photos tell apart."""
    dedup = run.dedup
    photos, catalog = read_grocery(run.shared, run.limit)
    # the records (and so the cached vectors) of evaluation.tasks.evaluate_grocery
    records = pd.concat([photos[photos["split"].isin(("train", "test"))], catalog], ignore_index=True)
    encoded = run.methods.encode("grocery", records["title"].tolist(), records["path"].tolist())
    test = np.flatnonzero(records["split"].to_numpy() == "test")
    fine = records["fine_id"].to_numpy()
    brands = [grocery_title(f, c)[1] for f, c in zip(records["fine"], records["coarse"], strict=True)]
    lexical = _lexical(run, records["title"].tolist())
    features, labels = [], []
    for pool in shop_pools(fine[test], **GROCERY_POOLS):
        rows = test[pool]
        left, right = np.triu_indices(len(rows), k=1)
        parsed = parse_listings(records["title"].iloc[rows].tolist(), [brands[r] for r in rows])
        features.append(
            pool_pair_features(
                parsed,
                lexical[rows],
                encoded["m"][rows],
                encoded["t"][rows],
                encoded["i"][rows],
                left,
                right,
                verifier.neighbour_min_similarity,
                verifier.neighbour_budget,
            )
        )
        labels.append(fine[rows][left] == fine[rows][right])
    x, y = np.concatenate(features), np.concatenate(labels)
    probability, similarity = verifier.probabilities(x), x[:, 0]
    candidate = similarity >= dedup.min_similarity
    dataset, task, n, positives = "grocery:shop-pools", "pair-classification (constructed titles)", len(y), int(y.sum())
    run.add(dataset, task, CANDIDATES, "candidate_recall", float(candidate[y].mean()) if positives else 0.0, n)
    run.add_scores(dataset, task, CANDIDATES, _scores(candidate, y, positives), n, "@pipeline")
    verified = candidate & (probability >= dedup.min_probability)
    run.add_scores(dataset, task, VERIFIER, _scores(verified, y, positives), n, "@pipeline")
    run.add(
        dataset, task, VERIFIER, "oracle_f1", best_f1_threshold(np.where(candidate, probability, 0.0), y).scores.f1, n
    )
    # the same pairs by the encoder's image similarity alone, at its best threshold here (reference)
    image = x[:, FEATURE_NAMES.index("sim_i")]
    run.add(dataset, task, encoder_method("i"), "oracle_f1", best_f1_threshold(image, y).scores.f1, n)


def _record(run: Run, dataset: str, task: str, probability, similarity, labels, positives, candidates_per) -> None:
    """The candidates and verifier rows of one set of scored candidates."""
    dedup = run.dedup
    n = int(labels.size)
    run.add(dataset, task, CANDIDATES, "candidate_recall", int(labels.sum()) / positives if positives else 0.0, n)
    run.add(dataset, task, CANDIDATES, "candidates_per_listing", candidates_per, n)
    run.add_scores(
        dataset, task, CANDIDATES, _scores(similarity >= dedup.min_similarity, labels, positives), n, "@pipeline"
    )
    run.add_scores(
        dataset, task, VERIFIER, _scores(probability >= dedup.min_probability, labels, positives), n, "@pipeline"
    )
    run.add(dataset, task, VERIFIER, "oracle_f1", _oracle_f1(probability, labels, positives), n)


def _wdc(run: Run, verifier: Verifier) -> None:
    """WDC valid_medium and gs: each file's offers as one pool."""
    dedup = run.dedup
    offers = read_wdc_offers(run.shared, (WDC_VALID, *WDC_TEST))
    for split in (WDC_VALID, *WDC_TEST):
        pairs = subset_pairs(read_wdc_pairs(run.shared, split), run.limit)
        ids = pd.unique(pd.concat([pairs["id_left"], pairs["id_right"]]))
        pool = offers.set_index("id").loc[ids].reset_index()
        vectors = text_vectors(
            run, f"wdc-{split}-pool", pool["title"].tolist(), (encoder_method("m"), encoder_method("t"))
        )
        m, t = vectors[encoder_method("m")], vectors[encoder_method("t")]
        parsed = parse_listings(pool["title"].tolist(), pool["brand"], pool["price"], pool["currency"])
        left, right = _rows(pool["id"], pairs["id_left"]), _rows(pool["id"], pairs["id_right"])
        features = pool_pair_features(
            parsed,
            _lexical(run, pool["title"].tolist()),
            m,
            t,
            np.zeros((len(m), 1), dtype=np.float32),
            left,
            right,
            verifier.neighbour_min_similarity,
            verifier.neighbour_budget,
        )
        probability = verifier.probabilities(features)
        similarity = features[:, 0]
        candidate = similarity >= dedup.min_similarity
        labels = pairs["label"].to_numpy().astype(bool)
        # candidates per offer: the pool search the pipeline would run (self left out)
        found = find_pairs(m, m, dedup.min_similarity, max_results_per_query=dedup.max_results_per_query + 1)
        per_offer = (len(found) - len(m)) / len(m)
        dataset = f"wdc:{split.removeprefix('000un_') if split == WDC_VALID else split}"
        task = "pair-classification"
        n = int(labels.size)
        positives = int(labels.sum())
        run.add(dataset, task, CANDIDATES, "candidate_recall", float(candidate[labels].mean()), n)
        run.add(dataset, task, CANDIDATES, "candidates_per_listing", per_offer, n)
        run.add_scores(dataset, task, CANDIDATES, _scores(candidate, labels, positives), n, "@pipeline")
        verified = candidate & (probability >= dedup.min_probability)
        run.add_scores(dataset, task, VERIFIER, _scores(verified, labels, positives), n, "@pipeline")
        run.add(
            dataset,
            task,
            VERIFIER,
            "oracle_f1",
            best_f1_threshold(np.where(candidate, probability, 0.0), labels).scores.f1,
            n,
        )


def matching_inputs(run: Run, task: MatchingTask) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
    """The verifier's inputs for a Leipzig task's records, left table then right table.

    Returns:
        ``(m, t, parsed, lexical)``: the encoder's ``m`` and ``t`` vectors (cached under
        ``leipzig-<task>``), the parsed titles and the lexical vectors, one row per record.
    """
    both = pd.concat([task.left, task.right], ignore_index=True)
    titles = both["title"].tolist()
    vectors = text_vectors(run, f"leipzig-{task.name}", titles, (encoder_method("m"), encoder_method("t")))
    m, t = vectors[encoder_method("m")], vectors[encoder_method("t")]
    return m, t, parse_listings(titles, both["brand"], both["price"]), _lexical(run, titles)


def _leipzig(run: Run, verifier: Verifier, name: str) -> None:
    """A Leipzig matching task: left records query the right table; then the Google groups."""
    dedup = run.dedup
    task = read_leipzig_matching(run.shared, name, run.limit)
    left, right = task.left, task.right
    n_left = len(left)
    m, t, parsed, lexical = matching_inputs(run, task)
    found = find_pairs(m[:n_left], m[n_left:], dedup.min_similarity, max_results_per_query=dedup.max_results_per_query)
    q, x = found.query_idx, found.index_idx + n_left
    top_left = neighbour_similarities(
        m[:n_left], m[n_left:], None, verifier.neighbour_min_similarity, verifier.neighbour_budget
    )
    top_right = neighbour_similarities(
        m[n_left:], m[:n_left], None, verifier.neighbour_min_similarity, verifier.neighbour_budget
    )
    has_text = np.abs(t).sum(axis=1) > 0
    features = pair_features(
        parsed,
        lexical,
        q,
        x,
        found.similarity.astype(np.float64),
        modality_similarity(t, has_text, q, x),
        np.full(len(q), np.nan),
        top_left[q],
        top_right[x - n_left],
    )
    probability = verifier.probabilities(features)
    truth = set(zip(task.matches["left_id"], task.matches["right_id"], strict=True))
    left_ids, right_ids = left["id"].to_numpy(), right["id"].to_numpy()
    labels = np.array([(a, b) in truth for a, b in zip(left_ids[q], right_ids[x - n_left], strict=True)], dtype=bool)
    _record(
        run,
        f"leipzig:{name}",
        "cross-pairs",
        probability,
        found.similarity,
        labels,
        len(truth),
        len(q) / n_left if n_left else 0.0,
    )
    if name == "amazon_google":
        _google_within_supplier(run, verifier, task, m[n_left:], t[n_left:], parsed[n_left:], lexical[n_left:])


def verified_catalogue_pairs(
    run: Run, verifier: Verifier, ids: np.ndarray, m: np.ndarray, t: np.ndarray, parsed: list, lexical: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One catalogue as one supplier, as the pairs stage runs it: candidates, then the verifier.

    Candidates are ``find_pairs_by_id`` over the catalogue at ``dedup.min_similarity`` (within
    the per-query budget); each gets the verifier's match probability (no images).

    Args:
        run: the run (its ``dedup`` section sets the operating point).
        verifier: the pair verifier.
        ids: [n] str listing ids of the catalogue's rows.
        m, t: float32 [n, dim] the encoder's vectors.
        parsed, lexical: per row, as ``pair_features`` takes them.

    Returns:
        ``(left_ids, right_ids, similarity, probability)``: [p] per candidate, ``left < right``,
        similarity float64, probability float64.
    """
    dedup = run.dedup
    table, _ = find_pairs_by_id(ids, m, ids, m, dedup.min_similarity, max_results_per_query=dedup.max_results_per_query)
    left_ids = table["listing_id_l"].to_numpy(zero_copy_only=False)
    right_ids = table["listing_id_r"].to_numpy(zero_copy_only=False)
    position = pd.Series(np.arange(len(ids)), index=ids)
    a, b = position.loc[left_ids].to_numpy(), position.loc[right_ids].to_numpy()
    top = neighbour_similarities(
        m, m, np.arange(len(ids)), verifier.neighbour_min_similarity, verifier.neighbour_budget
    )
    has_text = np.abs(t).sum(axis=1) > 0
    similarity = table["similarity"].to_numpy().astype(np.float64)
    sim_t = modality_similarity(t, has_text, a, b)
    features = pair_features(parsed, lexical, a, b, similarity, sim_t, np.full(len(a), np.nan), top[a], top[b])
    return left_ids, right_ids, similarity, verifier.probabilities(features)


def _google_within_supplier(run: Run, verifier, task, m, t, parsed, lexical) -> None:
    """All Google records as one supplier: verified pairs and their groups."""
    dedup = run.dedup
    ids = task.right["id"].to_numpy().astype(object)
    truth = within_source_groups(task).to_numpy()
    true_pairs = {
        (min(a, b), max(a, b))
        for group in pd.Series(ids).groupby(truth).agg(list)
        for k, a in enumerate(group)
        for b in group[k + 1 :]
    }
    left_ids, right_ids, similarity, probability = verified_catalogue_pairs(run, verifier, ids, m, t, parsed, lexical)
    n = len(ids)
    keep = probability >= dedup.min_probability
    dataset, name = "leipzig:google_within_supplier", "duplicate-groups"
    for method, mask in ((CANDIDATES, np.ones(len(left_ids), dtype=bool)), (VERIFIER, keep)):
        pairs = set(zip(left_ids[mask].tolist(), right_ids[mask].tolist(), strict=True))
        run.add_scores(dataset, name, method, pair_set_scores(pairs, true_pairs), n, suffix="_pairs@pipeline")
        labels = group_labels(ids, left_ids[mask], right_ids[mask], similarity[mask].astype(np.float32))
        run.add_scores(dataset, name, method, cluster_pair_scores(labels, truth), n, suffix="_groups@pipeline")
