"""What every Spark stage shares: run date, session, timing, run metrics and the resolved config.

Each ``jobs/<stage>.py`` defines ``run(ctx) -> StageResult`` and a ``main(argv)`` that calls
``run_stage(STAGE, run, argv, __doc__)``. ``run_stage`` builds on the command skeleton
(``config.command``: ``--config`` / ``--set``, logging, exit codes) and adds ``--run-date`` and
``--min-similarity``; it takes the metastore lock, builds the SparkSession, times the stage, writes
its ``run_metrics`` row and its resolved config (``{paths.runs_dir}/run_date=D/<stage>.config.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.command import add_shortcut, command_parser, run_command
from config.errors import DedupError
from config.sections import PipelineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """Counts a stage reports; they land in ``run_metrics``."""

    rows_in: int
    rows_out: int
    rows_quarantined: int = 0
    rows_skipped: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageContext:
    """What a stage's ``run`` receives."""

    stage: str
    run_date: str  # ISO date, the Airflow logical date
    config: PipelineConfig
    spark: Any  # pyspark.sql.SparkSession
    args: argparse.Namespace

    @property
    def database(self) -> str:
        """Returns the warehouse database name."""
        return self.config.warehouse.database


def iso_date(value: str) -> str:
    """argparse type: an ISO date (YYYY-MM-DD), normalised."""
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from None


def build_parser(stage: str, description: str | None) -> argparse.ArgumentParser:
    """Returns the argument parser every stage shares.

    Args:
        stage: the stage name, used in the program name.
        description: the stage module's docstring (shown by ``--help``).

    Returns:
        The command parser (``--config``, ``--set``) plus ``--run-date`` and ``--min-similarity``.
    """
    parser = command_parser(
        f"jobs/{stage}.py",
        description,
        epilog=f"Run with spark-submit (spark-submit jobs/{stage}.py --run-date 2024-03-01 --config "
        "conf/sspr.toml) or by hand with python.",
    )
    parser.add_argument(
        "--run-date",
        required=True,
        type=iso_date,
        help="the run's logical date (YYYY-MM-DD); its partitions are replaced",
    )
    parser.add_argument(
        "--backfill-through",
        type=iso_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="a backfill that reruns every date up to this one in order (dedup_backfill passes it): "
        "allows rerunning this date although later dates exist, up to this one",
    )
    parser.add_argument(
        "--reembed",
        action="store_true",
        help="embed stage: also re-embed every catalogue listing whose vectors are of another model "
        "version than the configured encoder's (after a model change; dedup_backfill reembed=true)",
    )
    add_shortcut(
        parser, "--min-similarity", "dedup.min_similarity", "the pair threshold for this run; empty = keep the config's"
    )
    return parser


PIPELINE_STAGES = ("validate", "embed", "catalog", "pairs", "groups", "report")
"""The nightly stages in run order (``dags/dedup_nightly.py`` runs the same chain)."""

CHAINED_STAGES = PIPELINE_STAGES[:-1]
"""Stages whose output for a date feeds the next date's (catalogue, live pair graph, group ids)."""


def check_later_dates(ctx: StageContext) -> None:
    """Refuses to rerun a date that later dates were built on, outside a backfill that reruns them.

    The catalogue, the live pair graph and the group ids of date D+1 are built from D's, so
    rerunning D alone would leave D+1.. inconsistent with it.

    Raises:
        DedupError: later dates exist beyond ``--backfill-through`` (the message says what to run).
    """
    from jobs.warehouse import stage_run_dates

    through = getattr(ctx.args, "backfill_through", None) or ctx.run_date
    later = [d for d in stage_run_dates(ctx.spark, ctx.database, "catalog") if d > through]
    if later:
        raise DedupError(
            f"run date {ctx.run_date} is not the latest: {len(later)} later dates ({later[0]} .. {later[-1]}) "
            f"were built on it, and rerunning it alone would leave them inconsistent. Rerun it with "
            f"the dedup_backfill DAG (start_date={ctx.run_date}, end_date={later[-1]}), which reruns "
            "every date in order, or `python -m jobs.backfill --start-date "
            f"{ctx.run_date} --end-date {later[-1]}`"
        )


def write_resolved_config(config: PipelineConfig, stage: str, run_date: str) -> Path:
    """Writes the resolved config as JSON under ``{runs_dir}/run_date=D/<stage>.config.json``.

    Returns:
        The path written.
    """
    out = Path(config.paths.runs_dir) / f"run_date={run_date}" / f"{stage}.config.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(config.to_json())
    return out


def record_metrics(ctx: StageContext, result: StageResult, seconds: float) -> None:
    """Replaces this stage's ``run_metrics`` row for the run date."""
    from pyspark.sql import Row

    from jobs.warehouse import replace_partition
    from schemas.tables import RUN_METRICS, to_ddl

    row = Row(
        rows_in=int(result.rows_in),
        rows_out=int(result.rows_out),
        rows_quarantined=int(result.rows_quarantined),
        rows_skipped=int(result.rows_skipped),
        seconds=float(seconds),
        details=json.dumps(result.details, sort_keys=True, default=str),
        finished_at=dt.datetime.now(dt.UTC),
        run_date=ctx.run_date,
        stage=ctx.stage,
    )
    df = ctx.spark.createDataFrame([row], schema=to_ddl(RUN_METRICS))
    replace_partition(ctx.spark, df, ctx.database, "run_metrics", {"run_date": ctx.run_date, "stage": ctx.stage})


FAIL_ONCE_ENV = "SSPR_FAIL_ONCE"  # "validate,pairs": crash these stages once per run date (drill)
FAIL_ONCE_DIR_ENV = "SSPR_FAIL_ONCE_DIR"  # where the drill remembers that a stage already failed


def fail_once_drill(stage: str, run_date: str) -> None:
    """Crashes a stage once per run date after its outputs are written, when asked to (a drill).

    Operators (and the end-to-end test) rehearse Airflow retries with it: set
    ``SSPR_FAIL_ONCE=pairs`` and ``SSPR_FAIL_ONCE_DIR=/some/dir``; the first attempt of ``pairs``
    for each run date writes its tables, then fails; the retry must replace them and succeed.
    Without both variables it does nothing.

    Args:
        stage: the running stage.
        run_date: the run date.

    Raises:
        RuntimeError: on the drilled stage's first attempt for this run date.
    """
    stages = {s.strip() for s in os.environ.get(FAIL_ONCE_ENV, "").split(",") if s.strip()}
    folder = os.environ.get(FAIL_ONCE_DIR_ENV, "")
    if stage not in stages or not folder:
        return
    marker = Path(folder) / f"{stage}-{run_date}.failed"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("failed once on purpose\n")
    raise RuntimeError(
        f"fault drill: {stage} fails once for {run_date} after writing its outputs "
        f"({FAIL_ONCE_ENV}); the retry must replace them"
    )


def run_stage(
    stage: str,
    run: Callable[[StageContext], StageResult],
    argv: Sequence[str] | None = None,
    description: str | None = None,
) -> int:
    """Parses flags, runs one stage for one run date and records what it did.

    Args:
        stage: the stage name (``validate``, ``embed``, ``pairs``, ``groups``, ``report``).
        run: the stage body.
        argv: command-line arguments (``sys.argv[1:]`` when None).
        description: ``--help`` text.

    Returns:
        The process exit code: 0 success, 2 a known error (message logged), 1 an unexpected one.
    """

    def body(args: argparse.Namespace, config: PipelineConfig) -> int:
        from jobs.spark import build_spark, hold_metastore_lock

        started = time.monotonic()
        marks = [("start", started)]
        log.info("stage %s starting for run_date %s", stage, args.run_date)
        hold_metastore_lock(config)  # a second job on the embedded metastore waits here
        marks.append(("lock_wait", time.monotonic()))
        spark = build_spark(config, f"sspr-{stage}-{args.run_date}")
        marks.append(("spark_start", time.monotonic()))
        ctx = StageContext(stage=stage, run_date=args.run_date, config=config, spark=spark, args=args)
        if stage in CHAINED_STAGES:
            check_later_dates(ctx)  # the first metastore query: its client starts here
        config_path = write_resolved_config(config, stage, args.run_date)
        marks.append(("metastore_checks", time.monotonic()))
        result = run(ctx)
        fail_once_drill(stage, args.run_date)
        marks.append(("work", time.monotonic()))
        seconds = time.monotonic() - started
        # where a stage's time goes (bench/stage_overhead.py tabulates it from run_metrics)
        timings = {name: round(t - marks[k][1], 3) for k, (name, t) in enumerate(marks[1:])}
        result = dataclasses.replace(result, details=result.details | {"timings": timings})
        log.info("stage %s timings: %s", stage, ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        record_metrics(ctx, result, seconds)
        log.info(
            "stage %s done for run_date %s in %.1fs: rows_in=%d rows_out=%d quarantined=%d skipped=%d "
            "details=%s (resolved config: %s)",
            stage,
            args.run_date,
            seconds,
            result.rows_in,
            result.rows_out,
            result.rows_quarantined,
            result.rows_skipped,
            json.dumps(result.details, default=str),
            config_path,
        )
        return 0

    parser = build_parser(stage, description)
    return run_command(f"stage {stage}", body, argv, parser, log, context=lambda args: f" for run_date {args.run_date}")
