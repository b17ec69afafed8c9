"""Duplicate-listing search and grouping (pure numpy / faiss / pyarrow).

``DedupConfig`` is imported eagerly (plain dataclasses); search and grouping, which need faiss,
on first use, so reading a pipeline config does not load faiss.
"""

import importlib

from dedup.config import DedupConfig

_LAZY = {
    "ClusterResult": "dedup.cluster",
    "cluster_pairs": "dedup.cluster",
    "find_bridges": "dedup.cluster",
    "FoundPairs": "dedup.search",
    "find_pairs": "dedup.search",
    "find_pairs_by_id": "dedup.search",
    "IdAssignment": "dedup.lineage",
    "LineageEvent": "dedup.lineage",
    "PreviousGroup": "dedup.lineage",
    "assign_group_ids": "dedup.lineage",
    "make_new_group_id": "dedup.lineage",
}

__all__ = [
    "ClusterResult",
    "DedupConfig",
    "FoundPairs",
    "IdAssignment",
    "LineageEvent",
    "PreviousGroup",
    "assign_group_ids",
    "cluster_pairs",
    "find_bridges",
    "find_pairs",
    "find_pairs_by_id",
    "make_new_group_id",
]


def __getattr__(name: str):
    """Imports the faiss-backed parts of the package on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dedup' has no attribute {name!r}")
