"""groups: connected components of each supplier's pair graph -> `groups` and `group_members`.

A group is a connected component of the run date's pairs within one supplier; its
``weakest_similarity`` is the weakest link (the smallest edge of its maximum spanning tree: raise the
threshold above it and the group splits). ``group_id`` is derived from the supplier and the group's
smallest listing id, so it is the same on every rerun. ``is_new`` marks members that arrived on the
run date (the others come from the supplier's catalogue). Both tables are checked before either is
written (every group has two or more members; a listing is in at most one group), so a failed check
leaves the previous ``groups`` and ``group_members`` partitions as they were.

    spark-submit jobs/groups.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd

from dedup.cluster import cluster_pairs, make_group_id
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import GROUP_MEMBERS, GROUP_ROWS, GROUPS, empty_frame, to_ddl

log = logging.getLogger(__name__)
STAGE = "groups"


def cluster_supplier_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """applyInPandas body: connected components of one supplier's pairs.

    Args:
        pairs: one supplier's rows of the ``pairs`` table.

    Returns:
        Rows of ``GROUP_ROWS``.
    """
    if pairs.empty:
        return empty_frame(GROUP_ROWS)
    supplier_id = str(pairs["supplier_id"].iloc[0])
    result = cluster_pairs(
        pairs["listing_id_l"].to_numpy(),
        pairs["listing_id_r"].to_numpy(),
        pairs["similarity_m"].to_numpy(np.float32),
    )
    members = result.members.to_pandas()
    components = result.components.to_pandas().set_index("component")
    joined = members.join(components, on="component")
    return pd.DataFrame(
        {
            "supplier_id": supplier_id,
            "group_id": [make_group_id(supplier_id, rep) for rep in joined["representative"]],
            "listing_id": joined["listing_id"],
            "size": joined["size"].astype("int64"),
            "weakest_similarity": joined["weakest_similarity"].astype("float32"),
            "strongest_similarity": joined["strongest_similarity"].astype("float32"),
            "representative": joined["representative"],
        },
        columns=GROUP_ROWS.names,
    )


def group_pairs(pairs, new_listing_ids, run_date: str):
    """Clusters pairs per supplier.

    Args:
        pairs: the run date's rows of the ``pairs`` table.
        new_listing_ids: a one-column (``listing_id``) DataFrame of the run date's listings.
        run_date: stamped on the output.

    Returns:
        ``(groups, members, rows)``: DataFrames matching the ``GROUPS`` and ``GROUP_MEMBERS``
        contracts, and the persisted clustering output both read (the caller unpersists it).
    """
    from pyspark.sql import functions as F

    rows = pairs.groupBy("supplier_id").applyInPandas(cluster_supplier_pairs, schema=to_ddl(GROUP_ROWS))
    rows = rows.withColumn("run_date", F.lit(run_date)).persist()
    groups = rows.select(*GROUPS.names).dropDuplicates(["supplier_id", "group_id"])
    flagged = new_listing_ids.distinct().withColumn("is_new", F.lit(True))
    members = (
        rows.join(flagged, on="listing_id", how="left")
        .withColumn("is_new", F.coalesce("is_new", F.lit(False)))
        .select(*GROUP_MEMBERS.names)
    )
    return groups, members, rows


def run(ctx: StageContext) -> StageResult:
    """Groups the run date's pairs and writes `groups` and `group_members`."""
    from pyspark.sql import functions as F

    from jobs.warehouse import ensure_tables, publish

    ensure_tables(ctx.spark, ctx.database, ["pairs", "embeddings"])
    pairs = ctx.spark.table(f"{ctx.database}.pairs").filter(F.col("run_date") == ctx.run_date)
    new_ids = (
        ctx.spark.table(f"{ctx.database}.embeddings").filter(F.col("run_date") == ctx.run_date).select("listing_id")
    )
    rows_in = pairs.count()
    groups, members, rows = group_pairs(pairs, new_ids, ctx.run_date)
    partition = {"run_date": ctx.run_date}
    try:
        written = publish(ctx.spark, {"groups": groups, "group_members": members}, ctx.database, partition)
        n_groups, n_members = written["groups"], written["group_members"]
        biggest = groups.agg(F.max("size")).first()[0]
    finally:
        rows.unpersist()
    return StageResult(
        rows_in=rows_in, rows_out=n_groups, details={"groups": n_groups, "members": n_members, "biggest_group": biggest}
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.groups, not __main__, so Spark pickles this module's functions by reference
    # and their per-worker caches (models, suites) live as long as the Python worker.
    from jobs.groups import main as _main

    sys.exit(_main())
