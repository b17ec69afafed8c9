"""Settings of pair search and grouping (``[dedup]`` of the pipeline config).

A frozen dataclass of plain values, so a stage can hand it to Spark functions as it is. Imports
nothing heavy: reading a config does not load faiss.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DedupConfig:
    """Pair search and grouping."""

    # similarity_m at or above which two listings are candidates (with a verifier) or a pair
    # (without one: dedup.verifier = "")
    min_similarity: float = 0.88
    # where min_similarity came from (a calibration run, or why it was set by hand); it is
    # written with the resolved config of every stage, so each run's threshold has provenance
    min_similarity_source: str = ""
    # the pair verifier (dedup.verifier, `python -m training.fit_verifier`): a JSON model file
    # scoring each candidate's match probability; "" = pairs are the candidates themselves
    verifier: str = ""
    min_probability: float = 0.5  # a candidate is a pair when its verified probability reaches it
    min_probability_source: str = ""  # provenance of min_probability, like min_similarity_source
    max_results_per_query: int = 50  # per-query budget; more hits are cut and flagged saturated
    query_block_size: int = 2048  # queries per pair-search task (splits giant suppliers)
    # catalogue rows per pair-search task: a supplier with a bigger catalogue is searched as
    # (query block x catalogue block) tasks whose per-query results are merged exactly
    catalogue_block_size: int = 20000
    # groups over the live pair graph: "components" (connected components) or "average"
    # (average-link within each component, missing links count 0: resists chaining)
    grouping: str = "components"
    min_group_link: float = 0.5  # "average": merge two clusters while their average link reaches it
    backend: str = "faiss"  # "faiss" (IndexFlatIP range search) or "blocked" (matmul; GPU path)
    device: str = "cpu"  # device for the "blocked" backend: "cpu" or "cuda[:N]"

    def __post_init__(self) -> None:
        problems = []
        if not -1.0 <= self.min_similarity <= 1.0:
            problems.append(f"dedup.min_similarity={self.min_similarity} must be in [-1, 1]")
        if not 0.0 <= self.min_probability <= 1.0:
            problems.append(f"dedup.min_probability={self.min_probability} must be in [0, 1]")
        if self.max_results_per_query < 1:
            problems.append("dedup.max_results_per_query must be >= 1")
        if self.query_block_size < 1:
            problems.append("dedup.query_block_size must be >= 1")
        if self.catalogue_block_size < 1:
            problems.append("dedup.catalogue_block_size must be >= 1")
        if self.grouping not in ("components", "average"):
            problems.append(f"dedup.grouping={self.grouping!r} must be 'components' or 'average'")
        if not 0.0 <= self.min_group_link <= 1.0:
            problems.append(f"dedup.min_group_link={self.min_group_link} must be in [0, 1]")
        if self.backend not in ("faiss", "blocked"):
            problems.append(f"dedup.backend={self.backend!r} must be 'faiss' or 'blocked'")
        if problems:
            raise ValueError("; ".join(problems))
