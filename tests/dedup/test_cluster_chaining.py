"""Tests for chaining control in dedup.cluster: bridges and average-link groups, against brute force."""

from __future__ import annotations

import logging

import networkx as nx
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dedup.cluster import cluster_pairs, find_bridges

logger = logging.getLogger(__name__)

SEED = 20_240_613


def _rng(*seed: int) -> np.random.Generator:
    logger.info("random seed %s", [SEED, *seed])
    return np.random.default_rng([SEED, *seed])


def _n_components(left: np.ndarray, right: np.ndarray, n_nodes: int) -> int:
    """Connected components of an undirected graph, isolated nodes included (scipy, not ours)."""
    graph = coo_matrix((np.ones(left.shape[0]), (left, right)), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=False)[0]


def _bridges_by_removal(left: np.ndarray, right: np.ndarray, n_nodes: int) -> np.ndarray:
    """Reference: a row is a bridge when dropping every copy of its pair adds a component."""
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    base = _n_components(left, right, n_nodes)
    out = np.zeros(left.shape[0], dtype=bool)
    for k in range(left.shape[0]):
        if lo[k] == hi[k]:
            continue
        keep = ~((lo == lo[k]) & (hi == hi[k]))
        out[k] = _n_components(left[keep], right[keep], n_nodes) > base
    return out


BRIDGE_GRAPHS = [
    pytest.param(1, 12, 10, id="n12-e10-forest"),
    pytest.param(2, 30, 35, id="n30-e35"),
    pytest.param(3, 40, 60, id="n40-e60"),
    pytest.param(4, 60, 70, id="n60-e70"),
    pytest.param(5, 25, 45, id="n25-e45-cycles"),
]


@pytest.mark.parametrize("seed,n_nodes,n_edges", BRIDGE_GRAPHS)
def test_find_bridges_matches_edge_removal(seed, n_nodes, n_edges):
    rng = _rng(1, seed)
    left = rng.integers(0, n_nodes, size=n_edges)
    right = rng.integers(0, n_nodes, size=n_edges)
    # repeat some pairs, reversed: the same edge, so no protection by its copy
    rep = rng.choice(n_edges, size=n_edges // 8, replace=False)
    left, right = np.concatenate([left, right[rep]]), np.concatenate([right, left[rep]])
    expected = _bridges_by_removal(left, right, n_nodes)
    assert expected.any() and not expected.all()  # the graph exercises both answers

    got = find_bridges(left, right, n_nodes)

    assert got.dtype == bool and got.shape == left.shape
    np.testing.assert_array_equal(got, expected)


def test_find_bridges_doubled_pair_is_still_a_bridge_and_loops_are_not():
    # 0-1 twice (once reversed) hangs off the triangle 1-2-3; 4-4 is a self loop
    left = np.array([0, 1, 1, 2, 3, 4])
    right = np.array([1, 0, 2, 3, 1, 4])
    assert find_bridges(left, right, 5).tolist() == [True, True, False, False, False, False]


def test_find_bridges_is_not_limited_by_recursion_depth():
    n = 50_000  # far deeper than Python's recursion limit
    path = np.arange(n - 1)
    assert find_bridges(path, path + 1, n).all()  # every edge of a path is a bridge
    ring = find_bridges(np.arange(n), (np.arange(n) + 1) % n, n)
    assert not ring.any()  # closing the path into a cycle protects every edge


@pytest.mark.parametrize(
    "left,right,n_nodes,message",
    [
        pytest.param([0, 1], [1], 2, "one code per edge", id="length"),
        pytest.param([0.0], [1.0], 2, "integers", id="float-codes"),
        pytest.param([0], [2], 2, r"\[0, 2\)", id="out-of-range"),
        pytest.param([-1], [0], 2, r"\[0, 2\)", id="negative"),
    ],
)
def test_find_bridges_rejects_bad_input(left, right, n_nodes, message):
    with pytest.raises(ValueError, match=message):
        find_bridges(left, right, n_nodes)


def _average_reference(ids_l, ids_r, weights, min_link) -> list[list[str]]:
    """O(n^3) average link from scratch: groups (>= 2 members) sorted by smallest member.

    Each step recomputes every cluster pair's mean weight over a dense matrix (missing edge = 0,
    repeated pair = its largest weight) and merges the best pair while it reaches ``min_link``;
    ties go to the smaller (first, second) smallest member.
    """
    names = sorted(set(ids_l) | set(ids_r))
    index = {name: k for k, name in enumerate(names)}
    dense = np.zeros((len(names), len(names)))
    for a, b, w in zip(ids_l, ids_r, weights, strict=True):
        i, j = index[a], index[b]
        dense[i, j] = dense[j, i] = max(dense[i, j], w) if dense[i, j] else w
    clusters = [[k] for k in range(len(names))]
    while True:
        best = None
        for x in range(len(clusters)):
            for y in range(x + 1, len(clusters)):
                a, b = clusters[x], clusters[y]
                mean = dense[np.ix_(a, b)].sum() / (len(a) * len(b))
                key = (-mean, min(min(a), min(b)), max(min(a), min(b)))
                if best is None or key < best[0]:
                    best = (key, x, y)
        if best is None or -best[0][0] < min_link:
            break
        _, x, y = best
        clusters[x] = clusters[x] + clusters[y]
        del clusters[y]
    groups = [sorted(names[k] for k in c) for c in clusters if len(c) > 1]
    return sorted(groups)


def _random_weighted_pairs(seed: int, n_nodes: int, n_edges: int):
    """Random graph with string ids, repeated reversed pairs, dyadic link weights (exact sums)."""
    rng = _rng(2, seed)
    names = [f"L{k:04d}" for k in rng.permutation(9_000)[:n_nodes]]
    left = rng.integers(0, n_nodes, size=n_edges)
    right = rng.integers(0, n_nodes, size=n_edges)
    keep = left != right
    left, right = left[keep], right[keep]
    rep = rng.choice(left.shape[0], size=left.shape[0] // 10, replace=False)
    left, right = np.concatenate([left, right[rep]]), np.concatenate([right, left[rep]])
    sims = rng.uniform(0.3, 1.0, size=left.shape[0]).astype(np.float32)
    weights = rng.integers(1, 17, size=left.shape[0]) / 16  # multiples of 1/16: sums and ties are exact
    return [names[k] for k in left], [names[k] for k in right], sims, weights


def _groups_of(result) -> list[list[str]]:
    members = result.members.to_pandas()
    return [sorted(part["listing_id"]) for _, part in members.groupby("component", sort=True)]


AVERAGE_GRAPHS = [
    pytest.param(1, 20, 30, 0.5, id="n20-e30-at0.5"),
    pytest.param(2, 25, 60, 0.25, id="n25-e60-at0.25"),
    pytest.param(3, 30, 80, 0.375, id="n30-e80-at0.375"),
    pytest.param(4, 30, 120, 0.125, id="n30-e120-at0.125"),
    pytest.param(5, 40, 70, 0.75, id="n40-e70-at0.75"),
]


@pytest.mark.parametrize("seed,n_nodes,n_edges,min_link", AVERAGE_GRAPHS)
def test_average_link_matches_brute_force(seed, n_nodes, n_edges, min_link):
    ids_l, ids_r, sims, weights = _random_weighted_pairs(seed, n_nodes, n_edges)
    expected = _average_reference(ids_l, ids_r, weights, min_link)
    components = _groups_of(cluster_pairs(ids_l, ids_r, sims))
    assert expected != components  # average link changes something on this graph

    result = cluster_pairs(ids_l, ids_r, sims, method="average", min_link=min_link, link_weight=weights)

    assert _groups_of(result) == expected
    # per group: its own edges give the weakest (spanning-tree) and strongest link and the bridge flag
    graph = nx.Graph()
    for a, b, s in zip(ids_l, ids_r, sims.tolist(), strict=True):
        graph.add_edge(a, b, weight=max(s, graph[a][b]["weight"]) if graph.has_edge(a, b) else s)
    rows = result.components.to_pylist()
    assert [r["component"] for r in rows] == list(range(len(expected)))
    for row, group in zip(rows, expected, strict=True):
        sub = graph.subgraph(group)
        assert nx.is_connected(sub)
        tree = nx.maximum_spanning_tree(sub, weight="weight")
        assert row["size"] == len(group)
        assert row["representative"] == group[0]
        assert row["weakest_similarity"] == min(w for _, _, w in tree.edges(data="weight"))
        assert row["strongest_similarity"] == max(w for _, _, w in sub.edges(data="weight"))
        assert row["has_bridge"] == nx.has_bridges(sub)


@pytest.mark.parametrize("seed,n_nodes,n_edges,min_link", AVERAGE_GRAPHS[:3])
def test_average_link_weights_default_to_similarity(seed, n_nodes, n_edges, min_link):
    ids_l, ids_r, _, weights = _random_weighted_pairs(seed, n_nodes, n_edges)
    result = cluster_pairs(ids_l, ids_r, weights, method="average", min_link=min_link)
    assert _groups_of(result) == _average_reference(ids_l, ids_r, weights, min_link)


def test_chain_splits_under_average_but_not_under_components():
    # a-b-c-d: strong adjacent links, no others; the ends share nothing
    ids_l, ids_r, sims = ["a", "b", "c"], ["b", "c", "d"], [0.95, 0.9, 0.95]
    components = cluster_pairs(ids_l, ids_r, sims)
    assert _groups_of(components) == [["a", "b", "c", "d"]]
    assert components.components.column("has_bridge").to_pylist() == [True]

    split = cluster_pairs(ids_l, ids_r, sims, method="average", min_link=0.8)
    assert _groups_of(split) == [["a", "b"], ["c", "d"]]
    assert split.components.column("weakest_similarity").to_pylist() == [pytest.approx(0.95)] * 2
    # a low enough bar lets the averages (0.95+0.9)/... through and the chain stays whole
    assert _groups_of(cluster_pairs(ids_l, ids_r, sims, method="average", min_link=0.2)) == [["a", "b", "c", "d"]]


def test_average_merges_at_exactly_min_link():
    # after a+b merge, c's average link to them is (0.5 + 0.5) / 2 = 0.5: it reaches min_link
    ids_l, ids_r, weights = ["a", "a", "b", "d"], ["b", "c", "c", "e"], [1.0, 0.5, 0.5, 0.25]
    result = cluster_pairs(ids_l, ids_r, [0.9] * 4, method="average", min_link=0.5, link_weight=weights)
    assert _groups_of(result) == [["a", "b", "c"]] == _average_reference(ids_l, ids_r, weights, 0.5)


def test_average_leaves_weakly_linked_listings_out():
    # x hangs on by one weak link to a tight triangle: it ends alone and is not reported
    ids_l, ids_r = ["a", "a", "b", "c"], ["b", "c", "c", "x"]
    result = cluster_pairs(
        ids_l, ids_r, [0.9, 0.9, 0.9, 0.9], method="average", min_link=0.5, link_weight=[1, 1, 1, 0.3]
    )
    assert result.members.to_pydict() == {"listing_id": ["a", "b", "c"], "component": [0, 0, 0]}
    assert result.components.column("has_bridge").to_pylist() == [False]  # a triangle has no bridge
    nothing = cluster_pairs(["a"], ["b"], [0.9], method="average", min_link=0.95)
    assert nothing.members.num_rows == 0 and nothing.components.num_rows == 0
    assert nothing.components.schema.names[-1] == "has_bridge"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_average_is_independent_of_row_order_and_sides(seed):
    ids_l, ids_r, sims, weights = _random_weighted_pairs(seed, 40, 90)
    reference = cluster_pairs(ids_l, ids_r, sims, method="average", min_link=0.375, link_weight=weights)
    perm = _rng(3, seed).permutation(len(ids_l))
    flip = _rng(4, seed).random(len(ids_l)) < 0.5
    left = [ids_r[k] if flip[k] else ids_l[k] for k in perm]
    right = [ids_l[k] if flip[k] else ids_r[k] for k in perm]
    shuffled = cluster_pairs(left, right, sims[perm], method="average", min_link=0.375, link_weight=weights[perm])
    assert shuffled.members.equals(reference.members)
    assert shuffled.components.equals(reference.components)


def test_average_handles_a_large_component():
    # a few thousand listings and tens of thousands of pairs in one component: must finish (untimed)
    rng = _rng(5)
    n, blocks = 3_000, 300
    block = rng.integers(0, blocks, size=n)
    left = rng.integers(0, n, size=40_000)
    right = rng.integers(0, n, size=40_000)
    # plus dense links inside each block, and a chain through everything: one component
    inside_l = rng.integers(0, n, size=20_000)
    same_block = [np.flatnonzero(block == b) for b in range(blocks)]
    inside_r = np.array([rng.choice(same_block[block[k]]) for k in inside_l])
    path = np.arange(n - 1)
    left, right = np.concatenate([left, inside_l, path]), np.concatenate([right, inside_r, path + 1])
    keep = left != right
    left, right = left[keep], right[keep]
    weights = np.where(block[left] == block[right], 0.9, 0.2)
    names = np.array([f"L{k:05d}" for k in range(n)], dtype=object)
    assert _n_components(left, right, n) == 1
    result = cluster_pairs(names[left], names[right], weights, method="average", min_link=0.5)
    sizes = result.components.column("size").to_numpy()
    assert sizes.max() < n // 10  # the chain does not hold the catalogue together
    members = result.members.to_pandas()
    # no group mixes blocks: cross-block links (0.2) never average 0.5
    assert (
        members.assign(block=block[members["listing_id"].str[1:].astype(int)]).groupby("component")["block"].nunique()
        == 1
    ).all()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        pytest.param({"method": "single"}, "method must be one of", id="unknown-method"),
        pytest.param({"method": "average"}, "min_link > 0", id="average-needs-min-link"),
        pytest.param({"method": "average", "min_link": -0.5}, "min_link > 0", id="negative-min-link"),
        pytest.param({"method": "average", "min_link": float("nan")}, "finite", id="nan-min-link"),
        pytest.param({"min_link": "high"}, "must be a number", id="text-min-link"),
        pytest.param({"method": "average", "min_link": 0.5, "link_weight": [0.5]}, "link_weight", id="weight-length"),
        pytest.param(
            {"method": "average", "min_link": 0.5, "link_weight": [0.5, float("inf")]}, "link_weight", id="weight-inf"
        ),
    ],
)
def test_cluster_pairs_rejects_bad_grouping_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cluster_pairs(["a", "b"], ["b", "c"], [0.9, 0.8], **kwargs)
