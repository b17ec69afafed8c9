"""The nightly's stage operator: a job's known problem (exit 2) fails the task unretried, a crash retries.

Each case is a real ``spark-submit`` (local mode) of a tiny Python application that exits with the
code under test, through the operator the DAG builds, so a provider upgrade that renames what the
operator reads shows up here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    """The DAG module, imported with a temp AIRFLOW_HOME and a local-mode spark_default connection."""
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_HOME", str(home))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        mp.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[1]"}))
        # the hook runs the spark-submit beside this interpreter (the venv's pyspark)
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        spec = importlib.util.spec_from_file_location("nightly_operator", REPO / "dags" / "dedup_nightly.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def _submit(nightly, tmp_path, exit_code: int):
    app = tmp_path / f"exit_{exit_code}.py"
    app.write_text(f"import sys\nprint('job ran')\nsys.exit({exit_code})\n")
    task = nightly.StageSubmitOperator(task_id=f"exit_{exit_code}", application=str(app), conn_id="spark_default")
    return task.execute({})


def test_every_nightly_task_is_a_stage_operator(nightly):
    dag = nightly.dedup_nightly()
    assert {type(task) for task in dag.tasks} == {nightly.StageSubmitOperator}
    assert all(task.retries == 2 for task in dag.tasks)


def test_a_known_problem_fails_the_task_without_retries(nightly, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="exit 2.*Not retried"):
        _submit(nightly, tmp_path, 2)


def test_a_crash_stays_retryable(nightly, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(Exception) as raised:
        _submit(nightly, tmp_path, 1)
    assert not isinstance(raised.value, AirflowFailException)
    assert "Error code is: 1" in str(raised.value)


def test_a_clean_exit_succeeds(nightly, tmp_path):
    assert _submit(nightly, tmp_path, 0) is None
