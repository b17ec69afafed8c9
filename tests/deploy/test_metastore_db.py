"""A shared metastore: bin/metastore-db's PostgreSQL server, and two stage runs on it at once.

On the embedded Derby metastore two jobs take turns (tests/jobs/test_concurrent_runs.py). On
PostgreSQL they must run side by side, both Spark applications holding a metastore client at
the same time, and the tables must be in PostgreSQL, not in a Derby folder made on the side.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LISTINGS = REPO / "examples" / "listings"
DAYS = ("2024-03-01", "2024-03-02")
TOOL = REPO / "bin" / "metastore-db"


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, check=False, timeout=180)


def test_help_says_how_to_point_the_jobs_at_it():
    proc = _tool("--help")
    assert proc.returncode == 0
    for needed in (
        "start",
        "stop",
        "SSPR__WAREHOUSE__METASTORE_JDBC_URL",
        "pools set sspr_warehouse",
        "install-postgres",
    ):
        assert needed in proc.stdout, needed


def test_status_without_a_server_says_how_to_start_one_and_stop_is_a_no_op(tmp_path):
    proc = _tool("status", "--dir", str(tmp_path))
    assert proc.returncode != 0 and "bin/metastore-db start" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _tool("stop", "--dir", str(tmp_path))
    assert proc.returncode == 0 and "nothing to stop" in proc.stderr


@pytest.fixture(scope="module")
def metastore_db():
    """A fresh PostgreSQL metastore (bin/metastore-db start); its SSPR__ settings; stopped after."""
    # under /tmp, not pytest's 0700 tmp folder: run as root, the server runs as user postgres
    folder = Path(tempfile.mkdtemp(prefix="sspr-metastore-db-"))
    proc = _tool("start", "--dir", str(folder), "--format", "json")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield folder, json.loads(proc.stdout)
    finally:
        _tool("stop", "--dir", str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def _psql(folder: Path, settings: dict, sql: str) -> str:
    state = json.loads((folder / "metastore-db.json").read_text())
    psql = max(Path("/usr/lib/postgresql").glob("*/bin/psql"))
    proc = subprocess.run(
        [
            str(psql),
            "-h",
            "127.0.0.1",
            "-p",
            str(state["port"]),
            "-U",
            state["user"],
            "-d",
            "sspr_metastore",
            "-tAc",
            sql,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": settings["SSPR__WAREHOUSE__METASTORE_PASSWORD"]},
        check=True,
    )
    return proc.stdout


def test_start_creates_the_hive_schema_once_and_status_reports_it(metastore_db):
    folder, settings = metastore_db
    assert settings["SSPR__WAREHOUSE__METASTORE_JDBC_URL"].startswith("jdbc:postgresql://127.0.0.1:")
    tables = set(_psql(folder, settings, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())
    assert {"DBS", "TBLS", "PARTITIONS", "PARTITION_KEY_VALS", "SDS", "TBL_PRIVS", "VERSION"} <= tables
    again = _tool("start", "--dir", str(folder), "--format", "json")  # already up: same settings
    assert again.returncode == 0 and json.loads(again.stdout) == settings
    status = _tool("status", "--dir", str(folder))
    assert status.returncode == 0 and json.loads(status.stdout)["up"] is True
    assert "datanucleus.properties" not in os.listdir(folder / "schema")  # it held the password


def _stamp(out: str, pattern: str) -> dt.datetime:
    match = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO .*" + pattern, out, re.MULTILINE)
    assert match, f"no log line matching {pattern!r}:\n{out[-3000:]}"
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.spark
@pytest.mark.slow
def test_two_dates_run_side_by_side_on_the_postgres_metastore(
    metastore_db, validate_days_at_once, assert_every_listing_stored, tmp_path
):
    folder, settings = metastore_db
    runs = validate_days_at_once(DAYS, settings)
    for day, (rc, out) in zip(DAYS, runs, strict=True):
        assert rc == 0, f"validate {day} failed (rc {rc}):\n{out[-3000:]}"
        assert "waiting for it to finish" not in out  # no metastore lock on a shared metastore
    # side by side: each application had its session (and metastore client) before the other ended
    ready = [_stamp(out, "spark session sspr-validate-.* ready") for _, out in runs]
    done = [_stamp(out, "stage validate done") for _, out in runs]
    assert max(ready) < min(done), f"sessions ready {ready}, stages done {done}: they took turns"

    # the tables live in PostgreSQL: no Derby database was made beside them
    assert not (tmp_path / "metastore" / "metastore_db").exists()
    parts = set(_psql(folder, settings, 'SELECT "PART_NAME" FROM "PARTITIONS"').split())
    assert {f"run_date={day}/stage=validate" for day in DAYS} <= parts
    assert_every_listing_stored(tmp_path / "warehouse", DAYS)
    recorded = json.loads((tmp_path / "runs" / f"run_date={DAYS[0]}" / "validate.config.json").read_text())
    assert recorded["warehouse"]["metastore_password"] == "***"


@pytest.mark.spark
def test_a_stopped_server_or_an_empty_database_is_a_clear_error_not_a_hang(metastore_db, tmp_path):
    folder, settings = metastore_db
    _psql(folder, settings, "SELECT 1")  # the server is up
    state = json.loads((folder / "metastore-db.json").read_text())
    createdb = max(Path("/usr/lib/postgresql").glob("*/bin/createdb"))
    subprocess.run(
        [str(createdb), "-h", "127.0.0.1", "-p", str(state["port"]), "-U", state["user"], "empty_metastore"],
        env={**os.environ, "PGPASSWORD": settings["SSPR__WAREHOUSE__METASTORE_PASSWORD"]},
        check=True,
    )
    url = settings["SSPR__WAREHOUSE__METASTORE_JDBC_URL"]
    cases = {
        "no Hive metastore tables": url.replace("/sspr_metastore", "/empty_metastore"),
        "does not answer": url.replace(f":{state['port']}/", f":{_closed_port()}/"),
    }
    procs = {}
    for expected, bad_url in cases.items():
        env = {
            **os.environ,
            **settings,
            "SSPR__WAREHOUSE__METASTORE_JDBC_URL": bad_url,
            "PYTHONPATH": str(REPO),
            "PYSPARK_PYTHON": sys.executable,
            "SSPR__PATHS__LISTINGS_ROOT": str(LISTINGS),
            **{
                f"SSPR__PATHS__{k.upper()}": str(tmp_path / expected / k)
                for k in ("warehouse_dir", "metastore_dir", "runs_dir")
            },
            "SSPR__SPARK__MASTER": "local[1]",
        }
        procs[expected] = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "validate.py"), "--run-date", DAYS[0]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for expected, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 2, f"rc {proc.returncode}:\n{out[-3000:]}"
        assert expected in out and "bin/metastore-db start" in out, out[-3000:]
        assert "Traceback" not in out


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when we return: nothing listens there
