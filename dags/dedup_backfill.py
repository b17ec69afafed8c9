"""
### dedup_backfill

Reruns the nightly pipeline for a range of run dates, **in date order**, replacing each date's
partitions: after a fix, a late feed, a threshold change, or a model change (`reembed`).

Each date's catalogue, live pair graph and group ids are built from the previous date's, so an
earlier date cannot be rerun alone: the nightly stages refuse to rerun a date that later dates
were built on, and say to use this DAG. Set `end_date` to the latest run date (the stages refuse
a backfill that would leave dates after `end_date` inconsistent).

One task runs `python -m jobs.backfill` (the same command works by hand): for each date, the
nightly's six spark-submits (validate, embed, catalog, pairs, groups, report), with per-stage
progress and timings in the task log; it stops at the first failure, and rerunning the DAG run
redoes the range (every date's outputs are replaced, so a rerun gives the same tables byte for
byte). The task takes the one slot of the `sspr_warehouse` pool, so it never overlaps a nightly
Spark job on the embedded metastore.

Params:
- `start_date`, `end_date` (YYYY-MM-DD, inclusive): the range, every calendar day;
- `reembed`: re-embed every catalogue listing whose vectors are of another model version than
  the configured encoder's (on the first date), so the whole catalogue moves to the new version;
- `min_similarity`: the candidate threshold for every date (empty = the config's).

Trigger: `airflow dags trigger dedup_backfill -c '{"start_date": "2024-03-02", "end_date": "2024-03-03"}'`
(or `airflow dags test dedup_backfill -c '...'`, which runs it in-process).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Param, dag

REPO = Path(__file__).resolve().parents[1]
CONFIG = os.environ.get("SSPR_CONFIG", str(REPO / "conf" / "sspr.toml"))
# One slot: the embedded Derby metastore admits one Spark application at a time (dedup_nightly).
WAREHOUSE_POOL = "sspr_warehouse"
DATE = r"^\d{4}-\d{2}-\d{2}$"


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=None,
    start_date=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["sspr-dedup", "backfill"],
    default_args={"retries": 0, "owner": "data-platform"},
    params={
        "start_date": Param(None, type=["null", "string"], pattern=DATE, title="First run date (YYYY-MM-DD)"),
        "end_date": Param(None, type=["null", "string"], pattern=DATE, title="Last run date, inclusive"),
        "reembed": Param(False, type="boolean", title="Re-embed the catalogue with the configured model"),
        "min_similarity": Param(
            None,
            type=["null", "number"],
            minimum=-1,
            maximum=1,
            title="Minimum similarity",
            description="candidate threshold for every date; empty = the config's value",
        ),
    },
)
def dedup_backfill():
    BashOperator(
        task_id="backfill",
        cwd=str(REPO),
        pool=WAREHOUSE_POOL,
        pool_slots=1,
        bash_command=(
            f"{sys.executable} -m jobs.backfill --config {CONFIG}"
            " --start-date '{{ params.start_date or '' }}' --end-date '{{ params.end_date or '' }}'"
            " --master '{{ conn.spark_default.host }}'"
            " --min-similarity '{{ params.min_similarity if params.min_similarity is not none else '' }}'"
            "{{ ' --reembed' if params.reembed else '' }}"
        ),
    )


dedup_backfill()
