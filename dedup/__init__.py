"""Duplicate-listing search and grouping (pure numpy / faiss / pyarrow)."""

from dedup.cluster import ClusterResult, cluster_pairs, make_group_id
from dedup.search import FoundPairs, find_pairs, find_pairs_by_id

__all__ = [
    "ClusterResult",
    "FoundPairs",
    "cluster_pairs",
    "find_pairs",
    "find_pairs_by_id",
    "make_group_id",
]
