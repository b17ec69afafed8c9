"""
### dedup_nightly

Finds duplicate and same-style listings inside each supplier, every night, for one day of listings.

For the logical date D (the day of listings, `{{ ds }}`) it runs six Spark jobs, each a
`spark-submit` of a module in `jobs/` (the same command runs by hand):

1. **validate** `{listings_root}/dt=D/*.parquet` against the contract (Great Expectations);
   bad rows go to `dedup.quarantine` with the rule they broke;
2. **embed** the valid listings with the unified encoder (GPU per task when configured);
3. **catalog**: the previous night's catalogue with D's new, changed and deleted listings merged in;
4. **pairs**: per supplier, D's listings against the supplier's catalogue (candidates, then the
   pair verifier), and the live pair graph (yesterday's, less the changed listings' pairs, plus D's);
5. **groups**: every supplier's groups over the live pair graph, with stable ids and lineage;
6. **report**: `report.json` and the review page, from the warehouse tables.

Every task replaces exactly D's partitions, so rerunning the latest day (Clear in the UI, or
`airflow dags test dedup_nightly D`) is safe and gives the same tables. An earlier day is refused
(later days were built on it): rerun it with the `dedup_backfill` DAG, which reruns every later
day in order. Tasks retry twice after a crash (exit 1); a known problem the job logged (exit 2:
a refused rerun, a broken config, a stopped metastore server) fails the task at once, since a
retry cannot fix it. One run at a time: the default embedded Derby metastore admits
one Spark application at a time.

Every Spark task takes the one slot of the Airflow pool `sspr_warehouse`, so Spark jobs that open
the metastore never overlap, whichever run or DAG they belong to (a manual rerun of another date
waits for the scheduled run's current task instead of failing on a Derby lock). Create the pool
once per Airflow metadata database, before the first run (idempotent):

    airflow pools set sspr_warehouse 1 "Spark jobs using the sspr-dedup warehouse metastore (embedded Derby: one at a time)"

The scheduler does not start a task whose pool does not exist (it stays scheduled and the
scheduler logs "Tasks using non-existent pool"); `airflow dags test` ignores pools and runs the
tasks one after another. With a metastore that admits several applications at once — a Hive
metastore service (`warehouse.metastore_uris`) or a database server (`warehouse.metastore_jdbc_url`,
e.g. PostgreSQL from `bin/metastore-db`) — give the pool more slots, e.g.
`airflow pools set sspr_warehouse 4 "..."`: a backfill and the nightly then run side by side.

Config: the TOML file in `$SSPR_CONFIG` (default `conf/sspr.toml` beside `dags/`); Spark master from
the Airflow connection `spark_default`; the JVM heaps (`--driver-memory`, `--executor-memory`) from
its `[spark]` keys `driver_memory` / `executor_memory`; on a cluster, the project's packages from the
archive `$SSPR_PY_FILES` names (`make pyfiles` builds `var/dist/sspr_dedup.zip`), passed as
`--py-files`; with a metastore database, its JDBC driver jars (`[warehouse] metastore_jdbc_jars`) as
`--driver-class-path`. Params: `min_similarity` overrides the config's threshold
for a manual run.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronDataIntervalTimetable, Param, dag
from airflow.sdk.exceptions import AirflowFailException

REPO = Path(__file__).resolve().parents[1]
CONFIG = os.environ.get("SSPR_CONFIG", str(REPO / "conf" / "sspr.toml"))
STAGES = ("validate", "embed", "catalog", "pairs", "groups", "report")  # jobs.stage.PIPELINE_STAGES
# One slot: the embedded Derby metastore admits one Spark application at a time (docs/STACK.md §9).
WAREHOUSE_POOL = "sspr_warehouse"


def config_value(section: str, key: str, default: str) -> str:
    """Returns ``[section] key`` of the config file (an ``SSPR__SECTION__KEY`` env var wins), for
    spark-submit options the JVM needs before the job reads its config. Stdlib only, so parsing
    the DAG stays light; a test keeps it equal to load_config."""
    override = os.environ.get(f"SSPR__{section.upper()}__{key.upper()}")
    if override:
        return override
    try:
        with open(CONFIG, "rb") as handle:
            return str(tomllib.load(handle).get(section, {}).get(key, default))
    except (OSError, tomllib.TOMLDecodeError):
        return default  # the job itself reports a missing or broken config clearly


def spark_memory(key: str, default: str = "4g") -> str:
    """Returns ``[spark] <key>``: spark-submit's --driver-memory / --executor-memory."""
    return config_value("spark", key, default)


# The --py-files archive for executors on a cluster (bin/build-pyfiles); unset = none (local mode).
PY_FILES = os.environ.get("SSPR_PY_FILES") or None

# Wait between a failed attempt and its retry (SSPR_RETRY_DELAY_S seconds; default 5 minutes).
RETRY_DELAY = dt.timedelta(seconds=int(os.environ.get("SSPR_RETRY_DELAY_S", "300")))


# jobs' exit code for a known problem (config.command.run_command): the job logged what a person
# must do (a refused rerun of an earlier date, a broken config, a stopped metastore server).
KNOWN_PROBLEM_EXIT = 2


class StageSubmitOperator(SparkSubmitOperator):
    """spark-submit of one stage job; a known problem (exit 2) fails the task at once, unretried.

    A retry cannot fix what the job reported as needing a person, and each attempt would cost a
    Spark start-up; any other failure (a crash, a lost executor: exit 1) is retried as usual.
    """

    def execute(self, context):
        try:
            return super().execute(context)
        except Exception as error:
            process = getattr(self._hook, "_submit_sp", None)  # the hook's spark-submit process
            if process is not None and process.returncode == KNOWN_PROBLEM_EXIT:
                raise AirflowFailException(
                    f"{self.task_id}: the job reported a known problem (exit {KNOWN_PROBLEM_EXIT}); the task "
                    "log above says what to do. Not retried: fix it, then clear this task"
                ) from error
            raise


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    # Data-interval semantics: the run for day D starts after D ends, and {{ ds }} is D.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=1,
    tags=["sspr-dedup", "nightly"],
    default_args={"retries": 2, "retry_delay": RETRY_DELAY, "owner": "data-platform"},
    params={
        "min_similarity": Param(
            None,
            type=["null", "number"],
            minimum=-1,
            maximum=1,
            title="Minimum similarity",
            description="similarity_m at or above which two listings are candidates; empty = the config's value",
        ),
    },
)
def dedup_nightly():
    previous = None
    for stage in STAGES:
        task = StageSubmitOperator(
            task_id=stage,
            application=str(REPO / "jobs" / f"{stage}.py"),
            conn_id="spark_default",
            name=f"sspr-{stage}-{{{{ ds }}}}",
            driver_memory=spark_memory("driver_memory"),
            executor_memory=spark_memory("executor_memory"),
            py_files=PY_FILES,
            # the metastore database's JDBC driver (warehouse.metastore_jdbc_jars), for the Hive client
            driver_class_path=config_value("warehouse", "metastore_jdbc_jars", "") or None,
            pool=WAREHOUSE_POOL,
            pool_slots=1,
            application_args=[
                "--run-date",
                "{{ ds }}",
                "--config",
                CONFIG,
                "--min-similarity",
                "{{ params.min_similarity if params.min_similarity is not none else '' }}",
            ],
        )
        if previous is not None:
            previous >> task
        previous = task


dedup_nightly()
