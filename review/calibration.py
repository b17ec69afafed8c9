"""Reviewers' decisions back into the pipeline: precision estimates and a suggested threshold.

Glue between the decision store, the nights' review extracts (for the decided pairs'
similarities and categories) and ``dedup.feedback`` (the labelling rule, the estimates, the
threshold search through ``dedup.calibration.calibrate``). A recorded suggestion is a JSON file
with its provenance, and its ``source`` line is what goes into ``dedup.min_similarity_source``
(or ``min_probability_source``) beside the value, like the shipped threshold's.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dedup.calibration import CalibrationError
from dedup.feedback import PrecisionEstimate, ThresholdSuggestion, estimate_precision, label_pairs, suggest_threshold
from review.runs import RunNotFound, load_run
from review.store import DecisionStore

log = logging.getLogger(__name__)

SCORES = (("similarity_m", "dedup.min_similarity"), ("match_score", "dedup.min_probability"))


def decided_pairs(reports_dir: str | Path, store: DecisionStore) -> pd.DataFrame:
    """Returns the pairs labelled by the stored decisions (``dedup.feedback.label_pairs``).

    The pairs of each decided night come from that night's review extract, with the pair's
    category (the left listing's). A night whose extract is gone is skipped with a warning.
    """
    decisions = store.frame()
    if decisions.empty:
        return label_pairs(decisions, _empty_pairs())
    frames = []
    for run_date in sorted(decisions["run_date"].unique()):
        try:
            run = load_run(reports_dir, run_date)
        except RunNotFound:
            log.warning("decisions on %s are not counted: its review extract is gone", run_date)
            continue
        category = run.members.drop_duplicates("listing_id").set_index("listing_id")["category"]
        frames.append(run.pairs.assign(run_date=run_date, category=run.pairs["listing_id_l"].map(category)))
    pairs = pd.concat(frames, ignore_index=True) if frames else _empty_pairs()
    return label_pairs(decisions, pairs)


def _empty_pairs() -> pd.DataFrame:
    columns = ["run_date", "supplier_id", "group_id", "listing_id_l", "listing_id_r", "similarity_m", "match_score"]
    return pd.DataFrame(
        {c: pd.Series(dtype="float64" if c in ("similarity_m", "match_score") else "object") for c in columns}
        | {"category": pd.Series(dtype="object")}
    )


@dataclass(frozen=True)
class Feedback:
    """What the decisions say: estimates overall and per run / supplier / category, suggestions."""

    n_pairs: int
    overall: PrecisionEstimate
    by: dict[str, list[PrecisionEstimate]]
    suggestions: list[ThresholdSuggestion]
    problems: list[str]


def summarise_feedback(labelled: pd.DataFrame, target_precision: float, current: dict[str, float]) -> Feedback:
    """Estimates precision and suggests thresholds from labelled pairs.

    Args:
        labelled: ``decided_pairs`` output.
        target_precision: the precision the suggestion must reach.
        current: config key -> the threshold in force (e.g. ``{"dedup.min_similarity": 0.31}``).
    """
    by = {column: estimate_precision(labelled, by=column) for column in ("run_date", "supplier_id", "category")}
    suggestions, problems = [], []
    for column, key in SCORES:
        if key not in current or labelled.empty or labelled[column].isna().all():
            continue
        try:
            suggestions.append(suggest_threshold(labelled, target_precision, column=column, current=current[key]))
        except CalibrationError as exc:
            problems.append(f"{key}: {exc}")
    return Feedback(len(labelled), estimate_precision(labelled)[0], by, suggestions, problems)


def record_suggestion(folder: str | Path, suggestion: ThresholdSuggestion, reviewer: str) -> Path:
    """Writes a suggestion with its provenance as ``{folder}/<time>-<key>.json``; returns the path."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    path = root / f"{now:%Y%m%dT%H%M%SZ}-{suggestion.config_key}.json"
    record = suggestion.to_dict() | {
        "source": suggestion.source_text(),
        "recorded_by": reviewer,
        "recorded_at": now.isoformat(timespec="seconds"),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    log.info("recorded suggestion %s = %.4f -> %s", suggestion.config_key, suggestion.threshold, path)
    return path
