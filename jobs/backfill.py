"""backfill: rerun the nightly stages for a range of run dates, in date order (``dedup_backfill``).

Each date's catalogue, live pair graph and group ids are built from the previous date's, so a
date can only be rerun together with every later one, in order. This command runs, for each date
from ``--start-date`` to ``--end-date`` (every calendar day, inclusive), the same spark-submit
of each stage the nightly DAG runs (validate, embed, catalog, pairs, groups, report), each
replacing that date's partitions, and stops at the first failure (rerun the same command: dates
already done are simply redone). The stages refuse when dates after ``--end-date`` exist, since
those would be left inconsistent: end the backfill at the latest date.

``--reembed`` (after a model change) makes the embed stage re-embed every catalogue listing whose
vectors are of another model version than the configured encoder's, so the whole catalogue moves
to the new version on the first date and every vector is tagged with it.

    python -m jobs.backfill --config conf/sspr.toml --start-date 2024-03-02 --end-date 2024-03-03 [--reembed]
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from config.command import add_shortcut, command_parser, run_command
from config.errors import DedupError
from config.sections import SparkConfig
from jobs.stage import PIPELINE_STAGES, iso_date

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
MAX_DAYS = 366


def run_dates(start: str, end: str) -> list[str]:
    """Returns every ISO date from ``start`` to ``end`` inclusive.

    Raises:
        DedupError: ``end`` is before ``start``, or the range is longer than ``MAX_DAYS``.
    """
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < first:
        raise DedupError(f"--end-date {end} is before --start-date {start}; swap them")
    days = (last - first).days + 1
    if days > MAX_DAYS:
        raise DedupError(f"{days} dates from {start} to {end}: backfill at most {MAX_DAYS} at a time")
    return [(first + dt.timedelta(days=k)).isoformat() for k in range(days)]


def stage_command(
    args, stage: str, run_date: str, spark: SparkConfig | None = None, driver_class_path: str = ""
) -> list[str]:
    """Returns the spark-submit command line of one stage for one date, as the nightly DAG runs it.

    ``spark`` gives the JVM heaps (``spark.driver_memory`` / ``executor_memory``; defaults when None);
    ``driver_class_path`` the metastore's JDBC driver jars (``warehouse.metastore_jdbc_jars``).
    """
    spark = spark or SparkConfig()
    command = [
        args.spark_submit,
        "--master",
        args.master,
        "--driver-memory",
        spark.driver_memory,
        "--executor-memory",
        spark.executor_memory,
        "--name",
        f"sspr-{stage}-{run_date}",
        *(["--py-files", args.py_files] if getattr(args, "py_files", None) else []),
        *(["--driver-class-path", driver_class_path] if driver_class_path else []),
        str(REPO / "jobs" / f"{stage}.py"),
        "--run-date",
        run_date,
        "--backfill-through",
        args.end_date,
        "--min-similarity",
        getattr(args, "shortcut_dedup__min_similarity", None) or "",
    ]
    if args.config:
        command += ["--config", args.config]
    for key, value in args.overrides:
        command += ["--set", f"{key}={value}"]
    if args.reembed and stage == "embed":
        command.append("--reembed")
    return command


def backfill(args, spark: SparkConfig | None = None, driver_class_path: str = "") -> int:
    """Runs every stage of every date in order; returns 0, or the failed stage's exit code."""
    dates = run_dates(args.start_date, args.end_date)
    if shutil.which(args.spark_submit) is None and not Path(args.spark_submit).is_file():
        raise DedupError(f"{args.spark_submit!r} not found: put Spark's bin on PATH or pass --spark-submit")
    started = time.monotonic()
    log.info("backfill of %d dates %s .. %s (reembed=%s)", len(dates), dates[0], dates[-1], args.reembed)
    for k, run_date in enumerate(dates, start=1):
        for stage in PIPELINE_STAGES:
            t0 = time.monotonic()
            log.info("backfill %d/%d %s %s: running", k, len(dates), run_date, stage)
            proc = subprocess.run(stage_command(args, stage, run_date, spark, driver_class_path), check=False)
            if proc.returncode != 0:
                log.error(
                    "backfill stopped: %s %s exited %d (its log is above); fix it and rerun the same "
                    "backfill (dates before %s are done and are simply redone)",
                    run_date,
                    stage,
                    proc.returncode,
                    run_date,
                )
                return proc.returncode
            log.info("backfill %d/%d %s %s: done in %.1fs", k, len(dates), run_date, stage, time.monotonic() - t0)
    log.info("backfill of %d dates done in %.1fs", len(dates), time.monotonic() - started)
    return 0


def build_parser():
    """The command line (see ``--help``)."""
    parser = command_parser("python -m jobs.backfill", __doc__)
    parser.add_argument("--start-date", required=True, type=iso_date, help="first run date (YYYY-MM-DD)")
    parser.add_argument("--end-date", required=True, type=iso_date, help="last run date, inclusive (YYYY-MM-DD)")
    parser.add_argument(
        "--reembed", action="store_true", help="re-embed the catalogue's vectors of other model versions"
    )
    parser.add_argument("--master", default="local[2]", help="Spark master for every stage (default local[2])")
    parser.add_argument(
        "--py-files",
        default=os.environ.get("SSPR_PY_FILES") or None,
        help="archive of the project's packages for executors on a cluster (bin/build-pyfiles; default $SSPR_PY_FILES)",
    )
    parser.add_argument("--spark-submit", default="spark-submit", help="the spark-submit executable (default: on PATH)")
    add_shortcut(
        parser, "--min-similarity", "dedup.min_similarity", "candidate threshold for every date; empty = config's"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the backfill from the command line; returns the exit code."""
    parser = build_parser()
    return run_command(
        "backfill",
        lambda args, config: backfill(args, config.spark, config.warehouse.metastore_jdbc_jars),
        argv,
        parser,
        log,
    )


if __name__ == "__main__":
    sys.exit(main())
