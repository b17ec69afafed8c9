"""fit_verifier: trains the pair verifier and chooses the verified pipeline's operating point.

Fixed rules (bench/README.md, "Verified matching"), all on WDC, none on a test or Leipzig file:

1. **Candidates**: the candidate threshold is the highest similarity that keeps at least
   ``--candidate-recall`` (0.95) of the positive pairs of ``000un_valid_medium``; it is also the
   threshold of the neighbour lists the verifier's rank / gap features see.
2. **Training**: a gradient-boosted tree ensemble (scikit-learn HistGradientBoosting, fixed
   settings, seed 0) on the ``dedup.features`` of the *candidate* pairs (what it will score) of
   three kinds of pool, each pool the catalogue its neighbour features are computed in:
   WDC ``000un_train_medium``'s pair file (labelled hard negatives; pairs touching an offer of
   valid_medium or a gs file left out); random catalogues of those offers (sizes 25–400,
   every pair labelled by ``cluster_id``: sparse catalogues, where a listing's best neighbour
   can be an unrelated product); and 10 shop-like pools of GroceryStore ``train`` photos
   (8 SKUs x 4 photos, titles brand + coarse class, so same-title variants differ only by
   photo), without the SKUs that ``examples/`` lists.
   With ``train.verifier_share`` > 0 (the encoder's run record must agree) only the products of
   that share are used — WDC clusters and GroceryStore SKUs the encoder never trained on — so
   the verifier learns from similarities like those it will meet, not from memorised ones.
   With ``--cross-fit OUTSIDE,INSIDE`` (two encoders trained on the two sides of one share) the
   verifier trains on every product, each pair embedded by the fold encoder that never saw it,
   and is calibrated (rules 3–5) with ``encoder.weights``, the encoder trained on everything.
3. **Calibration**: Platt scaling of the ensemble's score on the candidate pairs of
   valid_medium: its pair file plus random catalogues of its offers (as in training), so the
   score is a match probability in dense and in sparse catalogues.
4. **Operating point**: the probability threshold with the best pair F1 on those valid pairs.
5. **Weight of the random catalogues** in training: the one of {0, 0.1, 0.3, 1} with the best
   F1 of rule 4 (ties to the smaller).

It writes ``dedup.verifier`` (JSON, see ``dedup.verifier``) and logs the ``[dedup]`` lines of
the config (``min_similarity``, ``min_probability`` and their sources) to paste into it.
The shipped verifier (``make folds``, then ``make verifier``)::

    python -m training.fit_verifier --config conf/sspr.toml \
        --cross-fit var/folds/outside.safetensors,var/folds/inside.safetensors

Exit codes: 0 done, 2 missing datasets or bad settings (the message says which), 1 a crash.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.datasets import (
    WDC_TEST,
    WDC_TRAIN,
    WDC_VALID,
    read_wdc_offers,
    read_wdc_pairs,
    shop_pools,
    trained_products,
)
from config.command import add_shortcut, command_parser, run_command
from config.errors import DedupError
from dedup.features import FEATURE_NAMES, parse_listings, pool_pair_features
from dedup.metrics import ThresholdChoice, best_f1_threshold, scores_from_counts
from dedup.verifier import Tree, Verifier, fit_platt, save_verifier

log = logging.getLogger(__name__)

SAMPLE_TRUTH = Path(__file__).resolve().parents[1] / "examples" / "ground_truth" / "duplicates.csv"
"""The shipped samples' duplicate groups: their GroceryStore SKUs are left out of training, so the
nightly on the samples meets grocer SKUs the verifier never saw."""
WDC_POOL_SIZES = (25, 25, 50, 50, 100, 100, 200, 200, 400, 400)
"""Sizes of the random WDC training catalogues (``cluster_pools``)."""
POOL_WEIGHTS = (0.0, 0.1, 0.3, 1.0)
"""Rule 5's candidate training weights of the random catalogues' pairs."""
PAIRS, RANDOM, SHOP = "pairs", "random", "shop"
GROCERY_POOLS = 10
GROCERY_SKUS_PER_POOL = 8
GROCERY_PHOTOS_PER_SKU = 4

MODEL_SETTINGS = {
    "max_iter": 200,
    "learning_rate": 0.05,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
    "early_stopping": False,
    "random_state": 0,
}
"""HistGradientBoostingClassifier settings, fixed before any test or transfer set was scored."""


def candidate_threshold(similarities: np.ndarray, labels: np.ndarray, recall: float) -> float:
    """The highest threshold keeping at least ``recall`` of the positives (``>=`` is inclusive).

    Args:
        similarities: float [n] pair similarities.
        labels: [n], 1 = match.
        recall: the share of positives to keep, in (0, 1].

    Returns:
        The threshold (a similarity of one of the positives).
    """
    positives = np.sort(np.asarray(similarities, dtype=np.float64)[np.asarray(labels).astype(bool)])
    if positives.size == 0:
        raise ValueError("no positive pairs to choose a candidate threshold on")
    drop = int(np.floor((1.0 - recall) * positives.size + 1e-9))
    value = positives[min(drop, positives.size - 1)]
    # a float32 the pipeline can store and compare, never above the positive it keeps
    rounded = np.float32(value)
    if rounded > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def export_trees(model) -> tuple[list[Tree], float]:
    """The trees and baseline of a fitted binary HistGradientBoostingClassifier."""
    trees = []
    for (predictor,) in model._predictors:  # one predictor per iteration for a binary task
        nodes = predictor.nodes
        trees.append(
            Tree(
                feature=nodes["feature_idx"].astype(np.int64),
                threshold=nodes["num_threshold"].astype(np.float64),
                missing_left=nodes["missing_go_to_left"].astype(bool),
                left=nodes["left"].astype(np.int64),
                right=nodes["right"].astype(np.int64),
                value=nodes["value"].astype(np.float64),
                leaf=nodes["is_leaf"].astype(bool),
            )
        )
    return trees, float(np.ravel(model._baseline_prediction)[0])


class LabelledPool:
    """Labelled pairs among one pool of listings, the pool playing a supplier's catalogue.

    Args:
        parsed: ``parse_listings`` of the pool.
        vectors: ``{"m", "t", "i"}`` float32 [n, dim] of the pool (zero rows for an absent
            modality).
        lexical: the lexical vectors of the pool's titles.
        left, right: int [p] the pairs' pool rows.
        labels: bool [p], True = same product.
        kind: ``PAIRS`` (a labelled pair file), ``RANDOM`` (a random catalogue) or ``SHOP`` (photos).
    """

    def __init__(self, parsed, vectors: dict, lexical: np.ndarray, left, right, labels, kind: str = PAIRS) -> None:
        self.parsed, self.vectors, self.lexical = parsed, vectors, lexical
        self.left, self.right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=bool)
        self.kind = kind

    def similarity(self) -> np.ndarray:
        """``m`` similarity of each pair."""
        m = self.vectors["m"]
        return np.einsum("pd,pd->p", m[self.left], m[self.right]).astype(np.float64)

    def candidates(self, min_similarity: float) -> LabelledPool:
        """The same pool with only the pairs the candidate search would find."""
        keep = self.similarity() >= min_similarity
        return LabelledPool(
            self.parsed, self.vectors, self.lexical, self.left[keep], self.right[keep], self.labels[keep], self.kind
        )

    def features(self, neighbour_min_similarity: float, budget: int) -> np.ndarray:
        """The verifier's features of each pair."""
        v = self.vectors
        return pool_pair_features(
            self.parsed,
            self.lexical,
            v["m"],
            v["t"],
            v["i"],
            self.left,
            self.right,
            neighbour_min_similarity,
            budget,
        )


def wdc_pool(offers: pd.DataFrame, vectors: dict, lexical: np.ndarray, pairs: pd.DataFrame) -> LabelledPool:
    """The pool of one WDC pair file: the offers its pairs use.

    Args:
        offers: ``read_wdc_offers`` rows covering the file's offers.
        vectors: ``{"m", "t", "i"}`` of ``offers``, row-aligned.
        lexical: the lexical vectors of ``offers``' titles.
        pairs: ``read_wdc_pairs`` of the file.
    """
    ids = pd.unique(pd.concat([pairs["id_left"], pairs["id_right"]]))
    rows = pd.Series(np.arange(len(offers)), index=offers["id"].to_numpy()).loc[ids].to_numpy()
    pool = pd.Series(np.arange(len(ids)), index=ids)
    part = offers.iloc[rows]
    parsed = parse_listings(part["title"].tolist(), part["brand"], part["price"], part["currency"])
    return LabelledPool(
        parsed,
        {k: v[rows] for k, v in vectors.items()},
        lexical[rows],
        pool.loc[pairs["id_left"]].to_numpy(),
        pool.loc[pairs["id_right"]].to_numpy(),
        pairs["label"].to_numpy().astype(bool),
    )


def cluster_pools(
    offers: pd.DataFrame,
    vectors: dict,
    lexical: np.ndarray,
    sizes: tuple[int, ...] = WDC_POOL_SIZES,
    seed: int = 0,
) -> list[LabelledPool]:
    """Random catalogues of WDC offers, every pair labelled by ``cluster_id``.

    The pair files hold dense pools of look-alikes; a supplier's catalogue is often sparse, where
    a listing's best neighbour can be an unrelated product. These pools (one per size) teach the
    verifier that case: two offers are the same product when they share a ``cluster_id``.

    Args:
        offers: ``read_wdc_offers`` rows (training offers only).
        vectors: ``{"m", "t", "i"}`` of ``offers``, row-aligned.
        lexical: the lexical vectors of ``offers``' titles.
        sizes: the pools' sizes (offers).
        seed: seed of the draw.
    """
    rng = np.random.default_rng(seed)
    parsed = parse_listings(offers["title"].tolist(), offers["brand"], offers["price"], offers["currency"])
    clusters = offers["cluster_id"].to_numpy()
    draws = [np.sort(rng.choice(len(offers), size=min(size, len(offers)), replace=False)) for size in sizes]
    return [all_pairs_pool(rows, parsed, vectors, lexical, clusters, RANDOM) for rows in draws]


def all_pairs_pool(rows, parsed, vectors: dict, lexical: np.ndarray, classes: np.ndarray, kind: str) -> LabelledPool:
    """The pool of records ``rows``, every pair labelled by whether the two share a class."""
    left, right = np.triu_indices(len(rows), k=1)
    return LabelledPool(
        [parsed[r] for r in rows],
        {k: v[rows] for k, v in vectors.items()},
        lexical[rows],
        left,
        right,
        classes[rows][left] == classes[rows][right],
        kind=kind,
    )


def grocery_pools(
    photos: pd.DataFrame,
    vectors: dict,
    lexical: np.ndarray,
    pools: int = GROCERY_POOLS,
    skus: int = GROCERY_SKUS_PER_POOL,
    per_sku: int = GROCERY_PHOTOS_PER_SKU,
    seed: int = 0,
) -> list[LabelledPool]:
    """Shop-like pools of GroceryStore photos: ``skus`` SKUs with ``per_sku`` photos each.

    Every pair of a pool is labelled (same fine class = same product). Titles are the
    constructed brand + coarse class, so several SKUs of a pool can share a title and only the
    photo tells them apart, as on a grocer's shelf.

    Args:
        photos: ``read_grocery`` photos (one split, the reserved SKUs already left out).
        vectors: ``{"m", "t", "i"}`` of ``photos``, row-aligned.
        lexical: the lexical vectors of the photos' titles.
        pools, skus, per_sku, seed: how many pools, their shape, and the draw's seed.
    """
    parsed = parse_listings(photos["title"].tolist(), photos["brand"].tolist())
    fine = photos["fine_id"].to_numpy()
    return [
        all_pairs_pool(rows, parsed, vectors, lexical, fine, SHOP)
        for rows in shop_pools(fine, pools, skus, per_sku, seed)
    ]


def stack_pools(pools: list[LabelledPool], neighbour_min_similarity: float, budget: int):
    """Features, labels and pool kinds of several pools' pairs, stacked."""
    features = [pool.features(neighbour_min_similarity, budget) for pool in pools]
    kinds = [np.full(len(pool.labels), pool.kind) for pool in pools]
    return np.concatenate(features), np.concatenate([pool.labels for pool in pools]), np.concatenate(kinds)


def fit_verifier(
    train: list[LabelledPool],
    valid: list[LabelledPool],
    model_version: str,
    idf_digest: str,
    budget: int,
    candidate_recall: float = 0.95,
    pool_weights: tuple[float, ...] = POOL_WEIGHTS,
) -> tuple[Verifier, dict]:
    """Runs rules 1–5 of the module docstring.

    Args:
        train: the training pools (WDC train_medium pairs, random WDC catalogues, GroceryStore
            shop pools).
        valid: the WDC valid_medium pools: its pair file first, then random catalogues of its
            offers.
        model_version: the encoder's model_version (the verifier is bound to it).
        idf_digest: ``LexicalVectorizer.idf_digest`` of the char_cosine feature.
        budget: the per-query budget (``dedup.max_results_per_query``).
        candidate_recall: rule 1's recall target.
        pool_weights: rule 5's candidate weights of the random training catalogues.

    Returns:
        ``(verifier, summary)``: summary holds the chosen thresholds and valid scores.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    threshold = candidate_threshold(valid[0].similarity(), valid[0].labels, candidate_recall)
    # the verifier learns from, and is calibrated on, what it will score: candidate pairs
    x_train, y_train, kinds = stack_pools([pool.candidates(threshold) for pool in train], threshold, budget)
    x_valid, y_valid, valid_kinds = stack_pools([pool.candidates(threshold) for pool in valid], threshold, budget)
    # a feature no training pair has (e.g. sim_i without photos) cannot be binned: give it a
    # constant, so no tree splits on it and its value never changes a score
    absent = np.isnan(x_train).all(axis=0)
    if absent.any():
        log.warning(
            "no training pair has %s: the verifier will not use it", [FEATURE_NAMES[k] for k in np.flatnonzero(absent)]
        )
        x_train[:, absent] = 0.0

    def fit(weight: float) -> tuple[Verifier, ThresholdChoice]:
        sample_weight = np.where(kinds == RANDOM, weight, 1.0)
        model = HistGradientBoostingClassifier(**MODEL_SETTINGS).fit(x_train, y_train, sample_weight=sample_weight)
        trees, baseline = export_trees(model)
        raw = Verifier(
            tuple(trees), baseline, 1.0, 0.0, FEATURE_NAMES, model_version, idf_digest, threshold, budget, {}
        )
        a, b = fit_platt(raw.raw_scores(x_valid), y_valid)
        verifier = dataclasses.replace(raw, platt_a=a, platt_b=b)
        return verifier, best_f1_threshold(verifier.probabilities(x_valid), y_valid)

    fits = {weight: fit(weight) for weight in pool_weights}
    sweep = {f"{weight:g}": round(float(choice.scores.f1), 6) for weight, (_, choice) in fits.items()}
    log.info("valid_medium candidate F1 by the weight of the random catalogues: %s", sweep)
    best = max(choice.scores.f1 for _, choice in fits.values())
    weight = min(w for w, (_, choice) in fits.items() if choice.scores.f1 == best)  # ties: the smaller
    verifier, choice = fits[weight]
    probabilities = verifier.probabilities(x_valid)
    pair_file = valid_kinds == PAIRS
    on_pairs = scores_from_counts(*_counts(probabilities[pair_file] >= choice.threshold, y_valid[pair_file], valid[0]))
    summary = {
        "min_similarity": threshold,
        "candidate_recall_valid": round(float((valid[0].similarity() >= threshold)[valid[0].labels].mean()), 6),
        "min_probability": round(float(choice.threshold), 6),
        "random_catalogue_weight": weight,
        "weight_sweep_valid_f1": sweep,
        "valid_precision": round(float(choice.scores.precision), 6),
        "valid_recall": round(float(choice.scores.recall), 6),
        "valid_f1": round(float(choice.scores.f1), 6),
        "valid_pair_file_f1": round(float(on_pairs.f1), 6),
        "train_pairs": len(y_train),
        "train_positives": int(y_train.sum()),
        "valid_pairs": len(y_valid),
    }
    info = {
        "trained_on": f"candidate pairs of: WDC {WDC_TRAIN} pairs without offers of {WDC_VALID} or a gs file; "
        f"random catalogues of those offers (sizes {list(WDC_POOL_SIZES)}) labelled by cluster_id; "
        f"{GROCERY_POOLS} GroceryStore train-photo shop pools ({GROCERY_SKUS_PER_POOL} SKUs x "
        f"{GROCERY_PHOTOS_PER_SKU} photos) without the SKUs of examples/",
        "calibrated_on": f"candidate pairs of WDC {WDC_VALID}: its pair file and random catalogues of its offers",
        "model": {"kind": "sklearn HistGradientBoostingClassifier", **MODEL_SETTINGS},
        "operating_point": summary,
    }
    return dataclasses.replace(verifier, info=info), summary


def _counts(predicted: np.ndarray, labels: np.ndarray, pool: LabelledPool) -> tuple[int, int, int]:
    """tp, fp, fn of predicted candidates of a pool, counting its positives that are no candidates as missed."""
    tp = int((predicted & labels).sum())
    return tp, int(predicted.sum()) - tp, int(pool.labels.sum()) - tp


def encode(encoder, titles: list, images: list) -> dict[str, np.ndarray]:
    """``{"m", "t", "i"}`` of records, in batches of 64."""
    parts: dict[str, list[np.ndarray]] = {"m": [], "t": [], "i": []}
    for start in range(0, len(titles), 64):
        encoded = encoder.encode(titles[start : start + 64], images[start : start + 64])
        for view, chunks in parts.items():
            chunks.append(getattr(encoded, view))
    return {view: np.concatenate(chunks) for view, chunks in parts.items()}


def reserved_skus(truth: Path = SAMPLE_TRUTH) -> set[str]:
    """The GroceryStore SKUs the shipped samples list (left out of training), by fine class name."""
    if not truth.exists():
        return set()
    frame = pd.read_csv(truth, dtype=str)
    return set(frame.loc[frame["supplier_id"].str.startswith("grocer"), "product_id"])


def encoder_seen_offers(offers: pd.DataFrame, verifier_share: float, side: str = "outside") -> set:
    """Ids of the WDC training offers an encoder trained on.

    Args:
        offers: ``read_wdc_offers`` of ``WDC_TRAIN`` (``id``, ``cluster_id``).
        verifier_share: its ``train.verifier_share``.
        side: its ``train.share_side``: the products outside the share, or inside it.
    """
    return set(offers["id"][trained_products(offers["cluster_id"], verifier_share, side)])


def read_training(
    shared: Path, encoder, encoder_config, verifier_share: float = 0.0, share_side: str = "outside"
) -> tuple[list[LabelledPool], list[LabelledPool]]:
    """Reads and embeds the training pools and the WDC valid pool.

    Args:
        shared: the shared datasets folder.
        encoder: the pipeline's encoder (``encoder.factory.build_encoder``).
        encoder_config: its config (for the lexical vectors of ``char_cosine``).
        verifier_share, share_side: ``train.verifier_share`` / ``train.share_side`` the encoder
            was trained with: when the share is > 0 only the products the encoder never saw
            (``benchmarks.datasets.trained_products``) are trained on.

    Returns:
        ``(train pools, valid pools)``: WDC train_medium's pair file (reserved offers left out),
        random catalogues of its offers and the GroceryStore shop pools; WDC valid_medium's pair
        file and random catalogues of its offers.
    """
    from benchmarks.datasets import grocery_title, read_grocery
    from encoder.lexical import LexicalVectorizer

    vectorizer = LexicalVectorizer(encoder_config.lexical_buckets, encoder_config.lexical_idf)
    reserved = set(read_wdc_offers(shared, (WDC_VALID, *WDC_TEST))["id"])
    train_pairs = read_wdc_pairs(shared, WDC_TRAIN)
    touching = train_pairs["id_left"].isin(reserved) | train_pairs["id_right"].isin(reserved)
    log.info("%s: %d pairs, %d touch a reserved offer and are left out", WDC_TRAIN, len(train_pairs), touching.sum())
    offers = read_wdc_offers(shared, (WDC_TRAIN, WDC_VALID))
    if verifier_share > 0:
        # the encoder trained on every other product: only pairs of two unseen offers are honest
        # examples of the similarities the verifier will meet
        seen = encoder_seen_offers(read_wdc_offers(shared, (WDC_TRAIN,)), verifier_share, share_side)
        touching |= train_pairs["id_left"].isin(seen) | train_pairs["id_right"].isin(seen)
        reserved |= seen
        log.info(
            "train.verifier_share %.2f: %d pairs of offers the encoder never saw are kept",
            verifier_share,
            int((~touching).sum()),
        )
    titles = offers["title"].tolist()
    started = time.perf_counter()
    vectors = encode(encoder, titles, [None] * len(titles))
    log.info("embedded %d WDC offers in %.1fs", len(titles), time.perf_counter() - started)
    lexical = vectorizer.transform(titles)
    wdc_train = wdc_pool(offers, vectors, lexical, train_pairs[~touching])
    valid = wdc_pool(offers, vectors, lexical, read_wdc_pairs(shared, WDC_VALID))  # the pair file
    train_offers = np.flatnonzero(
        offers["id"].isin(train_pairs["id_left"]) | offers["id"].isin(train_pairs["id_right"])
    )
    train_offers = train_offers[~offers["id"].iloc[train_offers].isin(reserved).to_numpy()]
    wdc_random = cluster_pools(
        offers.iloc[train_offers].reset_index(drop=True),
        {k: v[train_offers] for k, v in vectors.items()},
        lexical[train_offers],
    )
    valid_pairs = read_wdc_pairs(shared, WDC_VALID)
    valid_offers = np.flatnonzero(
        offers["id"].isin(valid_pairs["id_left"]) | offers["id"].isin(valid_pairs["id_right"])
    )
    valid_random = cluster_pools(
        offers.iloc[valid_offers].reset_index(drop=True),
        {k: v[valid_offers] for k, v in vectors.items()},
        lexical[valid_offers],
        seed=1,
    )

    photos, _ = read_grocery(shared)
    skus = reserved_skus()
    photos = photos[(photos["split"] == "train") & ~photos["fine"].isin(skus)]
    if verifier_share > 0:
        photos = photos[~trained_products(photos["fine_id"], verifier_share, share_side)]
    photos = photos.reset_index(drop=True)
    photos["brand"] = [grocery_title(f, c)[1] for f, c in zip(photos["fine"], photos["coarse"], strict=True)]
    started = time.perf_counter()
    images = [Path(path).read_bytes() for path in photos["path"]]
    photo_vectors = encode(encoder, photos["title"].tolist(), images)
    log.info(
        "embedded %d GroceryStore train photos of %d SKUs (%d SKUs of examples/ left out) in %.1fs",
        len(photos),
        photos["fine_id"].nunique(),
        len(skus),
        time.perf_counter() - started,
    )
    pools = grocery_pools(photos, photo_vectors, vectorizer.transform(photos["title"].tolist()))
    return [wdc_train, *wdc_random, *pools], [valid, *valid_random]


def encoder_verifier_share(config) -> float:
    """``train.verifier_share`` of the run that wrote ``encoder.weights`` (its ``<weights>.json``).

    Raises:
        DedupError: if the config's ``train.verifier_share`` differs from the run's: the
            verifier would train on pairs the encoder saw, or throw away pairs it did not.
    """
    share = config.train.verifier_share
    weights = config.encoder.weights
    options = run_options(weights)
    if options is None:
        return share
    ran = float(options.get("verifier_share", 0.0))
    if ran != share:
        raise DedupError(
            f"{weights} was trained with train.verifier_share={ran:g} but the config has {share:g}: "
            f"set train.verifier_share = {ran:g} (the products the encoder never saw) or retrain the encoder"
        )
    return share


def run_options(weights: str) -> dict | None:
    """The training options recorded beside a weights file (``<weights>.json``); None without one."""
    record = Path(str(weights) + ".json") if weights else None
    if record is None or not record.is_file():
        return None
    return json.loads(record.read_text()).get("options", {})


def cross_fit_folds(config, folds: str) -> list[tuple]:
    """The two encoders of cross-fitting, checked against their run records.

    Args:
        config: the pipeline config; ``encoder.weights`` is the encoder that will serve, trained
            on every product.
        folds: ``"OUTSIDE,INSIDE"``: weights trained with one ``train.verifier_share`` on the
            products outside it and on those inside it (``train.share_side``).

    Returns:
        ``[(encoder_config, share, side), ...]`` for each fold.

    Raises:
        DedupError: naming what does not fit (the served encoder held products out, a fold's
            record is missing or its share or side is not the expected one).
    """
    paths = [part.strip() for part in folds.split(",") if part.strip()]
    if len(paths) != 2:
        raise DedupError(f"--cross-fit {folds!r}: give two weights files, OUTSIDE,INSIDE")
    if float((run_options(config.encoder.weights) or {}).get("verifier_share", 0.0)) != 0:
        raise DedupError(
            f"{config.encoder.weights} was trained with a held-out share: the encoder that serves must have "
            "trained on every product (train.verifier_share = 0) for cross-fitting"
        )
    out, shares = [], set()
    for path, side in zip(paths, ("outside", "inside"), strict=True):
        options = run_options(path)
        if options is None:
            raise DedupError(f"{path}.json is missing: cross-fitting needs each fold's run record")
        share = float(options.get("verifier_share", 0.0))
        ran_side = options.get("share_side", "outside")
        if share <= 0 or ran_side != side:
            raise DedupError(
                f"{path} was trained with train.verifier_share={share:g}, share_side={ran_side!r}; the "
                f"{side} fold needs a share > 0 and share_side={side!r}"
            )
        shares.add(share)
        out.append((dataclasses.replace(config.encoder, weights=path), share, side))
    if len(shares) != 1:
        raise DedupError(f"the folds were trained with different shares {sorted(shares)}: use one")
    return out


def main(argv: list[str] | None = None) -> int:
    """Trains, calibrates and writes the verifier; returns the exit code."""
    parser = command_parser("python -m training.fit_verifier", __doc__)
    add_shortcut(parser, "--shared", "paths.datasets_dir", "the shared datasets folder")
    add_shortcut(parser, "--out", "dedup.verifier", "where to write the verifier (JSON)")
    parser.add_argument(
        "--candidate-recall",
        type=float,
        default=0.95,
        help="share of valid_medium positives the candidate threshold keeps (default 0.95)",
    )
    parser.add_argument(
        "--cross-fit",
        default="",
        metavar="OUTSIDE,INSIDE",
        help="cross-fitting: the verifier's training pairs get their similarities from the fold encoder "
        "that never saw them (two weights files trained with one train.verifier_share, share_side outside "
        "and inside), valid_medium from encoder.weights (trained on every product), which it will serve",
    )

    def body(args, config) -> int:
        from encoder.factory import build_encoder
        from encoder.lexical import LexicalVectorizer

        started = time.perf_counter()
        out = config.dedup.verifier
        if not out:
            raise DedupError("dedup.verifier is empty: set it (or pass --out) to the file to write")
        if not 0.0 < args.candidate_recall <= 1.0:
            raise DedupError(f"--candidate-recall {args.candidate_recall} must be in (0, 1]")
        shared = Path(config.paths.datasets_dir)
        if not (shared / "wdc_products_80cc20rnd").is_dir():
            raise DedupError(f"WDC Products not found under {shared}; pass --shared with the shared datasets folder")
        encoder = build_encoder(config.encoder)
        if args.cross_fit:
            folds = cross_fit_folds(config, args.cross_fit)
            _, valid = read_training(shared, encoder, config.encoder)
            train = []
            for fold_config, share, side in folds:
                log.info("cross-fit: training pools of the products the %s fold never saw, embedded by it", side)
                train += read_training(shared, build_encoder(fold_config), fold_config, share, side)[0]
        else:
            share = encoder_verifier_share(config)
            train, valid = read_training(shared, encoder, config.encoder, share)
        idf_digest = LexicalVectorizer(config.encoder.lexical_buckets, config.encoder.lexical_idf).idf_digest
        verifier, summary = fit_verifier(
            train, valid, encoder.model_version, idf_digest, config.dedup.max_results_per_query, args.candidate_recall
        )
        if args.cross_fit:
            verifier = dataclasses.replace(
                verifier,
                info={
                    **verifier.info,
                    "cross_fit": {
                        "folds": [f.weights for f, _, _ in folds],
                        "share": folds[0][1],
                        "why": "each training pair's features come from the fold encoder that never saw "
                        "its products; valid_medium's from the served encoder",
                    },
                },
            )
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_verifier(verifier, out)
        log.info(
            "wrote %s (%d trees) in %.1fs; valid_medium: %s",
            out,
            len(verifier.trees),
            time.perf_counter() - started,
            summary,
        )
        log.info(
            "[dedup] lines for the config:\nmin_similarity = %r\nmin_probability = %r",
            summary["min_similarity"],
            summary["min_probability"],
        )
        return 0

    return run_command("fit_verifier", body, argv, parser, log)


if __name__ == "__main__":
    sys.exit(main())
