"""The verifier's pair features: parsing, symmetry and the neighbour columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dedup.features import (
    FEATURE_NAMES,
    neighbour_similarities,
    pair_features,
    parse_listing,
    parse_listings,
    parse_price,
)

COLUMN = {name: k for k, name in enumerate(FEATURE_NAMES)}


def _unit(rows) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_model_codes_meet_across_spellings():
    a = parse_listing("SONY KDL40V4100 Bravia")
    b = parse_listing("Sony Bravia KDL-40V4100 40in LCD")
    assert "kdl40v4100" in a.codes and "kdl40v4100" in b.codes
    assert "kdl40v4100" in b.squashed
    # "40in" is a measure, not a code; numbers keep their decimals in one spelling
    assert "40in" in b.measures
    assert parse_listing("Cable 1,50 m").numbers == frozenset({"1.5"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("$1,299.00", 1299.0), ("12,99", 12.99), (399, 399.0), ("", math.nan), (None, math.nan), (0, math.nan)],
)
def test_parse_price(value, expected):
    got = parse_price(value)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def _features(titles, brands=None, prices=None, m=None, pairs=((0, 1),)):
    parsed = parse_listings(titles, brands, prices)
    n = len(titles)
    lexical = _unit(np.eye(n) + 0.5)  # some overlap between every two rows
    m = _unit(np.eye(n) + 0.1) if m is None else m
    left = np.array([p[0] for p in pairs])
    right = np.array([p[1] for p in pairs])
    top = neighbour_similarities(m, m, np.arange(n), 0.0, 5)
    sims = np.einsum("pd,pd->p", m[left], m[right])
    return pair_features(parsed, lexical, left, right, sims, sims, np.full(len(left), np.nan), top[left], top[right])


def test_features_are_symmetric_in_the_two_listings():
    titles = ["WD 4TB Red WD40EFRX 3.5in", "Western Digital Red 4 TB WD40EFRX", "WD 6TB Red WD60EFRX"]
    forward = _features(titles, ["WD", None, "wd"], ["$99", "105.5", None], pairs=((0, 1), (0, 2), (1, 2)))
    backward = _features(titles, ["WD", None, "wd"], ["$99", "105.5", None], pairs=((1, 0), (2, 0), (2, 1)))
    np.testing.assert_array_equal(np.isnan(forward), np.isnan(backward))
    np.testing.assert_allclose(np.nan_to_num(forward), np.nan_to_num(backward))
    assert forward.shape == (3, len(FEATURE_NAMES))


def test_attribute_features_tell_a_twin_from_a_look_alike():
    titles = ["WD Red WD40EFRX 4TB", "Western Digital WD40EFRX Red 4TB", "WD Red WD60EFRX 6TB"]
    twin, look_alike = _features(titles, ["WD", "western digital", "WD"], [100, 104, 150], pairs=((0, 1), (0, 2)))
    assert twin[COLUMN["code_min"]] == 1.0 and look_alike[COLUMN["code_max"]] == 0.0
    assert twin[COLUMN["measure_jaccard"]] == 1.0 and look_alike[COLUMN["measure_jaccard"]] == 0.0
    assert look_alike[COLUMN["number_conflict"]] == 1.0
    assert twin[COLUMN["brand_match"]] == 0.0  # "wd" vs "westerndigital": different strings
    assert twin[COLUMN["price_log_ratio"]] == pytest.approx(math.log(104 / 100))
    # no brand on either side: NaN, so the trees route it as missing
    assert np.isnan(_features(["a b", "a c"])[0][COLUMN["brand_match"]])


def test_neighbour_lists_leave_the_listing_itself_out_and_respect_the_budget():
    m = _unit([[1, 0], [0.9, 0.1], [0.8, 0.3], [0, 1]])
    top = neighbour_similarities(m, m, np.arange(4), 0.5, 2)
    assert top.shape == (4, 2)
    assert top[0, 0] == pytest.approx(float(m[0] @ m[1]), abs=1e-6)  # not itself (1.0)
    assert np.all(top[:3, 0] >= top[:3, 1])  # most similar first
    assert top[3, 0] == -np.inf  # nothing reaches 0.5: padded
    across = neighbour_similarities(m[:1], m, None, 0.5, 4)  # a query not in the index
    assert across[0, 0] == pytest.approx(1.0)


def test_rank_and_gap_single_out_the_mutual_best_match():
    # 0 and 1 are each other's best match; 2 is close to 0 but 0 prefers 1
    m = _unit([[1, 0, 0], [0.98, 0.2, 0], [0.9, 0, 0.44], [0, 0, 1]])
    best, second = _features(["a", "b", "c", "d"], m=m, pairs=((0, 1), (0, 2)))
    assert best[COLUMN["rank_max"]] == 0 and best[COLUMN["gap_min"]] > 0
    assert second[COLUMN["rank_min"]] >= 1 or second[COLUMN["rank_max"]] >= 1
    assert second[COLUMN["gap_min"]] < 0
