"""Reviewer feedback: labelled pairs, estimated precision and a suggested threshold.

The governance review app records reviewers' decisions on duplicate groups: a whole-group
decision (``listing_id == ""``) or a per-member one (``reject`` = this listing is not a
duplicate of the group, ``confirm`` = it belongs). This module turns the decisions into
labelled pairs of the groups as the reviewers saw them, estimates the pipeline's precision with
a Wilson interval, and suggests a threshold through ``dedup.calibration.calibrate``.

Pure pandas / numpy. The decided pairs are only those the pipeline emitted, i.e. at or above
the threshold in force, so the feedback can justify raising a threshold but never lowering it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from statistics import NormalDist

import pandas as pd

from dedup.calibration import Calibration, CalibrationError, calibrate

logger = logging.getLogger(__name__)

DECISION_COLUMNS = ("supplier_id", "group_id", "group_version", "listing_id", "decision", "reviewer")
DECISION_COLUMNS += ("decided_at", "run_date", "members")
PAIR_COLUMNS = ("run_date", "supplier_id", "group_id", "listing_id_l", "listing_id_r", "similarity_m", "match_score")
PAIR_ORDER = ["run_date", "supplier_id", "group_id", "listing_id_l", "listing_id_r"]
CONFIG_KEYS = {"similarity_m": "dedup.min_similarity", "match_score": "dedup.min_probability"}
OPTIONAL_COLUMNS = ("category",)  # estimate_precision(by=...) reads an absent one as all "(none)"
DECISIONS_TABLE = "review_decisions"


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Raises ValueError when ``frame`` lacks any of ``columns``."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}")


def _version_state(rows: pd.DataFrame) -> tuple[frozenset[str], pd.Series | None, dict[str, pd.Series]]:
    """Members, latest group decision and latest member rejections of one group version.

    ``rows`` are the version's decisions sorted by (decided_at, reviewer, decision), so the
    last row of a subject is its latest decision.
    """
    member_lists = {tuple(sorted(map(str, json.loads(text)))) for text in rows["members"]}
    if len(member_lists) != 1:
        first = rows.iloc[0]
        raise ValueError(f"group {first['group_id']!r} version {first['group_version']!r} has differing members")
    members = frozenset(member_lists.pop())
    group_rows = rows[rows["listing_id"] == ""]
    group = group_rows.iloc[-1] if len(group_rows) else None
    latest = rows[rows["listing_id"] != ""].drop_duplicates("listing_id", keep="last")
    rejected = {str(row["listing_id"]): row for _, row in latest.iterrows() if row["decision"] == "reject"}
    return members, group, rejected


def label_pairs(decisions: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Labels the emitted pairs of reviewed groups from the reviewers' latest decisions.

    Per (group_id, group_version) the latest group decision and the latest decision per member
    count (latest by decided_at; ties: the last by reviewer, then decision, so "reject" beats
    "confirm"). They label the pairs of that group on each run_date the version was decided
    on, when both listings are in the version's members. Pair (a, b): exactly one of a, b
    member-rejected -> 0; both -> not labelled; else group confirm -> 1, group reject -> 0, no
    group decision -> not labelled. A pair labelled by several versions keeps the latest.

    Args:
        decisions: the review app's decisions (``DECISION_COLUMNS``).
        pairs: the pipeline's emitted pairs (``PAIR_COLUMNS``, optionally ``category``).

    Returns:
        The labelled pairs: the pairs' columns plus ``label`` (0/1), ``reviewer`` and
        ``decided_at`` of the deciding decision, sorted by ``PAIR_ORDER``.
    """
    _require(decisions, DECISION_COLUMNS, "decisions")
    _require(pairs, PAIR_COLUMNS, "pairs")
    pairs = pairs.reset_index(drop=True)  # row numbers identify pairs below
    unknown = set(decisions["decision"]) - {"confirm", "reject"}
    if unknown:
        raise ValueError(f"decisions have unknown decision values {sorted(map(str, unknown))}")
    ordered = decisions.assign(
        listing_id=decisions["listing_id"].fillna("").astype(str),
        run_date=decisions["run_date"].astype(str),
        _at=pd.to_datetime(decisions["decided_at"], utc=True, format="ISO8601"),
    ).sort_values(["_at", "reviewer", "decision"], kind="stable")
    pair_rows = pairs.groupby([pairs["run_date"].astype(str), pairs["group_id"]], sort=False).groups

    found = []  # (pair row index, label, the deciding decision's row, group_version)
    for (group_id, version), rows in ordered.groupby(["group_id", "group_version"], sort=True):
        members, group, rejected = _version_state(rows)
        for run_date in sorted(set(rows["run_date"])):
            for index in pair_rows.get((run_date, group_id), []):
                a, b = str(pairs.at[index, "listing_id_l"]), str(pairs.at[index, "listing_id_r"])
                if a not in members or b not in members or (a in rejected and b in rejected):
                    continue
                if a in rejected or b in rejected:
                    found.append((index, 0, rejected.get(a, rejected.get(b)), version))
                elif group is not None:
                    found.append((index, int(group["decision"] == "confirm"), group, version))
    columns = [*pairs.columns, "label", "reviewer", "decided_at"]
    if not found:
        return pd.DataFrame({c: pd.Series(dtype=pairs[c].dtype if c in pairs else object) for c in columns})
    labels = pd.DataFrame(
        {
            "_index": [index for index, *_ in found],
            "label": [label for _, label, _, _ in found],
            "reviewer": [row["reviewer"] for _, _, row, _ in found],
            "decided_at": [row["decided_at"] for _, _, row, _ in found],
            "_at": [row["_at"] for _, _, row, _ in found],
            "_version": [str(version) for *_, version in found],
        }
    )
    labels = labels.sort_values(["_at", "reviewer", "_version"], kind="stable").drop_duplicates("_index", keep="last")
    labelled = pairs.loc[labels["_index"]].reset_index(drop=True)
    labelled["label"] = labels["label"].to_numpy(dtype="int64")
    labelled["reviewer"] = labels["reviewer"].to_numpy()
    labelled["decided_at"] = labels["decided_at"].to_numpy()
    logger.info("labelled %d pairs from %d decisions", len(labelled), len(decisions))
    return labelled.sort_values(PAIR_ORDER, kind="stable").reset_index(drop=True)[columns]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Takes ``successes`` out of ``n`` trials; returns the Wilson score interval of the rate.

    ``n == 0`` gives ``(0.0, 1.0)``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PrecisionEstimate:
    """Precision of the pipeline's pairs on reviewer-labelled pairs of one key.

    ``precision`` is None when ``n_pairs == 0``; ``ci_low``/``ci_high`` is its Wilson interval.
    """

    key: str
    n_pairs: int
    n_match: int
    precision: float | None
    ci_low: float
    ci_high: float
    confidence: float

    def to_dict(self) -> dict[str, object]:
        """Returns the fields as a JSON-ready dict."""
        return asdict(self)


def estimate_precision(
    labelled: pd.DataFrame, by: str | None = None, confidence: float = 0.95
) -> list[PrecisionEstimate]:
    """Takes labelled pairs (``label_pairs``); returns precision estimates sorted by key.

    ``by`` None gives one estimate keyed "all"; otherwise one per value of column ``by``
    (e.g. "run_date", "supplier_id", "category"); a missing value, or an absent optional
    column such as ``category``, is keyed "(none)".
    """
    if by is None:
        keys = pd.Series("all", index=labelled.index)
    elif by in labelled.columns:
        keys = labelled[by].map(lambda value: "(none)" if pd.isna(value) else str(value))
    elif by in OPTIONAL_COLUMNS:
        keys = pd.Series("(none)", index=labelled.index)
    else:
        raise ValueError(f"labelled pairs have no column {by!r}")
    if by is None and labelled.empty:
        return [PrecisionEstimate("all", 0, 0, None, *wilson_interval(0, 0, confidence), confidence)]
    estimates = []
    for key, labels in labelled["label"].groupby(keys, sort=True):
        n, n_match = int(labels.size), int(labels.sum())
        low, high = wilson_interval(n_match, n, confidence)
        estimates.append(PrecisionEstimate(str(key), n, n_match, n_match / n, low, high, confidence))
    return estimates


@dataclass(frozen=True)
class ThresholdSuggestion:
    """A threshold suggested by reviewer-labelled pairs, and what it rests on."""

    column: str
    config_key: str
    threshold: float
    target_precision: float
    calibration: Calibration
    n_pairs: int
    n_decisions: int
    reviewers: tuple[str, ...]
    run_dates: tuple[str, ...]
    current: float
    note: str

    def to_dict(self) -> dict[str, object]:
        """Returns the fields as a JSON-ready dict (the calibration nested, tuples as lists)."""
        fields = asdict(self)
        fields.update(reviewers=list(self.reviewers), run_dates=list(self.run_dates))
        return fields

    def source_text(self, computed_on: str | None = None) -> str:
        """Takes the day computed (default today, UTC); returns a line for the config's ``*_source`` key."""
        runs = self.run_dates[0] if len(set(self.run_dates)) == 1 else f"{self.run_dates[0]}..{self.run_dates[-1]}"
        people = f"{len(self.reviewers)} reviewer{'' if len(self.reviewers) == 1 else 's'}"
        basis = (
            f"the lowest {self.column} reaching precision {self.target_precision:g} on {self.n_pairs} "
            f"reviewer-decided pairs (runs {runs}, {people}, {DECISIONS_TABLE})"
        )
        if self.threshold > self.calibration.threshold:
            basis = f"the current {self.current:g} kept: {basis} is {self.calibration.threshold:g}, below it"
        day = computed_on or datetime.now(UTC).date().isoformat()
        return f"{basis}, dedup.feedback.suggest_threshold, computed {day}"


def suggest_threshold(
    labelled: pd.DataFrame,
    target_precision: float,
    *,
    column: str = "similarity_m",
    current: float,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> ThresholdSuggestion:
    """Takes labelled pairs and a precision target; returns the suggested threshold.

    Calibrates ``column`` (rows with a NaN score dropped) with ``dedup.calibration.calibrate``
    and suggests ``max(calibrated, current)``: the pairs were emitted at or above ``current``.

    Raises:
        ValueError: for a column other than ``CONFIG_KEYS``' ones.
        CalibrationError: when no pair is labelled a match or the target is not reached.
    """
    if column not in CONFIG_KEYS:
        raise ValueError(f"column={column!r} must be one of {sorted(CONFIG_KEYS)}")
    used = labelled[pd.to_numeric(labelled[column], errors="coerce").notna()]
    if not int(used["label"].sum()):
        raise CalibrationError(f"none of the {len(used)} reviewer-decided pairs with a {column} is labelled a match")
    try:
        calibration = calibrate(
            used[column].astype(float), used["label"].astype(int), target_precision, n_bootstrap, seed=seed
        )
    except CalibrationError as error:
        raise CalibrationError(f"on {len(used)} reviewer-decided pairs ({column}): {error}") from error
    note = (
        f"the decided pairs are only those the pipeline emitted, at or above the current {current:g}: "
        "the data can justify raising the threshold, never lowering it below the current one"
    )
    if calibration.threshold < current:
        note += f"; the calibrated {calibration.threshold:g} was below it, so the current one is kept"
    decisions = used[["group_id", "reviewer", "decided_at"]].drop_duplicates()
    return ThresholdSuggestion(
        column=column,
        config_key=CONFIG_KEYS[column],
        threshold=max(calibration.threshold, float(current)),
        target_precision=float(target_precision),
        calibration=calibration,
        n_pairs=len(used),
        n_decisions=len(decisions),
        reviewers=tuple(sorted(set(map(str, used["reviewer"])))),
        run_dates=tuple(sorted(set(map(str, used["run_date"])))),
        current=float(current),
        note=note,
    )
