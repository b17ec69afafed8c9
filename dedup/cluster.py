"""Duplicate groups from similarity pairs: connected components or average-link groups.

Pairs (edges) are processed in Kruskal order (similarity descending) with a
union-find, which yields the connected components and, per component, its
maximum spanning tree. The smallest similarity on that tree is the component's
*weakest link*: raising the threshold above it would split the component.

Connected components chain: in a dense catalogue, a few wrong pairs join many
true groups into one giant group. ``method="average"`` resists that: inside
each component, average-link agglomerative clustering over the sparse pair
graph (a missing edge counts as 0) only merges two clusters whose members are,
on average, linked at ``min_link`` or more, so a chain of strong adjacent
edges with no cross links falls apart. Each group also reports ``has_bridge``:
whether one edge holds it together (:func:`find_bridges`).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dedup.ids import as_id_array

logger = logging.getLogger(__name__)

METHODS = ("components", "average")
"""The groupings :func:`cluster_pairs` offers."""

MEMBERS_SCHEMA = pa.schema(
    [
        pa.field("listing_id", pa.string()),
        pa.field("component", pa.int64()),
    ]
)

COMPONENTS_SCHEMA = pa.schema(
    [
        pa.field("component", pa.int64()),
        pa.field("size", pa.int64()),
        pa.field("weakest_similarity", pa.float32()),
        pa.field("strongest_similarity", pa.float32()),
        pa.field("representative", pa.string()),
        pa.field("has_bridge", pa.bool_()),
    ]
)

IdArray = Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray
FloatArray = Sequence[float] | np.ndarray | pa.Array | pa.ChunkedArray


@dataclass(frozen=True)
class ClusterResult:
    """Duplicate groups of a pair graph.

    Attributes:
        members: One row per listing in a group (of two or more), columns
            ``listing_id: string, component: int64``, sorted by (component,
            listing_id). Groups are numbered 0..k-1 in order of their
            smallest listing_id.
        components: One row per group, sorted by ``component``, columns
            ``component: int64, size: int64, weakest_similarity: float32``
            (smallest edge on the maximum spanning tree of the group's own
            edges), ``strongest_similarity: float32`` (largest such edge),
            ``representative: string`` (smallest listing_id) and
            ``has_bridge: bool`` (some edge of the group's own edge set
            disconnects it when removed; always True for two members).
    """

    members: pa.Table
    components: pa.Table


def _as_similarity_array(values: Any, n: int, name: str = "similarity") -> np.ndarray:
    """Returns the values as float64 [n], or raises ValueError naming ``name``."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if values.null_count:
            raise ValueError(f"{name} contains {values.null_count} nulls; drop those pairs first")
        values = values.to_numpy()
    try:
        sims = np.asarray(values, dtype=np.float64)  # [n]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric; cast it to float first ({exc})") from exc
    if sims.ndim != 1 or sims.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one value per pair ({n}), got shape {sims.shape}")
    if not np.isfinite(sims).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop those pairs first")
    return sims


def _check_method(method: str, min_link: float) -> float:
    """Returns ``min_link`` as float after checking it and ``method``, or raises ValueError."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    try:
        link = float(min_link)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"min_link must be a number, got {min_link!r}") from exc
    if not math.isfinite(link):
        raise ValueError(f"min_link must be finite, got {min_link!r}")
    if method == "average" and link <= 0:
        # a missing edge counts as 0, so a threshold <= 0 would merge clusters with no link at all
        raise ValueError(
            f"method='average' needs min_link > 0 (got {link}): pass the smallest average link weight "
            "at which two clusters may merge, e.g. min_link=0.5"
        )
    return link


def _unique_edges(left: np.ndarray, right: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapses repeated pairs (either direction) into one edge ``lo < hi``.

    Returns:
        ``(lo, hi, edge_of_row)``: [m] int64 each for the unique edges, sorted by (lo, hi),
        and [n_rows] the unique edge of each input row.
    """
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    keys, edge_of_row = np.unique(lo * np.int64(n_nodes) + hi, return_inverse=True)  # [m], [n_rows]
    return keys // n_nodes, keys % n_nodes, edge_of_row.astype(np.int64)


def _bridges_of_simple_graph(lo: np.ndarray, hi: np.ndarray, n_nodes: int) -> np.ndarray:
    """Bridge mask [m] of a graph with no repeated edges and no self loops (iterative Tarjan)."""
    m = lo.shape[0]
    ends = np.concatenate([lo, hi])  # [2m]
    order = np.argsort(ends, kind="stable")
    neighbour = np.concatenate([hi, lo])[order].tolist()
    edge = np.concatenate([np.arange(m), np.arange(m)])[order].tolist()
    start = np.concatenate([[0], np.cumsum(np.bincount(ends, minlength=n_nodes))]).tolist()  # CSR offsets [n+1]
    disc = [-1] * n_nodes
    low = [0] * n_nodes
    cursor = start[:-1]  # next adjacency slot to visit, per node
    bridge = [False] * m
    timer = 0
    for root in range(n_nodes):
        if disc[root] != -1:
            continue
        disc[root] = low[root] = timer
        timer += 1
        stack = [(root, -1)]  # (node, edge it was reached by)
        while stack:
            node, via = stack[-1]
            slot = cursor[node]
            if slot < start[node + 1]:
                cursor[node] = slot + 1
                e = edge[slot]
                if e == via:  # skip the tree edge back to the parent (by edge, not by node)
                    continue
                other = neighbour[slot]
                if disc[other] == -1:
                    disc[other] = low[other] = timer
                    timer += 1
                    stack.append((other, e))
                elif disc[other] < low[node]:
                    low[node] = disc[other]
            else:
                stack.pop()
                if stack:
                    parent = stack[-1][0]
                    low[parent] = min(low[parent], low[node])
                    if low[node] > disc[parent]:
                        bridge[via] = True
    return np.asarray(bridge, dtype=bool)


def find_bridges(left: Sequence[int] | np.ndarray, right: Sequence[int] | np.ndarray, n_nodes: int) -> np.ndarray:
    """Marks the bridges of an undirected graph: edges whose removal disconnects their component.

    Iterative Tarjan lowlink (no recursion limit). Repeated pairs, in either direction, are one
    edge: a doubled pair is not protected by its copy (all its rows are marked alike). Self
    loops are never bridges.

    Args:
        left: [n_edges] int node codes in ``[0, n_nodes)``.
        right: [n_edges] int node codes in ``[0, n_nodes)``.
        n_nodes: number of nodes (isolated nodes allowed).

    Returns:
        [n_edges] bool mask, True where the row's edge is a bridge.

    Raises:
        ValueError: On length mismatch, non-integer codes or codes outside ``[0, n_nodes)``.

    Examples:
        >>> find_bridges([0, 1, 2, 2], [1, 2, 0, 3], 4).tolist()
        [False, False, False, True]
    """
    a, b = np.asarray(left), np.asarray(right)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"left {a.shape} and right {b.shape} must be 1-D with one code per edge")
    if a.size and not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        raise ValueError(f"node codes must be integers, got {a.dtype} and {b.dtype}; map ids to 0..n_nodes-1 first")
    n_nodes = int(n_nodes)
    a, b = a.astype(np.int64), b.astype(np.int64)
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_nodes):
        raise ValueError(f"node codes must lie in [0, {n_nodes}); pass n_nodes = the number of distinct nodes")
    mask = np.zeros(a.shape[0], dtype=bool)
    loop = a == b
    if loop.all():
        return mask
    lo, hi, edge_of_row = _unique_edges(a[~loop], b[~loop], n_nodes)
    mask[~loop] = _bridges_of_simple_graph(lo, hi, n_nodes)[edge_of_row]
    return mask


def _average_link(lo: np.ndarray, hi: np.ndarray, weight: np.ndarray, n_nodes: int, min_link: float) -> np.ndarray:
    """Average-link clusters over a sparse graph (missing edge = 0); returns the cluster [n] per node.

    Greedy: merge the pair of clusters with the highest ``sum of weights / (|A|*|B|)`` while it
    is >= ``min_link``; ties go to the pair with the smaller (first, second) smallest member
    code. A cluster is named by its smallest member code, so the order of the input rows plays
    no part. Heap entries go stale when either cluster changes (version counters).
    """
    links: list[dict[int, float]] = [{} for _ in range(n_nodes)]  # per cluster: neighbour -> weight sum
    for a, b, w in zip(lo.tolist(), hi.tolist(), weight.tolist(), strict=True):
        links[a][b] = w
        links[b][a] = w
    size = [1] * n_nodes
    version = [0] * n_nodes
    label = list(range(n_nodes))  # union-find parent, cluster name = smallest member code
    heap = [
        (-w, a, b, 0, 0) for a, b, w in zip(lo.tolist(), hi.tolist(), weight.tolist(), strict=True) if w >= min_link
    ]
    heapq.heapify(heap)
    merges = 0
    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if version[a] != va or version[b] != vb or label[a] != a or label[b] != b:
            continue  # stale: one side merged or changed since this entry was pushed
        # a < b: the merged cluster keeps the smaller name
        label[b] = a
        links_a, links_b = links[a], links[b]
        del links_a[b], links_b[a]
        for c, w in links_b.items():
            links_a[c] = links_a.get(c, 0.0) + w
            del links[c][b]
        links[b] = {}
        size[a] += size[b]
        version[a] += 1
        version[b] += 1
        merges += 1
        for c, w in links_a.items():
            links[c][a] = w
            avg = w / (size[a] * size[c])
            if avg >= min_link:
                x, y = (a, c) if a < c else (c, a)
                heapq.heappush(heap, (-avg, x, y, version[x], version[y]))
    # a node only ever points to a smaller code, so one ascending pass resolves every chain
    for i in range(n_nodes):
        label[i] = label[label[i]]
    cluster = np.asarray(label, dtype=np.int64)
    logger.debug("average link at %.3f: %d merges over %d nodes", min_link, merges, n_nodes)
    return cluster


def cluster_pairs(
    listing_id_l: IdArray,
    listing_id_r: IdArray,
    similarity: FloatArray,
    *,
    method: str = "components",
    min_link: float = 0.0,
    link_weight: FloatArray | None = None,
) -> ClusterResult:
    """Groups listings into duplicate groups of the pair graph.

    ``method="components"``: connected components. ``method="average"``: inside each
    component, average-link agglomerative clustering where a missing edge counts as 0: the two
    clusters with the highest average link (sum of their edge weights / (|A|*|B|)) merge while
    it is >= ``min_link``; ties go to the clusters with the smaller listing ids. Either way the
    groups are connected by their own edges, and each gets the weakest link of its maximum
    spanning tree (on ``similarity``): the similarity at which it would fall apart. Repeated
    pairs (in either direction) are one edge with their largest similarity and link weight;
    listings in no group (no pair, or left alone by ``average``) are not reported.

    Args:
        listing_id_l: [n_pairs] left listing ids (str, no nulls).
        listing_id_r: [n_pairs] right listing ids (str, no nulls).
        similarity: [n_pairs] finite pair similarities.
        method: ``"components"`` or ``"average"``.
        min_link: for ``"average"``, the smallest average link at which clusters merge (> 0);
            not used by ``"components"``.
        link_weight: [n_pairs] finite edge weights for ``"average"`` (e.g. the verifier's match
            probability); None uses ``similarity``. Not used by ``"components"``.

    Returns:
        ClusterResult with ``members`` and ``components`` tables (see
        :class:`ClusterResult`); numbering is deterministic, groups are ordered by their
        smallest listing_id. Empty input gives empty tables.

    Raises:
        ValueError: On length mismatch, nulls, non-str ids, non-finite similarities or link
            weights, self pairs (listing_id_l == listing_id_r), an unknown ``method`` or a
            ``min_link`` that is not finite (or not > 0 for ``"average"``).

    Examples:
        >>> result = cluster_pairs(["b", "c", "x"], ["a", "b", "y"], [0.9, 0.8, 0.95])
        >>> result.members.to_pydict()
        {'listing_id': ['a', 'b', 'c', 'x', 'y'], 'component': [0, 0, 0, 1, 1]}
        >>> result.components.column("weakest_similarity").to_pylist()
        [0.800000011920929, 0.949999988079071]
        >>> result.components.column("representative").to_pylist()
        ['a', 'x']
        >>> result.components.column("has_bridge").to_pylist()
        [True, True]
        >>> chain = cluster_pairs(["a", "b", "c"], ["b", "c", "d"], [0.9, 0.9, 0.9], method="average", min_link=0.5)
        >>> chain.members.to_pydict()
        {'listing_id': ['a', 'b', 'c', 'd'], 'component': [0, 0, 1, 1]}
    """
    link = _check_method(method, min_link)
    ids_l = as_id_array(listing_id_l, "listing_id_l")  # [n_pairs]
    ids_r = as_id_array(listing_id_r, "listing_id_r")  # [n_pairs]
    n_pairs = ids_l.shape[0]
    if ids_r.shape[0] != n_pairs:
        raise ValueError(
            f"listing_id_l has {n_pairs} ids but listing_id_r has {ids_r.shape[0]}; "
            "pass one left and one right id per pair"
        )
    sims = _as_similarity_array(similarity, n_pairs)  # [n_pairs] float64
    weights = sims if link_weight is None else _as_similarity_array(link_weight, n_pairs, "link_weight")
    if n_pairs == 0:
        return ClusterResult(MEMBERS_SCHEMA.empty_table(), COMPONENTS_SCHEMA.empty_table())

    # node codes in string order: node 0 is the smallest listing_id
    uniq, codes = np.unique(np.concatenate([ids_l, ids_r]), return_inverse=True)  # [n], [2*n_pairs]
    codes = codes.astype(np.int64)
    left, right = codes[:n_pairs], codes[n_pairs:]  # [n_pairs] each
    self_pairs = left == right
    if self_pairs.any():
        example = ids_l[np.flatnonzero(self_pairs)[0]]
        raise ValueError(
            f"{int(self_pairs.sum())} self pairs (listing_id_l == listing_id_r, e.g. {example!r}); "
            "drop them before clustering"
        )
    n_nodes = uniq.shape[0]

    # one edge per unordered pair, with its strongest similarity and link weight
    lo, hi, edge_of_row = _unique_edges(left, right, n_nodes)  # [m], [m], [n_pairs]
    edge_sim = np.full(lo.shape[0], -np.inf)
    np.maximum.at(edge_sim, edge_of_row, sims)
    if method == "average":
        edge_weight = np.full(lo.shape[0], -np.inf)
        np.maximum.at(edge_weight, edge_of_row, weights)
        cluster = _average_link(lo, hi, edge_weight, n_nodes, link)
        intra = cluster[lo] == cluster[hi]  # only a group's own edges define it from here on
        lo, hi, edge_sim = lo[intra], hi[intra], edge_sim[intra]
    if lo.shape[0] == 0:
        return ClusterResult(MEMBERS_SCHEMA.empty_table(), COMPONENTS_SCHEMA.empty_table())

    # Kruskal: strongest edges first; union-find with path halving + union by size
    order = np.lexsort((hi, lo, -edge_sim))  # ties by node codes, so input order plays no part
    parent = list(range(n_nodes))
    size = [1] * n_nodes
    weakest = [np.inf] * n_nodes  # per root: last (= smallest) merging edge
    for a, b, s in zip(lo[order].tolist(), hi[order].tolist(), edge_sim[order].tolist(), strict=True):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        if a == b:
            continue
        if size[a] < size[b]:
            a, b = b, a
        parent[b] = a
        size[a] += size[b]
        weakest[a] = s

    # only nodes on a remaining edge are in a group
    nodes = np.unique(np.concatenate([lo, hi]))  # [n_in] ascending = listing_id order
    roots = np.empty(nodes.shape[0], dtype=np.int64)  # [n_in]
    for k, i in enumerate(nodes.tolist()):
        r = i
        while parent[r] != r:
            r = parent[r]
        roots[k] = r

    # number groups by their smallest member (= first node code seen)
    comp_roots, first = np.unique(roots, return_index=True)  # [k], [k]
    by_first = np.argsort(first, kind="stable")  # [k]
    comp_roots, first = comp_roots[by_first], first[by_first]
    n_comp = comp_roots.shape[0]
    comp_of_root = np.empty(n_nodes, dtype=np.int64)
    comp_of_root[comp_roots] = np.arange(n_comp)
    component = comp_of_root[roots]  # [n_in]
    comp_of_node = np.full(n_nodes, -1, dtype=np.int64)
    comp_of_node[nodes] = component

    sizes = np.bincount(component, minlength=n_comp).astype(np.int64)  # [k]
    weakest_sim = np.asarray(weakest, dtype=np.float64)[comp_roots]  # [k]
    strongest_sim = np.full(n_comp, -np.inf)  # [k]
    edge_comp = comp_of_node[lo]  # [m]
    np.maximum.at(strongest_sim, edge_comp, edge_sim)
    has_bridge = np.zeros(n_comp, dtype=bool)  # [k]
    has_bridge[edge_comp[_bridges_of_simple_graph(lo, hi, n_nodes)]] = True

    member_order = np.lexsort((nodes, component))  # by (component, listing_id)
    members = pa.table(
        {
            "listing_id": pa.array(uniq[nodes[member_order]].tolist(), type=pa.string()),
            "component": pa.array(component[member_order], type=pa.int64()),
        },
        schema=MEMBERS_SCHEMA,
    )
    components = pa.table(
        {
            "component": pa.array(np.arange(n_comp, dtype=np.int64)),
            "size": pa.array(sizes),
            "weakest_similarity": pa.array(weakest_sim.astype(np.float32)),
            "strongest_similarity": pa.array(strongest_sim.astype(np.float32)),
            "representative": pa.array(uniq[nodes[first]].tolist(), type=pa.string()),
            "has_bridge": pa.array(has_bridge),
        },
        schema=COMPONENTS_SCHEMA,
    )
    logger.info(
        "cluster_pairs (%s): %d pairs over %d listings -> %d groups (largest %d, %d with a bridge)",
        method,
        n_pairs,
        n_nodes,
        n_comp,
        int(sizes.max()),
        int(has_bridge.sum()),
    )
    return ClusterResult(members=members, components=components)
