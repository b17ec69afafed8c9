"""sample_pairs: positive training pairs from click logs, category- and relevance-constrained.

The paper's sampler (docs/PAPER.md): a click from a trigger listing to another listing is a positive
pair only when both listings share a category (the first ``sampling.category_level`` levels of
their category path) and their titles are relevant to each other (zero-shot MiniLM cosine of the
titles >= ``sampling.min_relevance``; the relevance model has its own ``sampling.relevance_*`` keys,
whatever ``[encoder]`` says). Pairs are deduplicated (one per unordered pair, earliest
click kept) and capped per trigger (the ``sampling.max_pairs_per_trigger`` most relevant).

Every click is accounted for: read = kept + removed, with the removals counted per reason
(``self_click``, ``unknown_listing``, ``category_mismatch``, ``no_title``, ``low_relevance``,
``duplicate``, ``over_cap``) and logged.

Inputs: click-log Parquet with at least ``trigger_listing_id``, ``clicked_listing_id`` and
``event_time``; listings in the listings contract (``schemas.tables.LISTINGS``: ``listing_id``,
``title``, ``category``, ``updated_at``; the latest row per listing is used). Output: Parquet
``trigger_listing_id, clicked_listing_id, event_time, category, relevance``.

    python jobs/sample_pairs.py --clicks clicks/ --listings listings/ --out pairs/ --config conf/sspr.toml
"""

from __future__ import annotations

import json
import logging
import sys
import time

from config.command import command_parser, run_command
from config.errors import DedupError
from config.sections import SamplingConfig
from encoder.config import EncoderConfig

log = logging.getLogger(__name__)

CLICK_COLUMNS = ("trigger_listing_id", "clicked_listing_id", "event_time")
REMOVAL_REASONS = (
    "self_click",
    "unknown_listing",
    "category_mismatch",
    "no_title",
    "low_relevance",
    "duplicate",
    "over_cap",
)
PAIR_COLUMNS = ("trigger_listing_id", "clicked_listing_id", "event_time", "category", "relevance")
RELEVANCE_DDL = "pair_key STRING, relevance FLOAT"


def title_relevance(batches, encoder_config: EncoderConfig):
    """mapInPandas body: zero-shot cosine similarity of two titles per row.

    Args:
        batches: pandas frames with ``pair_key``, ``trigger_title``, ``clicked_title``.
        encoder_config: the relevance model (``SamplingConfig.relevance_encoder()``).

    Yields:
        Frames of ``RELEVANCE_DDL``.
    """
    import numpy as np
    import pandas as pd

    from jobs.embed import get_encoder

    encoder = get_encoder(encoder_config)
    for frame in batches:
        if frame.empty:
            continue
        left = encoder.encode(frame["trigger_title"].tolist(), [None] * len(frame)).t
        right = encoder.encode(frame["clicked_title"].tolist(), [None] * len(frame)).t
        yield pd.DataFrame(
            {
                "pair_key": frame["pair_key"].to_numpy(),
                "relevance": np.einsum("nd,nd->n", left, right).astype(np.float32),
            }
        )


def _category_prefix(column, level: int, separator: str):
    """Spark expression: the first ``level`` levels of a category path, normalised; null if short."""
    from pyspark.sql import functions as F

    parts = F.transform(F.split(F.coalesce(column, F.lit("")), _regex_quote(separator)), lambda p: F.lower(F.trim(p)))
    parts = F.filter(parts, lambda p: p != "")
    return F.when(F.size(parts) >= level, F.array_join(F.slice(parts, 1, level), " > "))


def _regex_quote(text: str) -> str:
    """Escapes a literal separator for Spark's regex split."""
    import re

    return re.escape(text)


def sample_pairs(clicks, listings, sampling: SamplingConfig):
    """Filters clicks into positive pairs and counts what each constraint removed.

    Args:
        clicks: a Spark DataFrame with ``CLICK_COLUMNS``.
        listings: a Spark DataFrame with ``listing_id``, ``title``, ``category``, ``updated_at``.
        sampling: the constraints and the relevance model (``[sampling]``).

    Returns:
        ``(pairs, counts)``: a DataFrame of ``PAIR_COLUMNS`` and a dict with ``read``, ``kept``
        and one count per ``REMOVAL_REASONS`` entry (read = kept + all removals).

    Raises:
        DedupError: when a required column is missing.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    missing = [c for c in CLICK_COLUMNS if c not in clicks.columns]
    missing += [f"listings.{c}" for c in ("listing_id", "title", "category", "updated_at") if c not in listings.columns]
    if missing:
        raise DedupError(
            f"sample_pairs inputs lack columns {missing}; click logs need "
            f"{list(CLICK_COLUMNS)}, listings the listings contract"
        )
    counts: dict[str, int] = {}
    level, separator = sampling.category_level, sampling.category_separator

    frame = clicks.select(*CLICK_COLUMNS).persist()
    counts["read"] = frame.count()

    def keep(condition, reason: str, current):
        kept = current.filter(condition).persist()
        counts[reason] = current.count() - kept.count()
        current.unpersist()
        return kept

    def keep_ranked(window, top: int, reason: str, current):
        # window functions cannot sit in a filter: rank first, keep the top rows, drop the rank
        ranked = current.withColumn("_rank", F.row_number().over(window))
        kept = keep(F.col("_rank") <= top, reason, ranked).drop("_rank")
        current.unpersist()
        return kept

    frame = keep(F.col("trigger_listing_id") != F.col("clicked_listing_id"), "self_click", frame)

    latest = Window.partitionBy("listing_id").orderBy(F.col("updated_at").desc_nulls_last())
    listed = (
        listings.withColumn("_n", F.row_number().over(latest))
        .filter("_n = 1")
        .select("listing_id", "title", _category_prefix(F.col("category"), level, separator).alias("category_prefix"))
    )
    side = {}
    for name, column in (("trigger", "trigger_listing_id"), ("clicked", "clicked_listing_id")):
        side[name] = listed.select(
            F.col("listing_id").alias(column),
            F.col("title").alias(f"{name}_title"),
            F.col("category_prefix").alias(f"{name}_category"),
            F.lit(True).alias(f"{name}_known"),
        )
    joined = (
        frame.join(side["trigger"], "trigger_listing_id", "left")
        .join(side["clicked"], "clicked_listing_id", "left")
        .persist()
    )
    frame.unpersist()
    frame = keep(F.col("trigger_known") & F.col("clicked_known"), "unknown_listing", joined)

    same_category = (
        F.lit(True)
        if level == 0
        else F.col("trigger_category").isNotNull() & (F.col("trigger_category") == F.col("clicked_category"))
    )
    frame = keep(same_category, "category_mismatch", frame)
    has_titles = (F.length(F.trim(F.coalesce("trigger_title", F.lit("")))) > 0) & (
        F.length(F.trim(F.coalesce("clicked_title", F.lit("")))) > 0
    )
    frame = keep(has_titles, "no_title", frame)

    keyed = frame.withColumn(
        "pair_key",
        F.concat_ws(
            "\u0000",
            "trigger_listing_id",
            "clicked_listing_id",
            F.col("event_time").cast("string"),
            F.monotonically_increasing_id().cast("string"),
        ),
    ).persist()
    frame.unpersist()
    relevance_model = sampling.relevance_encoder()
    relevance = keyed.select("pair_key", "trigger_title", "clicked_title").mapInPandas(
        lambda batches: title_relevance(batches, relevance_model), schema=RELEVANCE_DDL
    )
    scored = keyed.join(relevance, "pair_key").persist()
    keyed.unpersist()
    frame = keep(F.col("relevance") >= F.lit(sampling.min_relevance), "low_relevance", scored)

    low = F.least("trigger_listing_id", "clicked_listing_id")
    high = F.greatest("trigger_listing_id", "clicked_listing_id")
    first_click = Window.partitionBy(low, high).orderBy("event_time", "trigger_listing_id")
    frame = keep_ranked(first_click, 1, "duplicate", frame)

    best = Window.partitionBy("trigger_listing_id").orderBy(F.col("relevance").desc(), "clicked_listing_id")
    frame = keep_ranked(best, sampling.max_pairs_per_trigger, "over_cap", frame)

    pairs = frame.select(
        "trigger_listing_id",
        "clicked_listing_id",
        "event_time",
        F.col("trigger_category").alias("category"),
        "relevance",
    )
    counts["kept"] = pairs.count()
    removed = sum(counts[r] for r in REMOVAL_REASONS)
    if counts["kept"] + removed != counts["read"]:
        raise DedupError(f"click accounting broken: {counts}")
    return pairs, counts


def main(argv: list[str] | None = None) -> int:
    """Command line: reads clicks and listings, writes the positive pairs, logs the counts.

    Returns:
        0 on success, 2 on a known problem (message logged), 1 on a crash.
    """
    parser = command_parser("jobs/sample_pairs.py", __doc__)
    parser.add_argument("--clicks", required=True, help="click-log Parquet file or folder")
    parser.add_argument("--listings", required=True, help="listings Parquet (listings contract), file or folder")
    parser.add_argument("--out", required=True, help="output Parquet folder (replaced)")
    return run_command("sample_pairs", _run, argv, parser, log)


def _run(args, config) -> int:
    from jobs.spark import build_spark, hold_metastore_lock

    started = time.monotonic()
    hold_metastore_lock(config)  # the session opens the warehouse's metastore too
    spark = build_spark(config, "sspr-sample-pairs")
    clicks = spark.read.parquet(args.clicks)
    listings = spark.read.parquet(args.listings)
    pairs, counts = sample_pairs(clicks, listings, config.sampling)
    pairs.write.mode("overwrite").parquet(args.out)
    log.info("sample_pairs: %s in %.1fs -> %s", json.dumps(counts), time.monotonic() - started, args.out)
    return 0


if __name__ == "__main__":
    # Run as jobs.sample_pairs, not __main__, so Spark pickles its functions by reference.
    from jobs.sample_pairs import main as _main

    sys.exit(_main())
