"""groups: each supplier's duplicate groups as of the run date, over its live pair graph.

Reads the run date's ``live_pairs`` (every pair whose two listings still have the vectors it was
found with, not only the day's pairs) and writes ``groups``, ``group_members`` and
``group_lineage`` for D: the complete groups of every supplier as of D.

* Grouping (``dedup.grouping``): ``components`` (connected components of the pair graph) or
  ``average`` (average-link within each component, a missing link counting 0, merging while the
  average link reaches ``dedup.min_group_link``: resists chaining). Links are the verifier's match
  probabilities where pairs have them, else ``similarity_m``. ``weakest_similarity`` is the weakest
  link on the group's maximum spanning tree; ``has_bridge`` flags a group that one edge holds
  together.
* Ids (``dedup.lineage.assign_group_ids``): a group that grows or shrinks keeps its id; a merge
  keeps the oldest; a split keeps the id on the part holding the group's oldest member. Ids of new
  groups are a hash of supplier, run date and members, so they never depend on Spark partitioning
  or row order; ``group_lineage`` records every new / merge / split / gone event against the
  previous night's groups.
* ``is_new`` marks members embedded on the run date (new or changed listings); ``first_seen`` the
  run date each entered the catalogue.

All three tables are checked before any is written (every group has two or more members; a
listing is in at most one group), so a failed check leaves the previous partitions as they were.

    spark-submit jobs/groups.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd

from config.errors import DedupError
from dedup.config import DedupConfig
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import (
    GROUP_INPUT_ROWS,
    GROUP_LINEAGE,
    GROUP_MEMBERS,
    GROUP_ROWS,
    GROUPS,
    empty_frame,
    to_ddl,
    to_ddl_type,
)

log = logging.getLogger(__name__)
STAGE = "groups"


def group_supplier(rows: pd.DataFrame, dedup_config: DedupConfig, run_date: str) -> pd.DataFrame:
    """applyInPandas body: one supplier's groups as of the run date, with stable ids and lineage.

    Args:
        rows: the supplier's ``GROUP_INPUT_ROWS`` (its live pairs, its catalogue listings' first
            run dates, its previous night's group members).
        dedup_config: ``grouping`` / ``min_group_link``.
        run_date: D (ids of new groups hash it).

    Returns:
        Rows of ``GROUP_ROWS``: "member" rows, then "lineage" rows.
    """
    from dedup.cluster import cluster_pairs
    from dedup.lineage import PreviousGroup, assign_group_ids

    if rows.empty:
        return empty_frame(GROUP_ROWS)
    supplier_id = str(rows["supplier_id"].iloc[0])
    edges = rows[rows["kind"] == "edge"]
    nodes = rows[rows["kind"] == "node"]
    previous_rows = rows[rows["kind"] == "previous"]
    first_seen = dict(zip(previous_rows["listing_id"], previous_rows["first_seen"], strict=True))
    first_seen.update(zip(nodes["listing_id"], nodes["first_seen"], strict=True))
    previous = [
        PreviousGroup(group_id, str(part["created_on"].iloc[0]), frozenset(part["listing_id"]))
        for group_id, part in previous_rows.groupby("group_id", sort=True)
    ]
    members = components = None
    component_members: list[list[str]] = []
    if not edges.empty:
        scores = edges["match_score"].to_numpy(np.float64)
        link_weight = None if np.isnan(scores).any() else scores
        result = cluster_pairs(
            edges["listing_id_l"].to_numpy(),
            edges["listing_id_r"].to_numpy(),
            edges["similarity_m"].to_numpy(np.float64),
            method=dedup_config.grouping,
            min_link=dedup_config.min_group_link,
            link_weight=link_weight,
        )
        members = result.members.to_pandas()
        components = result.components.to_pandas().set_index("component")
        component_members = [list(g) for _, g in members.groupby("component", sort=True)["listing_id"]]
    try:
        assignment = assign_group_ids(previous, component_members, first_seen, supplier_id, run_date)
    except ValueError as error:
        raise DedupError(f"supplier {supplier_id}: cannot assign group ids: {error}") from None
    out = [empty_frame(GROUP_ROWS)]
    if members is not None and len(members):
        group_of = pd.Series(assignment.group_ids, index=components.index[: len(assignment.group_ids)])
        created = pd.Series(assignment.created_on, index=group_of.index)
        joined = members.join(components, on="component")
        out.append(
            pd.DataFrame(
                {
                    "kind": "member",
                    "supplier_id": supplier_id,
                    "group_id": group_of.loc[joined["component"]].to_numpy(),
                    "size": joined["size"].astype("int64").to_numpy(),
                    "weakest_similarity": joined["weakest_similarity"].astype("float32").to_numpy(),
                    "strongest_similarity": joined["strongest_similarity"].astype("float32").to_numpy(),
                    "representative": joined["representative"].to_numpy(),
                    "has_bridge": joined["has_bridge"].astype(bool).to_numpy(),
                    "created_on": created.loc[joined["component"]].to_numpy(),
                    "listing_id": joined["listing_id"].to_numpy(),
                    "first_seen": [first_seen.get(i) for i in joined["listing_id"]],
                },
                columns=GROUP_ROWS.names,
            )
        )
    if assignment.lineage:
        out.append(
            pd.DataFrame(
                {
                    "kind": "lineage",
                    "supplier_id": supplier_id,
                    "group_id": [e.group_id for e in assignment.lineage],
                    "event": [e.event for e in assignment.lineage],
                    "other_group_id": pd.Series([e.other_group_id for e in assignment.lineage], dtype=object),
                },
                columns=GROUP_ROWS.names,
            )
        )
    frame = pd.concat([f for f in out if len(f)] or out[:1], ignore_index=True)
    frame["size"] = frame["size"].astype("Int64")
    frame["has_bridge"] = frame["has_bridge"].astype("boolean")
    return frame


def group_inputs(live_pairs, catalogue, previous_members, previous_groups):
    """Stacks the groups stage's inputs into ``GROUP_INPUT_ROWS`` (one frame per supplier later).

    Args:
        live_pairs: the run date's ``live_pairs`` rows.
        catalogue: the run date's ``catalog`` rows (``first_seen`` of the pairs' listings).
        previous_members: the previous night's ``group_members`` rows (empty on the first night).
        previous_groups: the previous night's ``groups`` rows (their ``created_on``).

    Returns:
        A DataFrame of ``GROUP_INPUT_ROWS``.
    """
    from pyspark.sql import functions as F

    def typed(frame, kind: str):
        present = set(frame.columns)
        columns = [F.lit(kind).alias("kind")]
        for f in list(GROUP_INPUT_ROWS)[1:]:
            value = F.col(f.name) if f.name in present else F.lit(None)
            columns.append(value.cast(to_ddl_type(f.type)).alias(f.name))
        return frame.select(*columns)

    edges = live_pairs.select("supplier_id", "listing_id_l", "listing_id_r", "similarity_m", "match_score")
    ends = edges.select(F.col("listing_id_l").alias("listing_id")).union(edges.select("listing_id_r")).distinct()
    nodes = catalogue.select("supplier_id", "listing_id", "first_seen").join(ends, on="listing_id", how="left_semi")
    previous = previous_members.select("supplier_id", "group_id", "listing_id", "first_seen").join(
        previous_groups.select("supplier_id", "group_id", "created_on"), on=["supplier_id", "group_id"], how="left"
    )
    return typed(edges, "edge").unionByName(typed(nodes, "node")).unionByName(typed(previous, "previous"))


def group_catalogue(inputs, touched_ids, dedup_config: DedupConfig, run_date: str):
    """Groups every supplier's live pair graph.

    Args:
        inputs: ``group_inputs(...)``.
        touched_ids: a one-column (``listing_id``) DataFrame of the listings embedded on the run date.
        dedup_config: the grouping settings.
        run_date: stamped on the output.

    Returns:
        ``(groups, members, lineage, rows)``: DataFrames of the ``GROUPS``, ``GROUP_MEMBERS`` and
        ``GROUP_LINEAGE`` contracts, and the persisted clustering output they read (the caller
        unpersists it).
    """
    from pyspark.sql import functions as F

    rows = inputs.groupBy("supplier_id").applyInPandas(
        lambda frame: group_supplier(frame, dedup_config, run_date), schema=to_ddl(GROUP_ROWS)
    )
    rows = rows.withColumn("run_date", F.lit(run_date)).persist()
    member_rows = rows.filter("kind = 'member'")
    groups = member_rows.select(*GROUPS.names).dropDuplicates(["supplier_id", "group_id"])
    flagged = touched_ids.distinct().withColumn("is_new", F.lit(True))
    members = (
        member_rows.join(flagged, on="listing_id", how="left")
        .withColumn("is_new", F.coalesce("is_new", F.lit(False)))
        .select(*GROUP_MEMBERS.names)
    )
    lineage = rows.filter("kind = 'lineage'").select(*GROUP_LINEAGE.names)
    return groups, members, lineage, rows


def run(ctx: StageContext) -> StageResult:
    """Groups the run date's live pair graph; writes `groups`, `group_members` and `group_lineage`."""
    from pyspark.sql import functions as F

    from jobs.warehouse import ensure_tables, previous_night, publish

    db, day = ctx.database, ctx.run_date
    ensure_tables(ctx.spark, db, ["live_pairs", "catalog", "embeddings", "groups", "group_members", "group_lineage"])
    previous = previous_night(ctx.spark, db, STAGE, day, "pairs", "tonight's ids cannot follow its groups")
    table = lambda name: ctx.spark.table(f"{db}.{name}")
    live = table("live_pairs").filter(F.col("run_date") == day)
    catalogue = table("catalog").filter(F.col("run_date") == day)
    on_previous = F.col("run_date") == (previous or "")
    inputs = group_inputs(
        live, catalogue, table("group_members").filter(on_previous), table("groups").filter(on_previous)
    )
    touched = table("embeddings").filter(F.col("run_date") == day).select("listing_id")
    rows_in = live.count()
    groups, members, lineage, rows = group_catalogue(inputs, touched, ctx.config.dedup, day)
    try:
        written = publish(
            ctx.spark, {"groups": groups, "group_members": members, "group_lineage": lineage}, db, {"run_date": day}
        )
        biggest = groups.agg(F.max("size")).first()[0]
        events = {r["event"]: int(r["count"]) for r in lineage.groupBy("event").count().collect()}
        bridged = groups.filter("has_bridge").count()
    finally:
        rows.unpersist()
    return StageResult(
        rows_in=rows_in,
        rows_out=written["groups"],
        details={
            "groups": written["groups"],
            "members": written["group_members"],
            "biggest_group": biggest,
            "with_bridge": bridged,
            "lineage": events,
            "previous_night": previous,
            "grouping": ctx.config.dedup.grouping,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.groups, not __main__, so Spark pickles this module's functions by reference
    # and their per-worker caches (models, suites) live as long as the Python worker.
    from jobs.groups import main as _main

    sys.exit(_main())
