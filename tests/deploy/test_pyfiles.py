"""The --py-files archive (bin/build-pyfiles): what executors on a cluster import the project from."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "bin" / "build-pyfiles"


def _build(out: Path) -> Path:
    proc = subprocess.run([sys.executable, str(BUILD), "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out.resolve())
    return out


def test_the_archive_holds_every_source_the_jobs_import_and_is_reproducible(tmp_path):
    first = _build(tmp_path / "a" / "sspr_dedup.zip")
    second = _build(tmp_path / "b" / "sspr_dedup.zip")
    assert first.read_bytes() == second.read_bytes()  # same sources, same bytes
    names = set(zipfile.ZipFile(first).namelist())
    for package in ("config", "dedup", "encoder", "jobs", "schemas"):
        sources = {p.relative_to(REPO).as_posix() for p in (REPO / package).rglob("*.py")}
        assert sources and sources <= names, package
    assert not any("__pycache__" in n or n.startswith(("tests/", "dags/")) for n in names)
    assert not (tmp_path / "a" / "sspr_dedup.zip.partial").exists()


def test_a_python_given_the_archive_imports_the_jobs_from_it(tmp_path):
    """What a Spark executor does with --py-files: the archive goes first on sys.path."""
    archive = _build(tmp_path / "sspr_dedup.zip")
    probe = "import jobs.pairs, schemas.vectors; print(jobs.pairs.__file__); print(schemas.vectors.VECTOR_BUDGET_BYTES)"
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": str(archive), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    where, budget = proc.stdout.split()
    assert where.startswith(str(archive) + "/") and budget == "2048"
