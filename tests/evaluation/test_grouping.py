"""The grouping task's scoring and rule on tiny hand-made catalogues (no datasets needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from evaluation.grouping import (
    METHODS,
    RULE,
    TASK,
    Grouping,
    choose_grouping,
    evaluate_grouping,
    label_groups,
    make_grid,
    render_table,
    score_groupings,
)
from evaluation.tasks import Run

# true groups {a, b, c}, {d, e}, {f}; one wrong but confident-enough link c-d chains them, and
# a weak e-f candidate stays below the pair threshold
IDS = np.array(["a", "b", "c", "d", "e", "f"], dtype=object)
TRUTH = np.array([1, 1, 1, 2, 2, 3])
LEFT = np.array(["a", "b", "a", "c", "d", "e"], dtype=object)
RIGHT = np.array(["b", "c", "c", "d", "e", "f"], dtype=object)
SIMILARITY = np.array([0.9, 0.9, 0.9, 0.6, 0.9, 0.5])
PROBABILITY = np.array([0.9, 0.9, 0.9, 0.4, 0.9, 0.2])
MIN_PROBABILITY = 0.35


def _rows(groupings):
    rows = score_groupings(IDS, TRUTH, LEFT, RIGHT, SIMILARITY, PROBABILITY, MIN_PROBABILITY, groupings)
    return {r["grouping"]: r for r in rows}


def test_components_chain_the_two_true_groups():
    row = _rows([Grouping("components")])["components"]
    # one group {a..e}: 10 predicted pairs, of which the 4 true ones (ab, ac, bc, de)
    assert row["precision_groups"] == pytest.approx(4 / 10)
    assert row["recall_groups"] == pytest.approx(1.0)
    assert row["f1_groups"] == pytest.approx(2 * 0.4 / 1.4)
    assert (row["largest_group"], row["groups"]) == (5, 1)
    # the pairs themselves: 5 kept (e-f is below 0.35), 4 of them true, 4 true pairs in all
    assert row["f1_pairs"] == pytest.approx(2 * 0.8 / 1.8)
    assert row["min_probability"] == MIN_PROBABILITY and row["candidate"]


def test_average_link_cuts_the_chain_and_references_move_the_pairs():
    rows = _rows([Grouping("average", 0.5), Grouping("components", min_probability=0.5)])
    average = rows["average@0.5"]
    # abc-de average link: 0.4 / (3 * 2) < 0.5, so they stay apart: exactly the truth
    assert (average["f1_groups"], average["precision_groups"], average["recall_groups"]) == (1.0, 1.0, 1.0)
    assert (average["largest_group"], average["groups"]) == (3, 2)
    assert average["f1_pairs"] == pytest.approx(2 * 0.8 / 1.8)  # same pairs as components
    reference = rows["components@p0.5"]
    assert reference["f1_groups"] == 1.0 and not reference["candidate"]
    assert reference["f1_pairs"] == 1.0  # c-d (0.4) is no pair at 0.5


def test_average_at_a_low_link_chains_like_components():
    # abc-de link 0.4/6 = 0.067 still reaches 0.05
    assert _rows([Grouping("average", 0.05)])["average@0.05"]["largest_group"] == 5


def test_label_groups_keeps_singletons_and_does_not_touch_the_input():
    ids = IDS.copy()
    labels = label_groups(ids, LEFT[:2], RIGHT[:2], SIMILARITY[:2], PROBABILITY[:2], Grouping("components"))
    assert labels[0] == labels[1] == labels[2] != "a"
    assert labels[3:].tolist() == ["d", "e", "f"]
    assert ids.tolist() == IDS.tolist()
    empty = label_groups(ids, LEFT[:0], RIGHT[:0], SIMILARITY[:0], PROBABILITY[:0], Grouping("average", 0.5))
    assert empty.tolist() == IDS.tolist()


def _row(method, f1, min_link=0.0, candidate=True):
    return {
        "grouping": f"{method}@{min_link}",
        "method": method,
        "min_link": min_link,
        "candidate": candidate,
        "f1_groups": f1,
    }


@pytest.mark.parametrize(
    "rows,expected",
    [
        pytest.param([_row("components", 0.50), _row("average", 0.505, 0.3)], ("components", 0.0), id="within-margin"),
        pytest.param([_row("components", 0.50), _row("average", 0.52, 0.3)], ("average", 0.3), id="beats-margin"),
        pytest.param(
            [_row("components", 0.5), _row("average", 0.6, 0.4), _row("average", 0.6, 0.2), _row("average", 0.55, 0.1)],
            ("average", 0.2),
            id="tie-smaller-link",
        ),
        pytest.param(
            [_row("components", 0.5), _row("components", 0.9, candidate=False), _row("average", 0.52, 0.3)],
            ("average", 0.3),
            id="references-not-chosen",
        ),
    ],
)
def test_choose_grouping_applies_the_rule(rows, expected):
    chosen = choose_grouping(rows)
    assert (chosen["method"], chosen["min_link"]) == expected


def test_choose_grouping_needs_components():
    with pytest.raises(ValueError, match="components"):
        choose_grouping([_row("average", 0.5, 0.3)])


def test_grid_and_rule_are_the_documented_ones():
    groupings = make_grid()
    assert groupings[0] == Grouping("components")
    assert [g.min_link for g in groupings if g.method == "average"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert all(not g.candidate for g in groupings if g.min_probability is not None)
    assert METHODS[:2] == ("components", "average@0.1") and len(set(METHODS)) == len(METHODS)
    assert "valid_medium" in RULE and "0.01" in RULE
    readme = (Path(__file__).resolve().parents[2] / "bench" / "README.md").read_text()
    assert RULE in readme  # the rule the code applies is the one bench/README.md states


def test_render_table_writes_one_row_per_grouping():
    records = [
        {"dataset": "d", "task": TASK, "method": "components", "metric": "f1_groups", "value": 0.42, "n": 6},
        {"dataset": "d", "task": TASK, "method": "components", "metric": "largest_group", "value": 17, "n": 6},
        {"dataset": "d", "task": TASK, "method": "average@0.3", "metric": "f1_groups", "value": 0.5755, "n": 6},
        {"dataset": "d", "task": "other", "method": "x", "metric": "f1_groups", "value": 0.1, "n": 6},
    ]
    text = render_table(records, ["d"]).splitlines()
    assert text[0] == "| grouping | d F1 | d P | d R | d largest | d groups |"
    assert text[2] == "| `components` | 0.420 |  |  | 17 |  |"
    assert text[3] == "| `average@0.3` | 0.576 |  |  |  |  |"
    assert len(text) == 4


def test_evaluate_grouping_without_a_verifier_only_warns(caplog):
    run = Run(shared=Path("."), methods=None, target_precision=0.9)
    with caplog.at_level(logging.WARNING):
        evaluate_grouping(run)
    assert run.records == [] and "verifier" in "\n".join(caplog.messages)
