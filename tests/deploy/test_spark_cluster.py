"""bin/spark-cluster's command line without a cluster (the end-to-end test starts a real one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "bin" / "spark-cluster"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def test_help_says_how_to_use_the_cluster_with_the_nightly():
    proc = _run("--help")
    assert proc.returncode == 0
    for needed in ("start", "status", "stop", "AIRFLOW_CONN_SPARK_DEFAULT", "SSPR_PY_FILES", "make pyfiles"):
        assert needed in proc.stdout, needed


def test_status_without_a_cluster_says_how_to_start_one_and_stop_is_a_no_op(tmp_path):
    proc = _run("status", "--dir", str(tmp_path))
    assert proc.returncode != 0 and "bin/spark-cluster start" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run("stop", "--dir", str(tmp_path))
    assert proc.returncode == 0 and "nothing to stop" in proc.stderr
