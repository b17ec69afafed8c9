"""DAG integrity: dags/ parses without errors and dedup_nightly has the shape the pipeline relies on.

Airflow is imported only inside the module-scoped fixture, after AIRFLOW_HOME points at a temp dir,
so the tests never touch a real Airflow home or metadata DB. Nothing here runs a task or Spark.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_FILE = DAGS / "dedup_nightly.py"
DAG_ID = "dedup_nightly"
STAGES = ["validate", "embed", "catalog", "pairs", "groups", "report"]
PROJECT_PACKAGES = {"encoder", "dedup", "jobs", "schemas"}
# bin/run-sample-nightly and the e2e setup create this pool; the name is part of the deployment.
WAREHOUSE_POOL = "sspr_warehouse"
HEAVY_MODULES = ("torch", "pyspark", "faiss", "encoder", "dedup", "jobs", "schemas")


def _airflow_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _airflow_env(home).items():
            mp.setenv(name, value)
        yield home


@pytest.fixture(scope="module")
def dagbag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag  # only after AIRFLOW_HOME is set

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    assert DAG_ID in dagbag.dags, f"{DAG_ID} not found; import errors: {dagbag.import_errors}"
    return dagbag.dags[DAG_ID]  # not get_dag(): that queries the metadata DB


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAGs found in dags/"


def test_dag_exists(dagbag):
    assert DAG_ID in dagbag.dag_ids


def test_tags_not_empty(dag):
    assert dag.tags
    assert all(isinstance(tag, str) and tag for tag in dag.tags)


def test_every_task_retries_at_least_twice(dag):
    assert dag.tasks
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id


def test_tasks_are_the_stage_chain(dag):
    assert sorted(dag.task_ids) == sorted(STAGES)
    for upstream, downstream in itertools.pairwise(STAGES):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.get_task(STAGES[0]).upstream_task_ids == set()
    assert dag.get_task(STAGES[-1]).downstream_task_ids == set()
    assert [t.task_id for t in dag.topological_sort()] == STAGES


def test_every_task_submits_its_job_file(dag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    for task in dag.tasks:
        assert isinstance(task, SparkSubmitOperator), task.task_id
        application = Path(task.application)
        assert application == REPO / "jobs" / f"{task.task_id}.py", task.task_id
        assert application.is_file(), application


def test_every_spark_task_waits_for_the_one_warehouse_slot(dagbag):
    """Spark jobs share the embedded Derby metastore, so every one of them, in any DAG, takes the pool."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    spark_tasks = [task for d in dagbag.dags.values() for task in d.tasks if isinstance(task, SparkSubmitOperator)]
    assert len(spark_tasks) >= len(STAGES)
    for task in spark_tasks:
        assert task.pool == WAREHOUSE_POOL, f"{task.dag_id}.{task.task_id} uses pool {task.pool!r}"
        assert task.pool_slots == 1, f"{task.dag_id}.{task.task_id} takes {task.pool_slots} slots"


def test_warehouse_pool_is_named_once_and_documented(dag):
    tree = ast.parse(DAG_FILE.read_text())
    docstring = ast.get_docstring(tree, clean=False)
    literals = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value == WAREHOUSE_POOL and node.value != docstring
    ]
    assert len(literals) == 1, "name the pool in one constant and use the constant"
    constants = [
        node.targets[0].id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value == WAREHOUSE_POOL
    ]
    assert constants == ["WAREHOUSE_POOL"]
    assert f"airflow pools set {WAREHOUSE_POOL} 1 " in dag.doc_md


def test_catchup_off_and_one_run_at_a_time(dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def _is_daily_cron(expression: str) -> bool:
    if expression in ("@daily", "@midnight"):
        return True
    fields = expression.split()
    return len(fields) == 5 and fields[0].isdigit() and fields[1].isdigit() and fields[2:] == ["*", "*", "*"]


def test_schedule_is_daily(dag):
    expression = getattr(dag.timetable, "expression", None) or getattr(dag.timetable, "_expression", None)
    assert expression is not None, f"not a cron timetable: {dag.timetable!r}"
    assert _is_daily_cron(expression), expression


def test_application_args_pass_the_run_date(dag):
    for task in dag.tasks:
        args = list(task.application_args)
        assert "--run-date" in args, task.task_id
        assert args[args.index("--run-date") + 1] == "{{ ds }}", task.task_id
        assert "application_args" in task.template_fields


def test_application_args_render(dag):
    for task in dag.tasks:
        rendered = task.render_template(task.application_args, {"ds": "2024-03-01", "params": {"min_similarity": None}})
        assert rendered[rendered.index("--run-date") + 1] == "2024-03-01", task.task_id
        assert rendered[rendered.index("--min-similarity") + 1] == "", task.task_id
        rendered = task.render_template(task.application_args, {"ds": "2024-03-02", "params": {"min_similarity": 0.9}})
        assert rendered[rendered.index("--run-date") + 1] == "2024-03-02", task.task_id
        assert rendered[rendered.index("--min-similarity") + 1] == "0.9", task.task_id


def test_dag_import_loads_no_heavy_or_project_modules(tmp_path):
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(DAG_FILE)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"print(json.dumps({{name: name in sys.modules for name in {list(HEAVY_MODULES)!r}}}))\n"
    )
    env = {**os.environ, **_airflow_env(tmp_path / "airflow_home")}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(HEAVY_MODULES)
    assert [name for name, present in loaded.items() if present] == []


def test_dag_file_imports_nothing_from_the_project():
    tree = ast.parse(DAG_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the DAG file"
            imported.add((node.module or "").split(".")[0])
    assert imported, "found no imports at all: the parse is wrong"
    assert "airflow" in imported
    assert imported.isdisjoint(PROJECT_PACKAGES), imported & PROJECT_PACKAGES
    # the same check as a plain grep of the import lines
    import_lines = [
        line.strip() for line in DAG_FILE.read_text().splitlines() if line.strip().startswith(("import ", "from "))
    ]
    for line in import_lines:
        module = line.split()[1].split(".")[0]
        assert module not in PROJECT_PACKAGES, line


def test_the_nightly_chain_is_the_stage_order_the_backfill_runs():
    from jobs.stage import PIPELINE_STAGES

    assert list(PIPELINE_STAGES) == STAGES


BACKFILL_FILE = DAGS / "dedup_backfill.py"


@pytest.fixture(scope="module")
def backfill_dag(dagbag):
    assert "dedup_backfill" in dagbag.dags, f"dedup_backfill not found; import errors: {dagbag.import_errors}"
    return dagbag.dags["dedup_backfill"]


def test_backfill_has_typed_params_and_no_schedule(backfill_dag):
    assert type(backfill_dag.timetable).__name__ == "NullTimetable"  # manual runs only
    params = backfill_dag.params
    assert set(params.keys()) == {"start_date", "end_date", "reembed", "min_similarity"}
    assert params.get_param("reembed").schema["type"] == "boolean"
    assert params.get_param("start_date").schema["pattern"]
    assert backfill_dag.max_active_runs == 1


def test_backfill_runs_the_backfill_command_in_the_warehouse_slot(backfill_dag):
    from airflow.sdk import Connection

    (task,) = backfill_dag.tasks
    assert task.pool == WAREHOUSE_POOL and task.pool_slots == 1
    context = {
        "params": {"start_date": "2024-03-02", "end_date": "2024-03-03", "reembed": True, "min_similarity": None},
        "conn": {"spark_default": Connection(conn_id="spark_default", conn_type="spark", host="local[2]")},
    }
    command = task.render_template(task.bash_command, context)
    assert "-m jobs.backfill" in command
    assert "--start-date '2024-03-02' --end-date '2024-03-03'" in command
    assert "--master 'local[2]'" in command and command.endswith(" --reembed")
    assert "--min-similarity ''" in command
    context["params"] |= {"reembed": False, "min_similarity": 0.5}
    command = task.render_template(task.bash_command, context)
    assert "--reembed" not in command and "--min-similarity '0.5'" in command


def test_backfill_dag_imports_nothing_from_the_project():
    tree = ast.parse(BACKFILL_FILE.read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert "airflow" in imported and imported.isdisjoint(PROJECT_PACKAGES)


def test_every_spark_task_gets_the_configured_jvm_heaps(dag):
    """spark-submit starts the JVM before the job reads its config, so the DAG passes the
    config's heaps itself; they must be the ones load_config reads from the same file."""
    from config import load_config

    spark = load_config(os.environ.get("SSPR_CONFIG", REPO / "conf" / "sspr.toml"), environ={}).spark
    for task in dag.tasks:
        assert task._driver_memory == spark.driver_memory, task.task_id
        assert task._executor_memory == spark.executor_memory, task.task_id


def test_the_dag_reads_the_heaps_like_the_loader(airflow_home, tmp_path, monkeypatch):
    """The DAG's stdlib reader and load_config agree on a file and on an env override."""
    import importlib.util

    from config import load_config

    conf = tmp_path / "c.toml"
    conf.write_text('[spark]\ndriver_memory = "6g"\n')
    monkeypatch.setenv("SSPR_CONFIG", str(conf))
    spec = importlib.util.spec_from_file_location("nightly_for_test", REPO / "dags" / "dedup_nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.spark_memory("driver_memory") == load_config(conf, environ={}).spark.driver_memory == "6g"
    assert module.spark_memory("executor_memory") == load_config(conf, environ={}).spark.executor_memory
    monkeypatch.setenv("SSPR__SPARK__DRIVER_MEMORY", "8g")
    assert module.spark_memory("driver_memory") == load_config(conf).spark.driver_memory == "8g"


def test_the_py_files_archive_reaches_every_spark_task_when_named(airflow_home, monkeypatch):
    """$SSPR_PY_FILES (bin/build-pyfiles) becomes each task's --py-files; unset, there is none."""
    import importlib.util

    def nightly():
        # the env var is read when the DAG file is parsed, as the dag-processor does
        spec = importlib.util.spec_from_file_location("nightly_py_files", REPO / "dags" / "dedup_nightly.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.dedup_nightly()

    monkeypatch.delenv("SSPR_PY_FILES", raising=False)
    assert all(task.py_files is None for task in nightly().tasks)
    monkeypatch.setenv("SSPR_PY_FILES", "/opt/sspr/sspr_dedup.zip")
    assert [task.py_files for task in nightly().tasks] == ["/opt/sspr/sspr_dedup.zip"] * 6


def test_the_metastore_jdbc_driver_reaches_every_spark_task_when_configured(airflow_home, tmp_path, monkeypatch):
    """[warehouse] metastore_jdbc_jars (bin/metastore-db) becomes each task's --driver-class-path."""
    import importlib.util

    def nightly():
        spec = importlib.util.spec_from_file_location("nightly_jdbc", REPO / "dags" / "dedup_nightly.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.dedup_nightly()

    conf = tmp_path / "c.toml"
    conf.write_text('[warehouse]\nmetastore_jdbc_jars = "/usr/share/java/postgresql.jar"\n')
    monkeypatch.delenv("SSPR__WAREHOUSE__METASTORE_JDBC_JARS", raising=False)
    monkeypatch.setenv("SSPR_CONFIG", str(conf))
    assert [task.driver_class_path for task in nightly().tasks] == ["/usr/share/java/postgresql.jar"] * 6
    monkeypatch.setenv("SSPR__WAREHOUSE__METASTORE_JDBC_JARS", "/opt/jdbc/pg.jar")
    assert {task.driver_class_path for task in nightly().tasks} == {"/opt/jdbc/pg.jar"}
    conf.write_text("")
    monkeypatch.delenv("SSPR__WAREHOUSE__METASTORE_JDBC_JARS")
    assert all(task.driver_class_path is None for task in nightly().tasks)
