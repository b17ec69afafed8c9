"""The nights the review app shows: the report stage's published review extract of each run date.

The report stage (``jobs.report.write_review_extract``) writes ``{paths.reports_dir}/run_date=D/`` whole (``report.json`` plus
``review/groups.parquet``, ``members.parquet`` and ``pairs.parquet``: every group of D with its
members' attributes and image bytes and its live pairs' similarities) and swaps it in atomically,
so the app reads a consistent night without opening the metastore, which the nightly holds.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from review.store import group_version
from schemas.tables import REVIEW_EXTRACT

log = logging.getLogger(__name__)

_RUN_DIR = re.compile(r"^run_date=(\d{4}-\d{2}-\d{2})$")


class RunNotFound(LookupError):
    """The run date has no published review extract."""


@dataclass(frozen=True)
class Run:
    """One night's review extract.

    Attributes:
        run_date: the night.
        report: ``report.json`` (stage metrics, similarity histograms, thresholds, lineage).
        groups: one row per group, with ``version`` (the member digest) and ``category``.
        members: one row per (group, listing) with the listing's attributes and image bytes.
        pairs: the groups' live pairs with ``similarity_m/t/i`` and ``match_score``.
    """

    run_date: str
    report: dict
    groups: pd.DataFrame
    members: pd.DataFrame
    pairs: pd.DataFrame


def list_runs(reports_dir: str | Path) -> list[str]:
    """Returns the run dates with a review extract, newest first."""
    root = Path(reports_dir)
    if not root.is_dir():
        return []
    dates = [m.group(1) for p in root.iterdir() if (m := _RUN_DIR.match(p.name)) and (p / "review").is_dir()]
    return sorted(dates, reverse=True)


_CACHE: dict[tuple[str, str], tuple[float, Run]] = {}
_LOCK = threading.Lock()


def load_run(reports_dir: str | Path, run_date: str) -> Run:
    """Reads a night's extract, cached until the report stage republishes it.

    Raises:
        RunNotFound: when the night has no extract (the report stage has not run for it).
    """
    folder = Path(reports_dir) / f"run_date={run_date}"
    if not _RUN_DIR.match(folder.name) or not (folder / "review").is_dir():
        raise RunNotFound(f"no review extract for {run_date!r} under {reports_dir}: run the report stage for it")
    stamp = (folder / "report.json").stat().st_mtime
    key = (str(Path(reports_dir).resolve()), run_date)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached and cached[0] == stamp:
            return cached[1]
    frames = {name: pq.read_table(folder / "review" / f"{name}.parquet").to_pandas() for name in REVIEW_EXTRACT}
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    groups = frames["groups"]
    members = frames["members"]
    versions = members.groupby("group_id")["listing_id"].agg(lambda ids: group_version(ids))
    groups = groups.assign(version=groups["group_id"].map(versions).fillna(""))
    run = Run(run_date, report, groups, members, frames["pairs"])
    log.info("loaded review extract %s: %d groups, %d members", run_date, len(groups), len(members))
    with _LOCK:
        _CACHE[key] = (stamp, run)
    return run


@dataclass(frozen=True)
class GroupFilter:
    """What the group list shows; every field optional."""

    supplier: str = ""
    category: str = ""
    min_size: int | None = None
    max_size: int | None = None
    min_similarity: float | None = None  # on the group's weakest link
    max_similarity: float | None = None
    undecided_only: bool = False


def filter_groups(run: Run, wanted: GroupFilter, decided: set[str]) -> pd.DataFrame:
    """Returns the run's groups that pass the filter, largest then weakest-linked first.

    Args:
        run: the night.
        wanted: the filter.
        decided: group ids that have a whole-group decision on their current version.
    """
    g = run.groups
    keep = pd.Series(True, index=g.index)
    if wanted.supplier:
        keep &= g["supplier_id"] == wanted.supplier
    if wanted.category:
        keep &= g["category"] == wanted.category
    if wanted.min_size is not None:
        keep &= g["size"] >= wanted.min_size
    if wanted.max_size is not None:
        keep &= g["size"] <= wanted.max_size
    if wanted.min_similarity is not None:
        keep &= g["weakest_similarity"] >= wanted.min_similarity
    if wanted.max_similarity is not None:
        keep &= g["weakest_similarity"] <= wanted.max_similarity
    if wanted.undecided_only:
        keep &= ~g["group_id"].isin(decided)
    return g[keep].sort_values(["size", "weakest_similarity", "group_id"], ascending=[False, True, True])


def group_detail(run: Run, group_id: str) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """Returns (group row, its members, its pairs) for one group of the night.

    Raises:
        KeyError: when the night has no such group.
    """
    rows = run.groups[run.groups["group_id"] == group_id]
    if rows.empty:
        raise KeyError(group_id)
    members = run.members[run.members["group_id"] == group_id].sort_values("listing_id")
    pairs = run.pairs[run.pairs["group_id"] == group_id].sort_values(["listing_id_l", "listing_id_r"])
    return rows.iloc[0], members, pairs
