"""Reviewer feedback against a hand-made set of decisions and hand-computed labels and numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dedup.calibration import CalibrationError
from dedup.feedback import estimate_precision, label_pairs, suggest_threshold, wilson_interval

R1, R2 = "2024-03-01", "2024-03-02"


def decision(run, supplier, group, version, members, listing, verdict, reviewer, at):
    return {
        "supplier_id": supplier,
        "group_id": group,
        "group_version": version,
        "listing_id": listing,
        "decision": verdict,
        "reviewer": reviewer,
        "decided_at": at,
        "run_date": run,
        "members": json.dumps(members),
    }


def make_decisions() -> pd.DataFrame:
    g1v1, g1v2 = ["a", "b", "c"], ["a", "b", "h"]
    rows = [
        # g1 v1 on run 1: group confirmed, member c rejected -> (a,b)=1, (a,c)=(b,c)=0
        decision(R1, "s1", "g1", 1, g1v1, "", "confirm", "alice", "2024-03-01T10:00:00Z"),
        decision(R1, "s1", "g1", 1, g1v1, "c", "reject", "alice", "2024-03-01T10:01:00Z"),
        # g2 on run 1: rejected group -> (d,e)=0
        decision(R1, "s2", "g2", 1, ["d", "e"], "", "reject", "bob", "2024-03-01T11:00:00Z"),
        # g3 on run 1: only a member confirm, no group decision -> (f,g) not labelled
        decision(R1, "s1", "g3", 1, ["f", "g"], "f", "confirm", "bob", "2024-03-01T12:00:00Z"),
        # run 2, g1 is now v2 {a,b,h}; a reviewer still saw v1 {a,b,c} and confirmed it at 10:00,
        # another saw v2 and rejected it at 09:00: (a,b) gets the later v1 confirm = 1,
        # (a,h), (b,h) the v2 reject = 0 (they are not in v1)
        decision(R2, "s1", "g1", 2, g1v2, "", "reject", "bob", "2024-03-02T09:00:00Z"),
        decision(R2, "s1", "g1", 1, g1v1, "", "confirm", "alice", "2024-03-02T10:00:00+00:00"),
        # g4 on run 2: confirmed, p and q rejected, r rejected then re-confirmed ->
        # (p,q) unknown (both rejected), (p,r)=0 (p's reject), (q,r)=0 (q's reject)
        decision(R2, "s2", "g4", 1, ["p", "q", "r"], "", "confirm", "alice", "2024-03-02T12:00:00Z"),
        decision(R2, "s2", "g4", 1, ["p", "q", "r"], "p", "reject", "alice", "2024-03-02T12:00:00Z"),
        decision(R2, "s2", "g4", 1, ["p", "q", "r"], "q", "reject", "alice", "2024-03-02T12:01:00Z"),
        decision(R2, "s2", "g4", 1, ["p", "q", "r"], "r", "reject", "alice", "2024-03-02T12:02:00Z"),
        decision(R2, "s2", "g4", 1, ["p", "q", "r"], "r", "confirm", "alice", "2024-03-02T12:05:00Z"),
        # g5 on run 2: rejected at 08:00, re-decided confirm at 11:00 -> (m,n)=1 by carol
        decision(R2, "s2", "g5", 1, ["m", "n"], "", "confirm", "carol", "2024-03-02T11:00:00Z"),
        decision(R2, "s2", "g5", 1, ["m", "n"], "", "reject", "bob", "2024-03-02T08:00:00Z"),
    ]
    return pd.DataFrame(rows)


def make_pairs() -> pd.DataFrame:
    rows = [
        (R1, "s1", "g1", "a", "b", 0.95, 0.9, "shoes"),
        (R1, "s1", "g1", "a", "c", 0.91, 0.4, "shoes"),
        (R1, "s1", "g1", "b", "c", 0.90, 0.3, "shoes"),
        (R1, "s2", "g2", "d", "e", 0.89, np.nan, None),
        (R1, "s1", "g3", "f", "g", 0.96, 0.8, "bags"),
        (R1, "s1", "g6", "x", "y", 0.99, 0.9, "bags"),  # never reviewed
        (R2, "s1", "g1", "a", "b", 0.94, 0.9, "shoes"),
        (R2, "s1", "g1", "a", "h", 0.90, 0.5, "shoes"),
        (R2, "s1", "g1", "b", "h", 0.89, 0.5, "shoes"),
        (R2, "s2", "g4", "p", "q", 0.97, 0.9, "bags"),
        (R2, "s2", "g4", "p", "r", 0.92, 0.6, "bags"),
        (R2, "s2", "g4", "q", "r", 0.905, 0.6, "bags"),
        (R2, "s2", "g5", "m", "n", 0.93, 0.7, None),
    ]
    columns = ["run_date", "supplier_id", "group_id", "listing_id_l", "listing_id_r", "similarity_m", "match_score"]
    return pd.DataFrame(rows, columns=[*columns, "category"])


EXPECTED = [  # (run, group, l, r, label, reviewer, decided_at), in the output order
    # a version's latest decision stands for every run it was decided on: v1's group decision
    # is now the run-2 confirm, so run 1's (a,b) cites it
    (R1, "g1", "a", "b", 1, "alice", "2024-03-02T10:00:00+00:00"),
    (R1, "g1", "a", "c", 0, "alice", "2024-03-01T10:01:00Z"),
    (R1, "g1", "b", "c", 0, "alice", "2024-03-01T10:01:00Z"),
    (R1, "g2", "d", "e", 0, "bob", "2024-03-01T11:00:00Z"),
    (R2, "g1", "a", "b", 1, "alice", "2024-03-02T10:00:00+00:00"),
    (R2, "g1", "a", "h", 0, "bob", "2024-03-02T09:00:00Z"),
    (R2, "g1", "b", "h", 0, "bob", "2024-03-02T09:00:00Z"),
    (R2, "g4", "p", "r", 0, "alice", "2024-03-02T12:00:00Z"),
    (R2, "g4", "q", "r", 0, "alice", "2024-03-02T12:01:00Z"),
    (R2, "g5", "m", "n", 1, "carol", "2024-03-02T11:00:00Z"),
]


def as_tuples(labelled: pd.DataFrame) -> list[tuple]:
    columns = ["run_date", "group_id", "listing_id_l", "listing_id_r", "label", "reviewer", "decided_at"]
    return [tuple(row) for row in labelled[columns].itertuples(index=False)]


def test_label_pairs_gives_the_hand_derived_labels():
    labelled = label_pairs(make_decisions(), make_pairs())
    assert as_tuples(labelled) == EXPECTED
    assert list(labelled.columns) == [*make_pairs().columns, "label", "reviewer", "decided_at"]
    assert labelled["label"].dtype == np.int64
    # the pairs' own values come along: run 2's (a,b) has its own similarity
    assert labelled.loc[4, "similarity_m"] == pytest.approx(0.94)


def test_label_pairs_ignores_input_order():
    decisions = make_decisions().sample(frac=1.0, random_state=3)
    pairs = make_pairs().sample(frac=1.0, random_state=5)
    assert as_tuples(label_pairs(decisions, pairs)) == EXPECTED


def test_label_pairs_breaks_a_tie_by_reviewer_then_decision():
    at = "2024-03-01T10:00:00Z"
    pairs = make_pairs().iloc[[3]]  # g2 (d,e)
    tie = pd.DataFrame(
        [
            decision(R1, "s2", "g2", 1, ["d", "e"], "", "reject", "alice", at),
            decision(R1, "s2", "g2", 1, ["d", "e"], "", "confirm", "bob", at),
        ]
    )
    assert as_tuples(label_pairs(tie, pairs)) == [(R1, "g2", "d", "e", 1, "bob", at)]
    same_reviewer = tie.assign(reviewer="bob")  # bob confirms and rejects at once: reject wins
    assert as_tuples(label_pairs(same_reviewer, pairs)) == [(R1, "g2", "d", "e", 0, "bob", at)]


def test_label_pairs_without_a_match_is_empty_and_rejects_bad_input():
    decisions = make_decisions()
    empty = label_pairs(decisions.iloc[[3]], make_pairs())  # g3's member confirm labels nothing
    assert empty.empty and "label" in empty.columns
    with pytest.raises(ValueError, match="unknown decision"):
        label_pairs(decisions.assign(decision="maybe"), make_pairs())
    with pytest.raises(ValueError, match="lacks columns"):
        label_pairs(decisions.drop(columns="members"), make_pairs())
    clash = decisions.copy()
    clash.loc[1, "members"] = json.dumps(["a", "b"])  # g1 v1 with two member lists
    with pytest.raises(ValueError, match="differing members"):
        label_pairs(clash, make_pairs())


def test_wilson_interval_matches_the_hand_computed_value():
    # z = 1.95996; p = 0.8, n = 10: centre = (0.8 + z^2/20) / (1 + z^2/10) = 0.71674,
    # half = z * sqrt(0.016 + z^2/400) / (1 + z^2/10) = 0.22658
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3)
    assert high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_estimate_precision_overall_and_per_key():
    labelled = label_pairs(make_decisions(), make_pairs())
    (overall,) = estimate_precision(labelled)
    assert (overall.key, overall.n_pairs, overall.n_match) == ("all", 10, 3)
    assert overall.precision == pytest.approx(0.3)
    assert (overall.ci_low, overall.ci_high) == pytest.approx(wilson_interval(3, 10))
    # s1: g1 on both runs, 1 of 3 each = 2/6; s2: g2 0, g4 0 0, g5 1 = 1/4
    per_supplier = {e.key: (e.n_match, e.n_pairs, e.precision) for e in estimate_precision(labelled, by="supplier_id")}
    assert per_supplier == {"s1": (2, 6, pytest.approx(2 / 6)), "s2": (1, 4, pytest.approx(0.25))}
    # categories: shoes = g1's six pairs (2/6), bags = g4's two (0/2), (none) = g2 and g5 (1/2)
    per_category = estimate_precision(labelled, by="category")
    assert [(e.key, e.n_match, e.n_pairs) for e in per_category] == [("(none)", 1, 2), ("bags", 0, 2), ("shoes", 2, 6)]
    no_category = estimate_precision(labelled.drop(columns="category"), by="category")
    assert [(e.key, e.n_pairs) for e in no_category] == [("(none)", 10)]
    assert estimate_precision(labelled.iloc[:0])[0].precision is None
    assert estimate_precision(labelled, by="run_date")[0].to_dict()["key"] == R1
    with pytest.raises(ValueError):
        estimate_precision(labelled, by="nope")


def scored(similarities, labels) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame(
        {
            "run_date": [R1 if i % 2 else R2 for i in range(n)],
            "supplier_id": "s1",
            "group_id": [f"g{i}" for i in range(n)],
            "similarity_m": similarities,
            "match_score": [np.nan] + list(similarities[1:]),
            "label": labels,
            "reviewer": ["alice" if i % 3 else "bob" for i in range(n)],
            "decided_at": [f"2024-03-02T0{i}:00:00Z" for i in range(n)],
        }
    )


# precision of similarity >= t, from the top:
#   0.99: 1/1, 0.97: 2/2, 0.95: 2/3, 0.93: 3/4, 0.91: 4/5 = 0.8, 0.90: 4/6, 0.88: 4/7, 0.86: 5/8
SIMS = [0.99, 0.97, 0.95, 0.93, 0.91, 0.90, 0.88, 0.86]
LABELS = [1, 1, 0, 1, 1, 0, 0, 1]


def test_suggest_threshold_returns_the_lowest_threshold_reaching_the_target():
    suggestion = suggest_threshold(scored(SIMS, LABELS), 0.8, current=0.85, n_bootstrap=50)
    assert suggestion.threshold == pytest.approx(0.91)  # 0.8 at 0.91; every lower one is below 0.8
    assert suggestion.calibration.threshold == pytest.approx(0.91)
    assert suggestion.config_key == "dedup.min_similarity"
    assert (suggestion.n_pairs, suggestion.n_decisions) == (8, 8)
    assert suggestion.reviewers == ("alice", "bob") and suggestion.run_dates == (R1, R2)
    assert "never lowering" in suggestion.note and "kept" not in suggestion.note
    text = suggestion.source_text(computed_on="2026-01-02")
    assert text == (
        "the lowest similarity_m reaching precision 0.8 on 8 reviewer-decided pairs (runs 2024-03-01..2024-03-02, "
        "2 reviewers, review_decisions), dedup.feedback.suggest_threshold, computed 2026-01-02"
    )
    assert suggestion.to_dict()["calibration"]["threshold"] == pytest.approx(0.91)
    # 0.9 is first reached (from below) at 0.97: 2/2
    assert suggest_threshold(scored(SIMS, LABELS), 0.9, current=0.85).threshold == pytest.approx(0.97)


def test_suggest_threshold_is_clipped_to_the_current_threshold():
    suggestion = suggest_threshold(scored(SIMS, LABELS), 0.8, current=0.95, n_bootstrap=0)
    assert suggestion.threshold == pytest.approx(0.95)
    assert suggestion.calibration.threshold == pytest.approx(0.91)
    assert "kept" in suggestion.note
    assert suggestion.source_text(computed_on="2026-01-02").startswith("the current 0.95 kept:")


def test_suggest_threshold_on_match_score_drops_nan_scores():
    # without the first pair (NaN score): 0.97: 1/1, 0.95: 1/2, 0.93: 2/3, 0.91: 3/4 = 0.75, then below
    suggestion = suggest_threshold(scored(SIMS, LABELS), 0.75, column="match_score", current=0.5, n_bootstrap=0)
    assert suggestion.n_pairs == 7 and suggestion.config_key == "dedup.min_probability"
    assert suggestion.threshold == pytest.approx(0.91)


def test_suggest_threshold_raises_when_it_cannot_suggest():
    with pytest.raises(CalibrationError, match="no threshold reaches"):  # best precision is 1/2
        suggest_threshold(scored([0.99, 0.90], [0, 1]), 0.9, current=0.85)
    with pytest.raises(CalibrationError, match="labelled a match"):
        suggest_threshold(scored([0.99, 0.90], [0, 0]), 0.9, current=0.85)
    with pytest.raises(ValueError, match="column"):
        suggest_threshold(scored(SIMS, LABELS), 0.9, column="cosine", current=0.85)
