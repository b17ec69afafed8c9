"""Duplicate groups from similarity pairs: connected components with weakest links.

Pairs (edges) are processed in Kruskal order (similarity descending) with a
union-find, which yields the connected components and, per component, its
maximum spanning tree. The smallest similarity on that tree is the component's
*weakest link*: raising the threshold above it would split the component.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dedup.ids import as_id_array

logger = logging.getLogger(__name__)

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
    ]
)


@dataclass(frozen=True)
class ClusterResult:
    """Connected components of a pair graph.

    Attributes:
        members: One row per listing that occurs in a pair, columns
            ``listing_id: string, component: int64``, sorted by (component,
            listing_id). Components are numbered 0..k-1 in order of their
            smallest listing_id.
        components: One row per component, sorted by ``component``, columns
            ``component: int64, size: int64, weakest_similarity: float32``
            (smallest edge on the maximum spanning tree),
            ``strongest_similarity: float32`` (largest edge) and
            ``representative: string`` (smallest listing_id).
    """

    members: pa.Table
    components: pa.Table


def _as_similarity_array(values: Any, n: int) -> np.ndarray:
    """Returns similarities as float64 [n], or raises ValueError."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if values.null_count:
            raise ValueError(f"similarity contains {values.null_count} nulls; drop those pairs first")
        values = values.to_numpy()
    try:
        sims = np.asarray(values, dtype=np.float64)  # [n]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"similarity must be numeric; cast it to float first ({exc})") from exc
    if sims.ndim != 1 or sims.shape[0] != n:
        raise ValueError(f"similarity must be 1-D with one value per pair ({n}), got shape {sims.shape}")
    if not np.isfinite(sims).all():
        raise ValueError("similarity contains NaN or infinite values; drop those pairs first")
    return sims


def cluster_pairs(
    listing_id_l: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray,
    listing_id_r: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray,
    similarity: Sequence[float] | np.ndarray | pa.Array | pa.ChunkedArray,
) -> ClusterResult:
    """Groups listings into connected components of the pair graph.

    Union-find over the edges in Kruskal order (similarity descending), so each
    component also gets the weakest link of its maximum spanning tree: the
    similarity at which it would fall apart. Repeated pairs (in either
    direction) are allowed; listings that appear in no pair are not reported.

    Args:
        listing_id_l: [n_pairs] left listing ids (str, no nulls).
        listing_id_r: [n_pairs] right listing ids (str, no nulls).
        similarity: [n_pairs] finite pair similarities.

    Returns:
        ClusterResult with ``members`` and ``components`` tables (see
        :class:`ClusterResult`); numbering is deterministic, components are
        ordered by their smallest listing_id. Empty input gives empty tables.

    Raises:
        ValueError: On length mismatch, nulls, non-str ids, non-finite
            similarities or self pairs (listing_id_l == listing_id_r).

    Examples:
        >>> result = cluster_pairs(["b", "c", "x"], ["a", "b", "y"], [0.9, 0.8, 0.95])
        >>> result.members.to_pydict()
        {'listing_id': ['a', 'b', 'c', 'x', 'y'], 'component': [0, 0, 0, 1, 1]}
        >>> result.components.column("weakest_similarity").to_pylist()
        [0.800000011920929, 0.949999988079071]
        >>> result.components.column("representative").to_pylist()
        ['a', 'x']
    """
    ids_l = as_id_array(listing_id_l, "listing_id_l")  # [n_pairs]
    ids_r = as_id_array(listing_id_r, "listing_id_r")  # [n_pairs]
    n_pairs = ids_l.shape[0]
    if ids_r.shape[0] != n_pairs:
        raise ValueError(
            f"listing_id_l has {n_pairs} ids but listing_id_r has {ids_r.shape[0]}; "
            "pass one left and one right id per pair"
        )
    sims = _as_similarity_array(similarity, n_pairs)  # [n_pairs] float64
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

    # Kruskal: strongest edges first; union-find with path halving + union by size
    order = np.argsort(-sims, kind="stable")  # [n_pairs]
    parent = list(range(n_nodes))
    size = [1] * n_nodes
    weakest = [np.inf] * n_nodes  # per root: last (= smallest) merging edge
    for a, b, s in zip(left[order].tolist(), right[order].tolist(), sims[order].tolist(), strict=True):
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

    roots = np.empty(n_nodes, dtype=np.int64)  # [n]
    for i in range(n_nodes):
        r = i
        while parent[r] != r:
            r = parent[r]
        roots[i] = r

    # number components by their smallest member (= first node code seen)
    comp_roots, first_node = np.unique(roots, return_index=True)  # [k], [k]
    by_first = np.argsort(first_node, kind="stable")  # [k]
    comp_roots, first_node = comp_roots[by_first], first_node[by_first]
    n_comp = comp_roots.shape[0]
    comp_of_root = np.empty(n_nodes, dtype=np.int64)
    comp_of_root[comp_roots] = np.arange(n_comp)
    component = comp_of_root[roots]  # [n]

    sizes = np.bincount(component, minlength=n_comp).astype(np.int64)  # [k]
    weakest_sim = np.asarray(weakest, dtype=np.float64)[comp_roots]  # [k]
    strongest_sim = np.full(n_comp, -np.inf)  # [k]
    np.maximum.at(strongest_sim, component[left], sims)

    member_order = np.lexsort((np.arange(n_nodes), component))  # by (component, listing_id)
    members = pa.table(
        {
            "listing_id": pa.array(uniq[member_order].tolist(), type=pa.string()),
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
            "representative": pa.array(uniq[first_node].tolist(), type=pa.string()),
        },
        schema=COMPONENTS_SCHEMA,
    )
    logger.info(
        "cluster_pairs: %d pairs over %d listings -> %d components (largest %d)",
        n_pairs,
        n_nodes,
        n_comp,
        int(sizes.max()),
    )
    return ClusterResult(members=members, components=components)


def make_group_id(supplier_id: str, representative: str) -> str:
    """Returns a deterministic id for a duplicate group of one supplier.

    ``"g-"`` followed by the first 16 hex digits of
    ``sha256(f"{supplier_id}\\x1f{representative}")``. The id is stable while
    the group's smallest member id (its representative) is unchanged; it
    changes when that member leaves or a smaller id joins. (Lineage-aware
    stable ids are planned separately.)

    Args:
        supplier_id: Supplier the group belongs to (non-empty, no ``\\x1f``).
        representative: Smallest listing_id of the group (non-empty, no ``\\x1f``).

    Returns:
        The group id, e.g. ``"g-1a2b3c4d5e6f7a8b"`` (18 characters).

    Raises:
        ValueError: If an argument is not a non-empty str or contains the
            unit separator ``\\x1f``.

    Examples:
        >>> make_group_id("s1", "a") == make_group_id("s1", "a")
        True
        >>> make_group_id("s1", "a") != make_group_id("s2", "a")
        True
        >>> len(make_group_id("s1", "a"))
        18
    """
    for name, value in (("supplier_id", supplier_id), ("representative", representative)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str, got {value!r}")
        if "\x1f" in value:
            raise ValueError(f"{name} must not contain the unit separator '\\x1f', got {value!r}")
    digest = hashlib.sha256(f"{supplier_id}\x1f{representative}".encode()).hexdigest()
    return "g-" + digest[:16]
