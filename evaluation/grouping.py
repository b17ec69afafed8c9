"""Chaining control: connected components vs average-link groups (task ``grouping``).

Catalogues treated as one supplier go through the verified pipeline exactly as
``evaluation.verified`` runs it (candidates by ``find_pairs_by_id`` at ``dedup.min_similarity``,
the verifier's match probability, pairs = probability >= ``dedup.min_probability``); the pairs
are then grouped by each grouping of the grid and scored by cluster pairwise P/R/F1 against the
true groups, with the largest group and the number of groups (two or more members).

* ``wdc:valid_medium`` offers (1,000 offers, 500 clusters): where the grouping is chosen
  (:data:`RULE`).
* ``wdc:gs`` offers (the three gs pair files' 2,594 offers, 1,000 clusters) and
  ``leipzig:google_within_supplier`` (all Google records; groups = records mapped to the same
  Amazon product): test, reported only.

The grid: components at the shipped ``min_probability``; average link (link weight = match
probability) at each of :data:`MIN_LINKS`; and, for reference only (never chosen: it changes
the pairs, not the grouping), components at a few higher ``min_probability`` values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmarks.datasets import (
    WDC_TEST,
    WDC_VALID,
    read_leipzig_matching,
    read_wdc_offers,
    within_source_groups,
)
from dedup.cluster import cluster_pairs
from dedup.features import parse_listings
from dedup.metrics import cluster_pair_scores, scores_from_counts
from dedup.verifier import load_verifier
from evaluation.methods import encoder_method
from evaluation.tasks import Run, text_vectors
from evaluation.verified import _lexical, matching_inputs, verified_catalogue_pairs

logger = logging.getLogger(__name__)

TASK = "chaining-control"
VALID_DATASET = "wdc:valid_medium"
MIN_LINKS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The average-link thresholds of the grid."""
REFERENCE_MIN_PROBABILITIES = (0.5, 0.7, 0.9)
"""Components at these pair thresholds, for reference (not candidates of the choice)."""
MARGIN = 0.01
RULE = (
    "the grouping (method and min_link) with the best cluster pairwise F1 on WDC valid_medium offers; "
    f"components unless average beats it by > {MARGIN}"
)
METRICS = ("f1_groups", "precision_groups", "recall_groups", "largest_group", "groups", "f1_pairs")


@dataclass(frozen=True)
class Grouping:
    """One grouping of the grid.

    Attributes:
        method: ``"components"`` or ``"average"`` (``dedup.cluster.cluster_pairs``).
        min_link: the average link threshold (``average`` only; 0 for components).
        min_probability: the pair threshold; None = the config's ``dedup.min_probability``.
    """

    method: str
    min_link: float = 0.0
    min_probability: float | None = None

    @property
    def label(self) -> str:
        """The record's method name, e.g. ``components``, ``average@0.5``, ``components@p0.7``."""
        if self.method == "average":
            return f"average@{self.min_link:g}"
        return "components" if self.min_probability is None else f"components@p{self.min_probability:g}"

    @property
    def candidate(self) -> bool:
        """Whether the rule may choose it (it groups the shipped pairs)."""
        return self.min_probability is None


def make_grid(min_links=MIN_LINKS, reference_min_probabilities=REFERENCE_MIN_PROBABILITIES) -> list[Grouping]:
    """Returns the groupings to score: components, average at each ``min_links``, then the references."""
    return [
        Grouping("components"),
        *(Grouping("average", float(link)) for link in min_links),
        *(Grouping("components", min_probability=float(p)) for p in reference_min_probabilities),
    ]


METHODS = tuple(g.label for g in make_grid())
"""The record method names of the grid, in table order."""


def label_groups(ids: np.ndarray, left, right, similarity, probability, grouping: Grouping) -> np.ndarray:
    """Group label per id under one grouping of the given pairs; ids in no group are singletons.

    Args:
        ids: [n] listing ids (str).
        left, right: [p] pair ids (already filtered to the pairs).
        similarity, probability: [p] per pair; probability is the average-link weight.
        grouping: the grouping.

    Returns:
        object [n]: ``"group:<k>"`` for members of group k, else the id itself.
    """
    labels = pd.Series(np.array(ids, dtype=object, copy=True), index=ids)
    if len(left):
        members = cluster_pairs(
            left,
            right,
            similarity,
            method=grouping.method,
            min_link=grouping.min_link,
            link_weight=probability if grouping.method == "average" else None,
        ).members.to_pandas()
        labels.loc[members["listing_id"].to_numpy()] = ("group:" + members["component"].astype(str)).to_numpy()
    return labels.to_numpy()


def score_groupings(
    ids: np.ndarray,
    truth: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    similarity: np.ndarray,
    probability: np.ndarray,
    min_probability: float,
    groupings: list[Grouping],
) -> list[dict]:
    """Scores each grouping of one catalogue's scored candidates against the true groups.

    Args:
        ids: [n] str listing ids of the catalogue.
        truth: [n] true group label per id (singletons unique).
        left, right: [p] candidate pairs (ids).
        similarity, probability: [p] each candidate's similarity and match probability.
        min_probability: the shipped pair threshold (for groupings whose own is None).
        groupings: what to score.

    Returns:
        One dict per grouping: ``grouping`` (label), ``method``, ``min_link``,
        ``min_probability``, ``candidate`` and the :data:`METRICS` values.
    """
    ids = np.asarray(ids, dtype=object)
    truth = np.asarray(truth, dtype=object)
    left, right = np.asarray(left, dtype=object), np.asarray(right, dtype=object)
    true_of = pd.Series(truth, index=ids)
    same_truth = true_of.loc[left].to_numpy() == true_of.loc[right].to_numpy()  # [p]
    true_pairs = int(sum(c * (c - 1) // 2 for c in pd.Series(truth).value_counts().tolist()))
    rows = []
    for grouping in groupings:
        threshold = min_probability if grouping.min_probability is None else grouping.min_probability
        keep = probability >= threshold
        labels = label_groups(ids, left[keep], right[keep], similarity[keep], probability[keep], grouping)
        sizes = pd.Series(labels).value_counts()
        sizes = sizes[sizes > 1]
        tp = int(same_truth[keep].sum())
        pairs = scores_from_counts(tp, int(keep.sum()) - tp, true_pairs - tp)
        scores = cluster_pair_scores(labels, truth)
        rows.append(
            {
                "grouping": grouping.label,
                "method": grouping.method,
                "min_link": grouping.min_link,
                "min_probability": threshold,
                "candidate": grouping.candidate,
                "f1_groups": scores.f1,
                "precision_groups": scores.precision,
                "recall_groups": scores.recall,
                "largest_group": int(sizes.max()) if len(sizes) else 0,
                "groups": len(sizes),
                "f1_pairs": pairs.f1,
            }
        )
    return rows


def choose_grouping(rows: list[dict], margin: float = MARGIN) -> dict:
    """Applies :data:`RULE` to the validation rows.

    Args:
        rows: ``score_groupings`` rows of the validation catalogue.
        margin: how much average must beat components by.

    Returns:
        The chosen row: the best average one (highest F1; ties: smaller min_link) when its F1
        exceeds that of components by more than ``margin``, else components.

    Raises:
        ValueError: if the rows hold no candidate components row.
    """
    candidates = [r for r in rows if r["candidate"]]
    components = [r for r in candidates if r["method"] == "components"]
    if not components:
        raise ValueError("no components row at the shipped min_probability; score Grouping('components') too")
    average = sorted(
        (r for r in candidates if r["method"] == "average"), key=lambda r: (-r["f1_groups"], r["min_link"])
    )
    if average and average[0]["f1_groups"] > components[0]["f1_groups"] + margin:
        return average[0]
    return components[0]


def render_table(records: list[dict], datasets: list[str]) -> str:
    """A markdown table of the grouping records: one row per grouping, per dataset F1/P/R/largest/groups.

    Args:
        records: run records (``dataset, task, method, metric, value``) of this task.
        datasets: dataset names, in column order.

    Returns:
        The table (GitHub markdown), rows in grid order (:data:`METHODS`), others after them.
    """
    value = {(r["dataset"], r["method"], r["metric"]): r["value"] for r in records if r["task"] == TASK}
    seen = list(dict.fromkeys(r["method"] for r in records if r["task"] == TASK))
    methods = sorted(seen, key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), seen.index(m)))
    head = ["grouping"] + [f"{d} {m}" for d in datasets for m in ("F1", "P", "R", "largest", "groups")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        cells = [f"`{method}`"]
        for dataset in datasets:
            for metric in ("f1_groups", "precision_groups", "recall_groups"):
                v = value.get((dataset, method, metric))
                cells.append("" if v is None else f"{v:.3f}")
            for metric in ("largest_group", "groups"):
                v = value.get((dataset, method, metric))
                cells.append("" if v is None else f"{int(v)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _record(run: Run, dataset: str, rows: list[dict], n: int) -> None:
    """Appends one catalogue's rows as metric records."""
    for row in rows:
        for metric in METRICS:
            run.add(dataset, TASK, row["grouping"], metric, row[metric], n)


def _wdc_catalogues(run: Run) -> dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray, list, np.ndarray]]:
    """The WDC catalogues (valid_medium offers, the gs files' offers) with the verifier's inputs.

    Vectors come from the ``wdc-offers`` set of ``evaluation.tasks`` (all valid + gs offers, so
    the cache already holds them); each catalogue takes its rows.
    """
    pools = {
        VALID_DATASET: read_wdc_offers(run.shared, (WDC_VALID,)),
        "wdc:gs": read_wdc_offers(run.shared, WDC_TEST),
    }
    if run.limit:
        pools = {name: pool.head(run.limit) for name, pool in pools.items()}
    union = pd.concat(pools.values()).drop_duplicates("id").sort_values("id", kind="stable").reset_index(drop=True)
    vectors = text_vectors(run, "wdc-offers", union["title"].tolist(), (encoder_method("m"), encoder_method("t")))
    m, t = vectors[encoder_method("m")], vectors[encoder_method("t")]
    row_of = pd.Series(np.arange(len(union)), index=union["id"])
    out = {}
    for name, pool in pools.items():
        rows = row_of.loc[pool["id"]].to_numpy()
        parsed = parse_listings(pool["title"].tolist(), pool["brand"], pool["price"], pool["currency"])
        out[name] = (pool.reset_index(drop=True), m[rows], t[rows], parsed, _lexical(run, pool["title"].tolist()))
    return out


def evaluate_grouping(run: Run) -> None:
    """Scores the grid of groupings on WDC valid_medium (choice), WDC gs and Google (test)."""
    if run.dedup is None or not run.dedup.verifier:
        logger.warning("dedup.verifier is not set: the grouping task needs the verified pipeline")
        return
    verifier = load_verifier(run.dedup.verifier)
    min_probability = run.dedup.min_probability
    groupings = make_grid()
    chosen = None
    for dataset, (pool, m, t, parsed, lexical) in _wdc_catalogues(run).items():
        ids = pool["id"].astype(str).to_numpy().astype(object)
        scored = verified_catalogue_pairs(run, verifier, ids, m, t, parsed, lexical)
        rows = score_groupings(ids, pool["cluster_id"].to_numpy(), *scored, min_probability, groupings)
        _record(run, dataset, rows, len(ids))
        if dataset == VALID_DATASET:
            chosen = choose_grouping(rows)  # chosen here, before any test catalogue is scored

    task = read_leipzig_matching(run.shared, "amazon_google", run.limit)
    n_left = len(task.left)
    m, t, parsed, lexical = matching_inputs(run, task)
    ids = task.right["id"].to_numpy().astype(object)
    scored = verified_catalogue_pairs(run, verifier, ids, m[n_left:], t[n_left:], parsed[n_left:], lexical[n_left:])
    truth = within_source_groups(task).to_numpy()
    _record(
        run,
        "leipzig:google_within_supplier",
        score_groupings(ids, truth, *scored, min_probability, groupings),
        len(ids),
    )
    run.details["grouping"] = {
        "rule": RULE,
        "chosen_on": VALID_DATASET,
        "min_probability": min_probability,
        "chosen": {"method": chosen["method"], "min_link": chosen["min_link"], "f1_groups": chosen["f1_groups"]},
    }
    logger.info("grouping: chosen on %s: %s (group F1 %.3f)", VALID_DATASET, chosen["grouping"], chosen["f1_groups"])
