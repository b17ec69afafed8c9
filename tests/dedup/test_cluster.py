"""Tests for dedup.cluster against networkx on seeded random graphs."""

from __future__ import annotations

import logging

import networkx as nx
import numpy as np
import pyarrow as pa
import pytest

from dedup.cluster import ClusterResult, cluster_pairs

logger = logging.getLogger(__name__)

SEED = 20_240_611


def _random_pairs(seed: int, n_nodes: int, n_edges: int) -> tuple[list[str], list[str], np.ndarray]:
    """Random sparse graph with unsorted string ids, repeated and reversed edges."""
    logger.info("random seed [%d, %d]", SEED, seed)
    rng = np.random.default_rng([SEED, seed])
    names = [f"item-{n:05d}" for n in rng.permutation(50_000)[:n_nodes]]
    left = rng.integers(0, n_nodes, size=n_edges)
    right = rng.integers(0, n_nodes, size=n_edges)
    keep = left != right
    left, right = left[keep], right[keep]
    sims = rng.uniform(0.5, 1.0, size=left.shape[0]).astype(np.float32)  # exact in float32
    # repeat some edges reversed with another similarity
    rep = rng.choice(left.shape[0], size=left.shape[0] // 10, replace=False)
    left, right = np.concatenate([left, right[rep]]), np.concatenate([right, left[rep]])
    sims = np.concatenate([sims, rng.uniform(0.5, 1.0, size=rep.shape[0]).astype(np.float32)])
    return [names[i] for i in left], [names[i] for i in right], sims


def _networkx_oracle(ids_l, ids_r, sims) -> list[dict]:
    """Components sorted by smallest member, with networkx weakest/strongest links."""
    graph = nx.Graph()
    for a, b, s in zip(ids_l, ids_r, sims.tolist(), strict=True):
        if graph.has_edge(a, b):  # repeated pair: the strongest similarity links them
            s = max(s, graph[a][b]["weight"])
        graph.add_edge(a, b, weight=s)
    out = []
    for nodes in nx.connected_components(graph):
        sub = graph.subgraph(nodes)
        tree = nx.maximum_spanning_tree(sub, weight="weight")
        out.append(
            {
                "members": sorted(nodes),
                "size": len(nodes),
                "weakest": min(w for _, _, w in tree.edges(data="weight")),
                "strongest": max(w for _, _, w in sub.edges(data="weight")),
                "representative": min(nodes),
                "has_bridge": nx.has_bridges(sub),
            }
        )
    return sorted(out, key=lambda c: c["representative"])


GRAPHS = [
    pytest.param(1, 30, 20, id="seed1-n30-e20-many-small"),
    pytest.param(2, 60, 45, id="seed2-n60-e45"),
    pytest.param(3, 200, 120, id="seed3-n200-e120"),
    pytest.param(4, 200, 260, id="seed4-n200-e260-giant"),
    pytest.param(5, 500, 300, id="seed5-n500-e300"),
]


@pytest.mark.parametrize("seed,n_nodes,n_edges", GRAPHS)
def test_cluster_pairs_matches_networkx(seed, n_nodes, n_edges):
    ids_l, ids_r, sims = _random_pairs(seed, n_nodes, n_edges)
    expected = _networkx_oracle(ids_l, ids_r, sims)
    assert len(expected) > 1  # more than one component, so numbering is exercised

    result = cluster_pairs(ids_l, ids_r, sims)

    assert isinstance(result, ClusterResult)
    assert result.members.schema == pa.schema([("listing_id", pa.string()), ("component", pa.int64())])
    assert result.components.schema == pa.schema(
        [
            ("component", pa.int64()),
            ("size", pa.int64()),
            ("weakest_similarity", pa.float32()),
            ("strongest_similarity", pa.float32()),
            ("representative", pa.string()),
            ("has_bridge", pa.bool_()),
        ]
    )
    comps = result.components.to_pylist()
    assert [c["component"] for c in comps] == list(range(len(expected)))
    members = result.members.to_pydict()
    assert members["listing_id"] == [m for c in expected for m in c["members"]]
    assert members["component"] == [i for i, c in enumerate(expected) for _ in c["members"]]
    for got, want in zip(comps, expected, strict=True):
        assert got["size"] == want["size"]
        assert got["representative"] == want["representative"]
        assert got["weakest_similarity"] == want["weakest"]  # float32 values, compared exactly
        assert got["strongest_similarity"] == want["strongest"]
        assert got["has_bridge"] == want["has_bridge"]


@pytest.mark.parametrize("seed,n_nodes,n_edges", GRAPHS[:3])
def test_cluster_pairs_is_independent_of_edge_order_and_input_type(seed, n_nodes, n_edges):
    ids_l, ids_r, sims = _random_pairs(seed, n_nodes, n_edges)
    reference = cluster_pairs(ids_l, ids_r, sims)
    perm = np.random.default_rng([SEED, seed, 1]).permutation(len(ids_l))
    swapped = cluster_pairs(
        pa.chunked_array([pa.array([ids_r[i] for i in perm[:5]]), pa.array([ids_r[i] for i in perm[5:]])]),
        np.array([ids_l[i] for i in perm], dtype=object),
        pa.array(sims[perm]),
    )
    assert swapped.members.equals(reference.members)
    assert swapped.components.equals(reference.components)


def test_cluster_pairs_weakest_link_is_the_split_point():
    # a - b - c chain with a strong closing edge a - c: MST is {0.9, 0.95}, not the 0.6 edge
    result = cluster_pairs(["a", "b", "a", "x"], ["b", "c", "c", "y"], [0.9, 0.6, 0.95, 0.7])
    assert result.members.to_pydict() == {"listing_id": ["a", "b", "c", "x", "y"], "component": [0, 0, 0, 1, 1]}
    comps = result.components.to_pydict()
    assert comps["size"] == [3, 2]
    assert comps["weakest_similarity"] == [pytest.approx(0.9), pytest.approx(0.7)]
    assert comps["strongest_similarity"] == [pytest.approx(0.95), pytest.approx(0.7)]
    assert comps["representative"] == ["a", "x"]


def test_cluster_pairs_empty_input():
    result = cluster_pairs([], [], [])
    assert result.members.num_rows == 0 and result.components.num_rows == 0
    assert result.members.schema.names == ["listing_id", "component"]
    assert result.components.schema.names == [
        "component",
        "size",
        "weakest_similarity",
        "strongest_similarity",
        "representative",
        "has_bridge",
    ]


@pytest.mark.parametrize(
    "ids_l,ids_r,sims,message",
    [
        pytest.param(["a", "b"], ["c"], [0.9, 0.8], "listing_id_l has 2 ids but listing_id_r has 1", id="length-ids"),
        pytest.param(["a", "b"], ["c", "d"], [0.9], "one value per pair", id="length-sims"),
        pytest.param(["a", "b"], ["b", "b"], [0.9, 0.8], "self pairs", id="self-pair"),
        pytest.param(["a"], ["b"], [float("nan")], "NaN", id="nan-similarity"),
        pytest.param(pa.array(["a", None]), ["b", "c"], [0.9, 0.8], "null ids", id="null-id"),
        pytest.param([1], ["b"], [0.9], "only str ids", id="int-id"),
    ],
)
def test_cluster_pairs_rejects_bad_input(ids_l, ids_r, sims, message):
    with pytest.raises(ValueError, match=message):
        cluster_pairs(ids_l, ids_r, sims)
