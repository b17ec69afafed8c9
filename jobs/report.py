"""report: the run date's summary and review page, from the warehouse tables.

Writes ``{paths.reports_dir}/run_date=D/report.json`` (run metrics per stage, every supplier's
groups as of D with their members' titles and prices and the per-modality similarity of their
live pairs, also those found on earlier nights, and D's lineage events) and ``review.html`` (the
same groups with thumbnails, for the governance team; every listing field is HTML-escaped). The
folder is written beside the old one and swapped in, so a reader never sees half a report.

    spark-submit jobs/report.py --run-date 2024-03-01 --config conf/sspr.toml
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jobs.stage import StageContext, StageResult, run_stage
from schemas.images import THUMBNAIL_PX, thumbnail_jpeg
from schemas.tables import REVIEW_EXTRACT, TABLES

log = logging.getLogger(__name__)
STAGE = "report"
MAX_GROUPS_ON_PAGE = 500
HISTOGRAM_BINS = 50


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


def collect_report(ctx: StageContext, extract: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Builds the report dict (and member image bytes for thumbnails) of the run date.

    Args:
        ctx: the stage context (run metrics and lineage are read from the warehouse).
        extract: ``collect_review_extract``'s tables; the report's groups (the biggest
            ``MAX_GROUPS_ON_PAGE``), members and pairs come from them, so they are read once.

    Returns:
        ``(report, images)``: the JSON-able report and ``listing_id -> image bytes``.
    """
    from pyspark.sql import functions as F

    db, day = ctx.database, ctx.run_date
    table = lambda name: ctx.spark.table(f"{db}.{name}")
    metrics = {
        r["stage"]: {k: _clean(r[k]) for k in ("rows_in", "rows_out", "rows_quarantined", "rows_skipped", "seconds")}
        | {"details": json.loads(r["details"] or "{}")}
        for r in table("run_metrics").filter(F.col("run_date") == day).collect()
    }
    all_groups = extract["groups"].to_pylist()
    group_rows = sorted(all_groups, key=lambda g: (-g["size"], g["group_id"]))[:MAX_GROUPS_ON_PAGE]
    lineage = [
        r.asDict()
        for r in table("group_lineage")
        .filter(F.col("run_date") == day)
        .orderBy("supplier_id", "group_id", "event", "other_group_id")
        .drop("run_date")
        .collect()
    ]

    images: dict[str, bytes] = {}
    # the groups' fields as in the groups table (the extract's category is the app's)
    by_group: dict[str, dict[str, Any]] = {
        g["group_id"]: {k: _clean(v) for k, v in g.items() if k != "category"} | {"members": [], "pairs": []}
        for g in group_rows
    }
    members = [m for m in extract["members"].to_pylist() if m["group_id"] in by_group]
    for m in sorted(members, key=lambda r: r["listing_id"]):
        if m["image"] is not None:
            images[m["listing_id"]] = bytes(m["image"])
        by_group[m["group_id"]]["members"].append(
            {
                "listing_id": m["listing_id"],
                "title": m["title"],
                "brand": m["brand"],
                "price": _clean(m["price"]),
                "currency": m["currency"],
                "is_new": m["is_new"],
                "has_image": m["image"] is not None,
            }
        )
    pairs = [p for p in extract["pairs"].to_pylist() if p["group_id"] in by_group]
    for p in sorted(pairs, key=lambda r: (r["listing_id_l"], r["listing_id_r"])):
        by_group[p["group_id"]]["pairs"].append(
            {
                "listing_id_l": p["listing_id_l"],
                "listing_id_r": p["listing_id_r"],
                "found_on": p["found_on"],
                **{k: _clean(p[k]) for k in ("similarity_m", "similarity_t", "similarity_i", "match_score")},
            }
        )
    report = {
        "run_date": day,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "warehouse": {
            "database": db,
            "warehouse_dir": ctx.config.paths.warehouse_dir,
            "tables": [f"{db}.{name}" for name in TABLES],
        },
        "metrics": metrics,
        "groups_total": len(all_groups),
        "groups": list(by_group.values()),
        "lineage": lineage,
    }
    return report, images


def member_attributes(ctx: StageContext, members):
    """Returns the latest listing attributes (as of the run date) of the given group members."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("listing_id").orderBy(F.col("run_date").desc(), F.col("updated_at").desc())
    return (
        ctx.spark.table(f"{ctx.database}.listings")
        .filter(F.col("run_date") <= ctx.run_date)
        .join(members.select("listing_id").distinct(), on="listing_id", how="left_semi")
        .withColumn("_rank", F.row_number().over(latest))
        .filter("_rank = 1")
        .select("listing_id", "title", "brand", "price", "currency", "category", "image", "image_uri")
    )


def group_pairs(ctx: StageContext, members):
    """Returns every live pair of the run date inside one of the given members' groups (with
    ``group_id``), also those found on earlier nights."""
    from pyspark.sql import functions as F

    side = lambda name: members.select(F.col("listing_id").alias(name), "group_id")
    return (
        ctx.spark.table(f"{ctx.database}.live_pairs")
        .filter(F.col("run_date") == ctx.run_date)
        .join(side("listing_id_l"), on="listing_id_l")
        .join(side("listing_id_r"), on=["listing_id_r", "group_id"])
    )


def collect_review_extract(ctx: StageContext) -> dict[str, Any]:
    """Reads every group of the run date, its members' attributes and its pairs, for the review app.

    Returns:
        ``{"groups", "members", "pairs"}`` -> Arrow tables in a fixed row order (the
        ``schemas.tables.REVIEW_EXTRACT`` contracts), so a rerun writes the same files.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.warehouse import ensure_tables

    ensure_tables(ctx.spark, ctx.database)  # a report of an empty warehouse still has its tables
    day = ctx.run_date
    table = lambda name: ctx.spark.table(f"{ctx.database}.{name}").filter(F.col("run_date") == day).drop("run_date")
    members = table("group_members")
    members_full = members.join(member_attributes(ctx, members), on="listing_id", how="left")
    # a group's category: its members' most common one (ties: the first by name)
    top = Window.partitionBy("group_id").orderBy(F.col("count").desc(), F.col("category").asc_nulls_last())
    category = (
        members_full.groupBy("group_id", "category")
        .count()
        .withColumn("_rank", F.row_number().over(top))
        .filter("_rank = 1")
        .select("group_id", "category")
    )
    frames = {
        "groups": (table("groups").join(category, on="group_id", how="left"), ["supplier_id", "group_id"]),
        "members": (members_full, ["group_id", "listing_id"]),
        "pairs": (group_pairs(ctx, members), ["group_id", "listing_id_l", "listing_id_r"]),
    }
    return {name: frame.orderBy(*keys).toArrow() for name, (frame, keys) in frames.items()}


def similarity_histograms(ctx: StageContext, bins: int = HISTOGRAM_BINS) -> list[dict[str, Any]]:
    """Counts the run date's pairs in ``bins`` equal bins of [0, 1]: similarity_m, and the
    verifier's match probability when the pipeline has a verifier; each with its threshold."""
    from pyspark.sql import functions as F

    dedup = ctx.config.dedup
    scores = [("similarity_m", "dedup.min_similarity", dedup.min_similarity, "similarity_m (image + text)")]
    if dedup.verifier:
        scores.append(("match_score", "dedup.min_probability", dedup.min_probability, "verifier match probability"))
    pairs = ctx.spark.table(f"{ctx.database}.pairs").filter(F.col("run_date") == ctx.run_date)
    out = []
    for column, key, threshold, title in scores:
        binned = (
            pairs.filter(F.col(column).isNotNull())
            .select(F.least(F.greatest(F.floor(F.col(column) * bins), F.lit(0)), F.lit(bins - 1)).alias("bin"))
            .groupBy("bin")
            .count()
            .collect()
        )
        counts = [0] * bins
        for row in binned:
            counts[int(row["bin"])] = int(row["count"])
        out.append(
            {
                "title": f"{title} of the night's pairs",
                "column": column,
                "config_key": key,
                "threshold": threshold,
                "edges": [k / bins for k in range(bins + 1)],
                "counts": counts,
            }
        )
    return out


def make_thumbnail(data: bytes, size: int = THUMBNAIL_PX) -> str | None:
    """Returns a ``data:`` URI of a small JPEG thumbnail, or None if the bytes do not decode."""
    thumb = thumbnail_jpeg(data, size)
    return None if thumb is None else "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_review_page(report: dict[str, Any], images: dict[str, bytes]) -> str:
    """Renders the review page. Every value taken from a listing is HTML-escaped.

    Args:
        report: the output of ``collect_report``.
        images: listing_id -> image bytes, for thumbnails.

    Returns:
        A standalone HTML document.
    """
    e = lambda v: html.escape("" if v is None else str(v), quote=True)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Duplicate groups {e(report['run_date'])}</title>",
        (
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}.group{margin-bottom:2em}"
            "img{width:96px;height:96px;object-fit:contain;background:#f4f4f4}.new{color:#06c}</style>"
        ),
        "</head><body>",
        f"<h1>Duplicate groups for {e(report['run_date'])}</h1>",
        (
            f"<p>{e(report['groups_total'])} groups; showing {len(report['groups'])}. Warehouse database "
            f"<code>{e(report['warehouse']['database'])}</code>.</p>"
        ),
        (
            "<h2>Run metrics</h2><table><tr><th>stage</th><th>rows in</th><th>rows out</th>"
            "<th>quarantined</th><th>skipped</th><th>seconds</th></tr>"
        ),
    ]
    for stage, m in report["metrics"].items():
        parts.append(
            f"<tr><td>{e(stage)}</td><td>{e(m['rows_in'])}</td><td>{e(m['rows_out'])}</td>"
            f"<td>{e(m['rows_quarantined'])}</td><td>{e(m['rows_skipped'])}</td><td>{_fmt(m['seconds'])}</td></tr>"
        )
    parts.append("</table>")
    for group in report["groups"]:
        parts.append(
            f"<div class='group' id='{e(group['group_id'])}'><h3>Group {e(group['group_id'])} · supplier "
            f"{e(group['supplier_id'])} · {e(group['size'])} listings · since {e(group.get('created_on'))} · "
            f"weakest link {_fmt(group['weakest_similarity'])}"
            f"{' · held by a bridge' if group.get('has_bridge') else ''}</h3><table><tr><th></th><th>listing</th><th>title</th>"
            "<th>brand</th><th>price</th></tr>"
        )
        for member in group["members"]:
            thumb = make_thumbnail(images[member["listing_id"]]) if member["listing_id"] in images else None
            img = f"<img alt='' src='{thumb}'>" if thumb else "no image"
            new = " <span class='new'>new</span>" if member["is_new"] else ""
            price = "" if member["price"] is None else f"{member['price']:.2f} {member['currency'] or ''}"
            parts.append(
                f"<tr><td>{img}</td><td>{e(member['listing_id'])}{new}</td><td>{e(member['title'])}</td>"
                f"<td>{e(member['brand'])}</td><td>{e(price)}</td></tr>"
            )
        parts.append(
            "</table><table><tr><th>pair</th><th>match probability</th><th>similarity m</th><th>t</th><th>i</th></tr>"
        )
        for pair in group["pairs"]:
            parts.append(
                f"<tr><td>{e(pair['listing_id_l'])} ↔ {e(pair['listing_id_r'])}</td>"
                f"<td>{_fmt(pair.get('match_score'))}</td>"
                f"<td>{_fmt(pair['similarity_m'])}</td><td>{_fmt(pair['similarity_t'])}</td>"
                f"<td>{_fmt(pair['similarity_i'])}</td></tr>"
            )
        parts.append("</table></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_review_extract(folder: str | Path, tables: dict[str, Any]) -> None:
    """Writes a night's extract (``groups``, ``members``, ``pairs``) into ``{folder}/review/``.

    Each table is cast to its ``schemas.tables.REVIEW_EXTRACT`` contract first, so the review app
    (``review.runs``) never reads an extract that drifted from it.

    Raises:
        ValueError: a table is missing or does not fit its contract.
    """
    import pyarrow.parquet as pq

    out = Path(folder) / "review"
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in REVIEW_EXTRACT.items():
        if name not in tables:
            raise ValueError(f"the review extract needs a {name!r} table")
        table = tables[name]
        missing = [f.name for f in schema if f.name not in table.column_names]
        if missing:
            raise ValueError(f"review extract {name!r} lacks columns {missing}")
        pq.write_table(table.select(schema.names).cast(schema), out / f"{name}.parquet")


def publish_report(
    reports_dir: str, run_date: str, files: dict[str, str], extract: dict[str, Any] | None = None
) -> Path:
    """Writes the report files into ``{reports_dir}/run_date=D/``, replacing the old folder whole.

    Args:
        reports_dir: the reports root.
        run_date: the run date.
        files: file name -> text content.
        extract: the review app's tables (``collect_review_extract``), written under ``review/``.

    Returns:
        The published folder.
    """
    root = Path(reports_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"run_date={run_date}"
    staging = Path(tempfile.mkdtemp(prefix=f".run_date={run_date}.", dir=root))
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        if extract is not None:
            write_review_extract(staging, extract)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = root / f".old-run_date={run_date}.{os.getpid()}"
        final.rename(old)
    staging.chmod(0o755)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def run(ctx: StageContext) -> StageResult:
    """Builds and publishes the run date's report and review page."""
    extract = collect_review_extract(ctx)
    report, images = collect_report(ctx, extract)
    report["histograms"] = similarity_histograms(ctx)
    folder = publish_report(
        ctx.config.paths.reports_dir,
        ctx.run_date,
        {
            "report.json": json.dumps(report, indent=2, ensure_ascii=False),
            "review.html": render_review_page(report, images),
        },
        extract,
    )
    log.info(
        "report for %s: %d groups -> %s/review.html; review app extract: %d groups, %d members, %d pairs",
        ctx.run_date,
        report["groups_total"],
        folder,
        *(extract[name].num_rows for name in ("groups", "members", "pairs")),
    )
    return StageResult(
        rows_in=report["groups_total"], rows_out=len(report["groups"]), details={"report_dir": str(folder)}
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.report, not __main__, so Spark pickles this module's functions by reference
    # and their per-worker caches (models, suites) live as long as the Python worker.
    from jobs.report import main as _main

    sys.exit(_main())
