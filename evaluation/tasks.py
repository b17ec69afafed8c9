"""The evaluation tasks: each one reads a benchmark, embeds it with every method and scores it.

A task appends records ``{"dataset", "task", "method", "metric", "value", "n"}`` to the run and
may add details (thresholds, calibrations) to the run's metadata. Which files each number uses
is listed in ``FILES_USED``; no task fits anything on a test file (the TF-IDF vocabulary is
fitted, without labels, on the records being compared).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from benchmarks.datasets import (
    WDC_TEST,
    WDC_VALID,
    read_grocery,
    read_leipzig_matching,
    read_wdc_offers,
    read_wdc_pairs,
    subset_pairs,
    within_source_groups,
)
from dedup.calibration import CalibrationError, calibrate
from dedup.cluster import cluster_pairs
from dedup.config import DedupConfig
from dedup.metrics import (
    DEFAULT_KS,
    PairScores,
    best_f1_threshold,
    cluster_pair_scores,
    pair_set_scores,
    rank_queries,
    retrieval_metrics,
    score_pairs,
)
from dedup.search import find_pairs_by_id
from evaluation.methods import (
    EFFICIENTNET,
    MINILM,
    TFIDF,
    NeuralMethods,
    encoder_method,
    tfidf_vectors,
)

logger = logging.getLogger(__name__)

Matrix = np.ndarray | sp.csr_matrix

TEXT_METHODS = (TFIDF, MINILM, encoder_method("m"), encoder_method("t"))
IMAGE_METHODS = (EFFICIENTNET, encoder_method("i"))
MULTIMODAL_METHODS = (
    TFIDF,
    MINILM,
    EFFICIENTNET,
    encoder_method("t"),
    encoder_method("i"),
    encoder_method("m"),
)
CONSTRUCTED_TITLES_NOTE = "titles are constructed (brand + coarse class, e.g. 'Arla Milk'), not real listing titles"

FILES_USED = {
    "wdc:valid_medium": f"WDC {WDC_VALID}: choose the pair threshold (best F1) and calibrate "
    "the precision-target threshold",
    **{
        f"wdc:{split}": f"WDC {split} (test): pair P/R/F1 at the valid threshold; retrieval over its offers"
        for split in WDC_TEST
    },
    "leipzig:abt_buy": "Abt.csv, Buy.csv, abt_buy_perfectMapping.csv (test: transfer)",
    "leipzig:amazon_google": "Amazon.csv, GoogleProducts.csv, Amzon_GoogleProducts_perfectMapping.csv (test: transfer)",
    "leipzig:google_within_supplier": "GoogleProducts.csv + the mapping (test: transfer); groups "
    "= Google records mapped to the same Amazon product",
    "grocery:images": "GroceryStore Packages test photos (queries) vs train photos / the 31 catalog images (galleries)",
    "grocery:multimodal": "GroceryStore Packages test photos (queries) vs train photos "
    "(gallery), " + CONSTRUCTED_TITLES_NOTE,
}


@dataclass
class Run:
    """The state of one evaluation run.

    Attributes:
        shared: the shared datasets folder.
        methods: the neural methods and their cache.
        target_precision: the precision target for ``calibrate``.
        limit: records per dataset for a fast subset run; None for the full run.
        n_bootstrap: bootstrap resamples of the calibration.
        pipeline_threshold: the configured ``dedup.min_similarity``; the encoder's ``m`` is also
            scored at it (kind ``pipeline``), to show what the nightly job does on real data.
        compare: other encoders scored in the same run, by label (methods ``<label>:m`` etc.).
        dedup: the config's ``[dedup]`` section (the verified pipeline's operating point and
            verifier file), for the ``verified`` task; None skips it.
        records: the metric records so far.
        thresholds: per method, threshold kind -> value: ``wdc-valid-f1`` (best F1 on WDC
            valid), ``wdc-p<target>`` (calibrated to the precision target on WDC valid, absent
            when unreachable) and, for ``encoder:m``, ``pipeline``.
        details: JSON-ready extra results (calibrations, timings).
    """

    shared: Path
    methods: NeuralMethods
    target_precision: float
    limit: int | None = None
    n_bootstrap: int = 1000
    pipeline_threshold: float | None = None
    compare: dict[str, NeuralMethods] = field(default_factory=dict)
    dedup: DedupConfig | None = None
    records: list[dict] = field(default_factory=list)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict = field(default_factory=lambda: {"calibration": {}, "timings_s": {}})

    def add(self, dataset: str, task: str, method: str, metric: str, value: float, n: int) -> None:
        """Appends one metric record."""
        self.records.append(
            {
                "dataset": dataset,
                "task": task,
                "method": method,
                "metric": metric,
                "value": round(float(value), 6),
                "n": int(n),
            }
        )

    def add_scores(self, dataset: str, task: str, method: str, scores: PairScores, n: int, suffix: str = "") -> None:
        """Appends precision, recall and F1 records (metric names get ``suffix``)."""
        for metric in ("precision", "recall", "f1"):
            self.add(dataset, task, method, metric + suffix, getattr(scores, metric), n)

    def add_ranks(self, dataset: str, task: str, method: str, ranks: np.ndarray) -> None:
        """Appends MRR and Recall@k records for first-relevant ranks."""
        for metric, value in retrieval_metrics(ranks, DEFAULT_KS).items():
            self.add(dataset, task, method, metric, value, len(ranks))

    @property
    def encoders(self) -> dict[str, NeuralMethods]:
        """Every encoder of the run by label: ``encoder`` (the project's) first."""
        return {"encoder": self.methods, **self.compare}

    def methods_for(self, base: tuple[str, ...], views: str) -> tuple[str, ...]:
        """``base`` plus the given views of every compared encoder."""
        return base + tuple(encoder_method(v, label) for label in self.compare for v in views)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Logs the start and duration of a task and keeps the duration in ``details``."""
        logger.info("task %s: start", name)
        started = time.perf_counter()
        yield
        elapsed = time.perf_counter() - started
        self.details["timings_s"][name] = round(elapsed, 1)
        logger.info("task %s: done in %.1fs", name, elapsed)


# --------------------------------------------------------------------------------------------
# vectors and similarities


def text_vectors(run: Run, name: str, texts: list[str], methods: tuple[str, ...]) -> dict:
    """Embeds texts with each text method.

    Args:
        run: the run (for the neural methods and cache).
        name: a readable name of the record set.
        texts: the titles.
        methods: names from ``TEXT_METHODS``.

    Returns:
        ``{method: matrix}`` with L2-normalised rows (sparse for TF-IDF).
    """
    out: dict[str, Matrix] = {}
    if TFIDF in methods:
        out[TFIDF] = tfidf_vectors(texts)
    if MINILM in methods:
        out[MINILM] = run.methods.minilm(name, texts)
    for label, neural in run.encoders.items():
        views = [m.split(":")[1] for m in methods if m.startswith(f"{label}:")]
        if views:
            encoded = neural.encode(name, texts, [None] * len(texts), views=tuple(views))
            out.update({encoder_method(v, label): encoded[v] for v in views})
    return out


def pair_similarities(vectors: Matrix, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Similarity of row pairs ``(left[k], right[k])`` of one matrix.

    Args:
        vectors: [n, dim] L2-normalised rows (dense or sparse).
        left, right: [p] row numbers.

    Returns:
        float64 [p] inner products.
    """
    if sp.issparse(vectors):
        return np.asarray(vectors[left].multiply(vectors[right]).sum(axis=1)).ravel()
    return np.einsum("pd,pd->p", vectors[left], vectors[right]).astype(np.float64)


def similarity_matrix(queries: Matrix, gallery: Matrix) -> np.ndarray:
    """All query × gallery similarities as a dense float64 array."""
    product = queries @ gallery.T
    return np.asarray(product.todense() if sp.issparse(product) else product, dtype=np.float64)


def _rows(ids: pd.Series, wanted: pd.Series) -> np.ndarray:
    """Row numbers in ``ids`` of each value of ``wanted``."""
    position = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    return position.loc[wanted.to_numpy()].to_numpy()


# --------------------------------------------------------------------------------------------
# 1. WDC Products


def evaluate_wdc(run: Run) -> None:
    """WDC Products 80cc20rnd: pair classification (valid-chosen threshold) and retrieval.

    Also calibrates, per method, the precision-target threshold on ``valid_medium`` and stores
    both thresholds in ``run.thresholds`` for the transfer tasks.
    """
    shared, limit = run.shared, run.limit
    valid = subset_pairs(read_wdc_pairs(shared, WDC_VALID), limit)
    tests = {split: subset_pairs(read_wdc_pairs(shared, split), limit) for split in WDC_TEST}
    offers = read_wdc_offers(shared, (WDC_VALID, *WDC_TEST))
    used = pd.concat([valid, *tests.values()])
    offers = offers[offers["id"].isin(used["id_left"]) | offers["id"].isin(used["id_right"])]
    offers = offers.reset_index(drop=True)
    vectors = text_vectors(run, "wdc-offers", offers["title"].tolist(), run.methods_for(TEXT_METHODS, "mt"))

    def sims(matrix: Matrix, pairs: pd.DataFrame) -> np.ndarray:
        return pair_similarities(matrix, _rows(offers["id"], pairs["id_left"]), _rows(offers["id"], pairs["id_right"]))

    for method, matrix in vectors.items():
        valid_sims, valid_labels = sims(matrix, valid), valid["label"].to_numpy()
        choice = best_f1_threshold(valid_sims, valid_labels)
        run.add("wdc:valid_medium", "pair-classification", method, "best_f1", choice.scores.f1, len(valid))
        run.add("wdc:valid_medium", "pair-classification", method, "threshold", choice.threshold, len(valid))
        thresholds = {"wdc-valid-f1": choice.threshold}
        try:
            calibration = calibrate(valid_sims, valid_labels, run.target_precision, n_bootstrap=run.n_bootstrap)
            thresholds[f"wdc-p{run.target_precision:g}"] = calibration.threshold
            run.details["calibration"][method] = calibration.to_dict()
            run.add(
                "wdc:valid_medium", "calibration", method, "calibrated_threshold", calibration.threshold, len(valid)
            )
            run.add("wdc:valid_medium", "calibration", method, "recall_at_target", calibration.recall, len(valid))
        except CalibrationError as error:
            logger.warning("%s: %s", method, error)
            run.details["calibration"][method] = {"error": str(error)}
        if method == encoder_method("m") and run.pipeline_threshold is not None:
            thresholds["pipeline"] = run.pipeline_threshold
        run.thresholds[method] = thresholds

        for split, pairs in tests.items():
            split_sims, split_labels = sims(matrix, pairs), pairs["label"].to_numpy()
            for kind, threshold in thresholds.items():
                scores = score_pairs(split_sims, split_labels, threshold)
                run.add_scores(f"wdc:{split}", "pair-classification", method, scores, len(pairs), suffix=f"@{kind}")

    for split, pairs in tests.items():
        rows, clusters = _pair_offers(offers, pairs)
        for method, matrix in vectors.items():
            run.add_ranks(f"wdc:{split}", "retrieval", method, _cluster_ranks(matrix[rows], clusters))
    sweep_lexical_weight(run, offers, valid)


def _pair_offers(offers: pd.DataFrame, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers in ``offers`` of the offers that ``pairs`` use, and their cluster ids."""
    ids = pd.concat([pairs["id_left"], pairs["id_right"]]).drop_duplicates()
    subset = offers[offers["id"].isin(ids)]
    return subset.index.to_numpy(), subset["cluster_id"].to_numpy()


def _cluster_ranks(gallery: Matrix, clusters: np.ndarray) -> np.ndarray:
    """First-relevant ranks of each record against the others (hit = same cluster).

    Records alone in their cluster are no queries; a record never retrieves itself.
    """
    exclude = np.eye(len(clusters), dtype=bool)
    relevant = (clusters[:, None] == clusters[None, :]) & ~exclude
    queries = relevant.any(axis=1)
    return rank_queries(gallery[queries], gallery, relevant[queries], exclude[queries])


LEXICAL_WEIGHTS = tuple(round(0.1 * k, 1) for k in range(10))
LEXICAL_WEIGHT_RULE = (
    "the lexical weight in {0.0, 0.1, ..., 0.9} with the highest retrieval MRR over the offers "
    "of WDC 000un_valid_medium (hit = same cluster_id); a tie goes to the smaller weight. MRR, "
    "not pair F1: it is the paper's metric and needs no threshold, so the weight and the "
    "threshold (calibrated afterwards) are chosen separately"
)


def sweep_lexical_weight(run: Run, offers: pd.DataFrame, valid: pd.DataFrame) -> None:
    """Scores the hybrid of the project's neural encoder at each weight on WDC valid_medium.

    For ``w`` in ``LEXICAL_WEIGHTS`` the vectors are ``encoder.lexical.combine`` of the neural
    ``m`` and the lexical vectors the config describes (``lexical_buckets``, ``lexical_idf``):
    what ``encoder.hybrid`` would ship at that weight. Records retrieval MRR and best pair F1
    per weight (method ``encoder:m``, metrics ``mrr@w=0.2`` etc.) and, in
    ``details["lexical_weight"]``, the weight ``LEXICAL_WEIGHT_RULE`` picks next to the
    configured one. Only valid_medium is read.
    """
    from encoder.lexical import LexicalVectorizer, combine

    config = run.methods.encoder_config
    titles = offers["title"].tolist()
    neural = run.methods.encode_neural("wdc-offers", titles, [None] * len(titles), ("m", "t"))
    has_text = np.abs(neural["t"]).sum(axis=1) > 0
    lexical = LexicalVectorizer(config.lexical_buckets, config.lexical_idf).transform(titles, has_text)
    rows, clusters = _pair_offers(offers, valid)
    left, right = _rows(offers["id"], valid["id_left"]), _rows(offers["id"], valid["id_right"])
    labels = valid["label"].to_numpy()
    best_weight, best_mrr = None, -1.0
    for weight in LEXICAL_WEIGHTS:
        hybrid = combine(neural["m"], lexical, weight)
        ranks = _cluster_ranks(hybrid[rows], clusters)
        mrr = retrieval_metrics(ranks, DEFAULT_KS)["mrr"]
        f1 = best_f1_threshold(pair_similarities(hybrid, left, right), labels).scores.f1
        run.add("wdc:valid_medium", "lexical-weight sweep", encoder_method("m"), f"mrr@w={weight:.1f}", mrr, len(ranks))
        run.add(
            "wdc:valid_medium", "lexical-weight sweep", encoder_method("m"), f"best_f1@w={weight:.1f}", f1, len(valid)
        )
        if mrr > best_mrr:
            best_weight, best_mrr = weight, mrr
    run.details["lexical_weight"] = {
        "rule": LEXICAL_WEIGHT_RULE,
        "chosen": best_weight,
        "chosen_mrr": round(float(best_mrr), 6),
        "configured": float(config.lexical_weight),
    }
    logger.info(
        "lexical weight by the valid_medium MRR rule: %.1f (MRR %.4f); the config has %.1f",
        best_weight,
        best_mrr,
        config.lexical_weight,
    )


# --------------------------------------------------------------------------------------------
# 2. Leipzig cross-source matching and 5. within-supplier duplicates


def _labelled_cross_pairs(task, n_left: int, n_right: int) -> np.ndarray:
    """bool [n_left, n_right]: True where the mapping says the two records match."""
    truth = np.zeros((n_left, n_right), dtype=bool)
    truth[_rows(task.left["id"], task.matches["left_id"]), _rows(task.right["id"], task.matches["right_id"])] = True
    return truth


def evaluate_leipzig(run: Run) -> None:
    """Leipzig Abt-Buy and Amazon-Google: retrieval left → right and cross-pair F1.

    Cross-pair F1 is reported at the oracle threshold (best on these pairs, for reference only)
    and at both thresholds chosen on WDC valid (transfer). Amazon-Google also feeds the
    within-supplier task.
    """
    for name in ("abt_buy", "amazon_google"):
        task = read_leipzig_matching(run.shared, name, run.limit)
        dataset = f"leipzig:{name}"
        texts = task.left["title"].tolist() + task.right["title"].tolist()
        vectors = text_vectors(run, f"leipzig-{name}", texts, run.methods_for(TEXT_METHODS, "mt"))
        n_left, n_right = len(task.left), len(task.right)
        truth = _labelled_cross_pairs(task, n_left, n_right)
        queries = truth.any(axis=1)
        for method, matrix in vectors.items():
            left, right = matrix[:n_left], matrix[n_left:]
            ranks = rank_queries(left[queries], right, truth[queries])
            run.add_ranks(dataset, "retrieval left->right", method, ranks)
            flat_sims = similarity_matrix(left, right).ravel()
            flat_truth = truth.ravel()
            oracle = best_f1_threshold(flat_sims, flat_truth)
            run.add(dataset, "cross-pairs", method, "oracle_f1", oracle.scores.f1, flat_sims.size)
            run.add(dataset, "cross-pairs", method, "oracle_threshold", oracle.threshold, flat_sims.size)
            for kind, threshold in run.thresholds.get(method, {}).items():
                scores = score_pairs(flat_sims, flat_truth, threshold)
                run.add_scores(dataset, "cross-pairs", method, scores, flat_sims.size, suffix=f"@{kind}")
            if name == "amazon_google":
                _within_supplier(run, task, method, right)


def threshold_pairs(ids: np.ndarray, vectors: Matrix, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of distinct records with similarity >= threshold, each once (``l < r`` by id).

    Dense vectors go through the pipeline's ``dedup.find_pairs_by_id``; sparse TF-IDF vectors
    (which faiss cannot index) through a sparse product with the same inclusive rule.
    """
    if not sp.issparse(vectors):
        table, saturated = find_pairs_by_id(
            ids,
            vectors.astype(np.float32),
            ids,
            vectors.astype(np.float32),
            threshold,
            max_results_per_query=len(ids),
        )
        assert not saturated  # the budget is the whole catalogue
        return (
            table["listing_id_l"].to_numpy(zero_copy_only=False),
            table["listing_id_r"].to_numpy(zero_copy_only=False),
            table["similarity"].to_numpy(),
        )
    product = sp.triu(vectors @ vectors.T, k=1).tocoo()
    keep = product.data >= threshold
    a, b = ids[product.row[keep]], ids[product.col[keep]]
    first = a < b
    return np.where(first, a, b), np.where(first, b, a), product.data[keep]


def group_labels(ids: np.ndarray, left, right, similarity) -> np.ndarray:
    """Group label per id from ``dedup.cluster_pairs``; ids in no pair are singletons."""
    labels = pd.Series(np.array(ids, dtype=object, copy=True), index=ids)
    if len(left):
        members = cluster_pairs(left, right, similarity).members.to_pandas()
        labels.loc[members["listing_id"].to_numpy()] = ("group:" + members["component"].astype(str)).to_numpy()
    return labels.to_numpy()


def _within_supplier(run: Run, task, method: str, vectors: Matrix) -> None:
    """Within-supplier duplicates in Google: the pipeline path at the WDC-chosen thresholds.

    Runs ``find_pairs`` + ``cluster_pairs`` (the nightly job's core) over all Google records
    and scores the raw pairs and the groups (pairwise), so chaining shows as the gap between
    them; also the oracle best pair F1 and group F1 over a threshold sweep on this task.
    """
    dataset, name = "leipzig:google_within_supplier", "duplicate-groups"
    ids = task.right["id"].to_numpy().astype(object)
    truth = within_source_groups(task).to_numpy()
    n = len(ids)
    true_pairs = {
        (min(a, b), max(a, b))
        for group in pd.Series(ids).groupby(truth).agg(list)
        for k, a in enumerate(group)
        for b in group[k + 1 :]
    }
    for kind, threshold in run.thresholds.get(method, {}).items():
        left, right, similarity = threshold_pairs(ids, vectors, threshold)
        raw = pair_set_scores(set(zip(left.tolist(), right.tolist(), strict=True)), true_pairs)
        grouped = cluster_pair_scores(group_labels(ids, left, right, similarity), truth)
        run.add_scores(dataset, name, method, raw, n, suffix=f"_pairs@{kind}")
        run.add_scores(dataset, name, method, grouped, n, suffix=f"_groups@{kind}")

    sims = similarity_matrix(vectors, vectors)
    upper = np.triu_indices(n, k=1)
    same = truth[:, None] == truth[None, :]
    flat_sims, flat_truth = sims[upper], same[upper]
    if flat_truth.any():
        oracle = best_f1_threshold(flat_sims, flat_truth)
        run.add(dataset, name, method, "oracle_f1_pairs", oracle.scores.f1, n)
        run.add(dataset, name, method, "oracle_f1_groups", _oracle_group_f1(sims, truth), n)


def _oracle_group_f1(sims: np.ndarray, truth: np.ndarray, steps: int = 60) -> float:
    """Best group pairwise F1 over a sweep of thresholds (connected components per threshold).

    The sweep spans from the similarity of the 20·n-th strongest pair (beyond it the groups
    are one giant component) to the strongest pair.
    """
    n = sims.shape[0]
    upper = sims[np.triu_indices(n, k=1)]
    top = np.sort(upper)[::-1]
    low = top[min(20 * n, top.size - 1)]
    best = 0.0
    for threshold in np.linspace(low, top[0], steps):
        graph = sp.csr_matrix(np.triu(sims >= threshold, k=1))
        _, labels = connected_components(graph, directed=False)
        best = max(best, cluster_pair_scores(labels, truth).f1)
    return best


# --------------------------------------------------------------------------------------------
# 3. and 4. GroceryStore


def evaluate_grocery(run: Run) -> None:
    """GroceryStore Packages: image retrieval, and multimodal retrieval with constructed titles.

    Queries are the test photos; galleries are the train photos (photo → photo) and the 31
    catalog images (photo → catalog). Same fine class = same product.
    """
    photos, catalog = read_grocery(run.shared, run.limit)
    records = pd.concat([photos[photos["split"].isin(("train", "test"))], catalog], ignore_index=True)
    paths, titles = records["path"].tolist(), records["title"].tolist()
    vectors: dict[str, Matrix] = {
        TFIDF: tfidf_vectors(titles),
        MINILM: run.methods.minilm("grocery-titles", titles),
        EFFICIENTNET: run.methods.efficientnet("grocery-images", paths),
    }
    for label, neural in run.encoders.items():
        encoded = neural.encode("grocery", titles, paths)
        vectors.update({encoder_method(v, label): encoded[v] for v in ("m", "t", "i")})
    split, classes = records["split"].to_numpy(), records["fine_id"].to_numpy()
    query = split == "test"
    for gallery_split, task, methods, dataset in (
        ("train", "photo->photo", run.methods_for(IMAGE_METHODS, "i"), "grocery:images"),
        ("catalog", "photo->catalog", run.methods_for(IMAGE_METHODS, "i"), "grocery:images"),
        (
            "train",
            "photo->photo (constructed titles)",
            run.methods_for(MULTIMODAL_METHODS, "tim"),
            "grocery:multimodal",
        ),
    ):
        gallery = split == gallery_split
        relevant = classes[query][:, None] == classes[gallery][None, :]
        keep = relevant.any(axis=1)
        for method in methods:
            matrix = vectors[method]
            q = matrix[np.flatnonzero(query)[keep]]
            ranks = rank_queries(q, matrix[np.flatnonzero(gallery)], relevant[keep])
            run.add_ranks(dataset, task, method, ranks)


TASKS = {
    "wdc": evaluate_wdc,
    "leipzig": evaluate_leipzig,
    "grocery": evaluate_grocery,
}
"""Task groups in run order (``leipzig`` needs the thresholds that ``wdc`` chooses)."""
