"""The click-log sampler: each constraint removes exactly the clicks it should, all are counted.

Hand-made click logs (synthetic on purpose: they test the logic, not quality) and the real
zero-shot MiniLM for relevance.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from config import SamplingConfig, load_config
from config.errors import DedupError
from jobs.sample_pairs import REMOVAL_REASONS, main, sample_pairs

pytestmark = pytest.mark.spark

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)

LISTINGS = [
    # listing_id, title, category, updated_at (hours after T0)
    ("A", "apple iphone 12 64gb black", "Grocery > Dairy", 0),  # superseded by the next row
    ("A", "apple iphone 12 64gb black", "Electronics > Phones > Smartphones", 5),
    ("B", "apple iphone 12 64 gb black smartphone", "Electronics > Phones", 1),
    ("C", "usb charging cable 2m", "Electronics > Cables", 1),  # same level-1 category, irrelevant
    ("D", "organic oat milk 1l", "Grocery > Dairy", 1),
    ("E", "   ", "Electronics > Phones", 1),  # blank title
    ("F", "apple iphone 12 black", None, 1),  # no category
    ("G", "apple iphone 12 black 64gb unlocked", "electronics>phones", 1),  # relevance 0.84
    ("H", "iphone 12 black 64 gb apple", "Electronics", 1),  # relevance 0.95
]
CLICKS = [
    # trigger, clicked, minutes after T0, expected fate
    ("A", "A", 1, "self_click"),
    ("A", "Z", 2, "unknown_listing"),
    ("A", "D", 3, "category_mismatch"),  # would pass with A's superseded category
    ("A", "F", 4, "category_mismatch"),
    ("A", "E", 5, "no_title"),
    ("A", "C", 6, "low_relevance"),
    ("A", "B", 7, "kept"),
    ("B", "A", 8, "duplicate"),  # the same unordered pair, clicked later
    ("A", "H", 9, "kept"),
    ("A", "G", 10, "over_cap"),  # third relevant pair of A with a cap of 2; the least relevant
    ("G", "B", 11, "kept"),
]


def _frames(spark):
    listings = spark.createDataFrame(
        [(i, t, c, T0 + dt.timedelta(hours=h)) for i, t, c, h in LISTINGS],
        "listing_id STRING, title STRING, category STRING, updated_at TIMESTAMP",
    )
    clicks = spark.createDataFrame(
        [(a, b, T0 + dt.timedelta(minutes=m), "web") for a, b, m, _ in CLICKS],
        "trigger_listing_id STRING, clicked_listing_id STRING, event_time TIMESTAMP, channel STRING",
    )
    return clicks, listings


def _sampling(**changes) -> SamplingConfig:
    return dataclasses.replace(SamplingConfig(category_level=1, min_relevance=0.5, max_pairs_per_trigger=2), **changes)


def test_each_constraint_removes_its_clicks_and_everything_is_counted(spark, pipeline_config):
    clicks, listings = _frames(spark)
    pairs, counts = sample_pairs(clicks, listings, _sampling())
    expected = {reason: 0 for reason in REMOVAL_REASONS}
    for *_, fate in CLICKS:
        if fate != "kept":
            expected[fate] += 1
    assert {r: counts[r] for r in REMOVAL_REASONS} == expected
    assert counts["read"] == len(CLICKS)
    kept = {(r["trigger_listing_id"], r["clicked_listing_id"]) for r in pairs.collect()}
    assert kept == {(a, b) for a, b, _, fate in CLICKS if fate == "kept"}
    assert counts["kept"] == len(kept)
    rows = {(r["trigger_listing_id"], r["clicked_listing_id"]): r for r in pairs.collect()}
    assert rows[("A", "H")]["relevance"] > rows[("A", "B")]["relevance"] > 0.5
    assert rows[("A", "B")]["category"] == "electronics"


def test_deeper_category_level_and_no_cap(spark, pipeline_config):
    clicks, listings = _frames(spark)
    _, counts = sample_pairs(clicks, listings, _sampling(category_level=2, max_pairs_per_trigger=10))
    # level 2: A (electronics > phones) vs C (electronics > cables) now mismatches, and H has a
    # one-level path (too short to compare) -> mismatch; nothing is capped
    assert counts["category_mismatch"] == 4
    assert counts["low_relevance"] == 0
    assert counts["over_cap"] == 0
    assert counts["kept"] == 3  # A-B, A-G, G-B
    assert counts["read"] == counts["kept"] + sum(counts[r] for r in REMOVAL_REASONS)


def test_missing_click_columns_are_named(spark, pipeline_config):
    clicks, listings = _frames(spark)
    with pytest.raises(DedupError, match=r"\['event_time'\]"):
        sample_pairs(clicks.drop("event_time"), listings, _sampling())


def test_command_line_writes_pairs(spark, pipeline_config, tmp_path):
    clicks, listings = _frames(spark)
    clicks.write.parquet(str(tmp_path / "clicks"))
    listings.write.parquet(str(tmp_path / "listings"))
    config = tmp_path / "sspr.toml"
    paths = dataclasses.asdict(pipeline_config.paths)
    config.write_text(
        "[paths]\n"
        + "".join(f'{k} = "{v}"\n' for k, v in paths.items())
        + '[spark]\nmaster = "local[2]"\n[encoder]\nnum_threads = 1\n'
        + "[sampling]\ncategory_level = 1\nmax_pairs_per_trigger = 2\n"
    )
    load_config(config)  # the file itself is valid
    out = tmp_path / "pairs"
    assert (
        main(
            [
                "--clicks",
                str(tmp_path / "clicks"),
                "--listings",
                str(tmp_path / "listings"),
                "--out",
                str(out),
                "--config",
                str(config),
            ]
        )
        == 0
    )
    written = spark.read.parquet(str(out))
    assert written.count() == 3
    assert (
        main(
            [
                "--clicks",
                "x",
                "--listings",
                "y",
                "--out",
                str(out),
                "--config",
                str(config),
                "--set",
                "sampling.max_pairs_per_trigger=0",
            ]
        )
        == 2
    )


def test_readme_command_runs_on_the_shipped_config(spark, tmp_path):
    """The README's sample_pairs command, as written, on conf/sspr.toml (kind sspr, weights set)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    command = re.search(r"^python (jobs/sample_pairs\.py .*)$", readme, re.MULTILINE)
    assert command, "README.md has no sample_pairs command line"
    argv = command.group(1).split()
    assert argv[argv.index("--config") + 1] == "conf/sspr.toml"
    clicks, listings = _frames(spark)
    clicks.write.parquet(str(tmp_path / "clicks"))
    listings.write.parquet(str(tmp_path / "listings"))
    for flag, folder in (("--clicks", "clicks"), ("--listings", "listings"), ("--out", "pairs")):
        argv[argv.index(flag) + 1] = str(tmp_path / folder)
    env = {
        **os.environ,
        "SSPR__SPARK__MASTER": "local[1]",
        **{f"SSPR__PATHS__{k.upper()}": str(tmp_path / k) for k in ("warehouse_dir", "metastore_dir")},
    }
    proc = subprocess.run(
        [sys.executable, *argv], check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the shipped cap (10) keeps A-G too: A-B, A-H, A-G, G-B
    assert spark.read.parquet(str(tmp_path / "pairs")).count() == 4
