"""Checks the committed sample listings in ``examples/`` and that the builder reproduces them."""

from __future__ import annotations

import collections
import csv
import io
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from schemas.tables import LISTINGS

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SHARED = REPO.parent / "shared" / "datasets"
DAYS = ("2024-03-01", "2024-03-02", "2024-03-03")
MAX_TOTAL_BYTES = 5 * 1024 * 1024

EXPECTED_SCHEMA = LISTINGS  # the contract in schemas/tables.py


def day_file(listings: Path, day: str) -> Path:
    """Returns the Parquet file of one day."""
    return listings / f"dt={day}" / "part-00000.parquet"


def read_day(day: str, root: Path = EXAMPLES) -> pa.Table:
    """Reads one day of committed (or rebuilt) listings."""
    return pq.read_table(day_file(root / "listings", day))


def read_csv(path: Path) -> list[dict[str, str]]:
    """Reads a ground-truth CSV into dicts."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def days() -> dict[str, list[dict]]:
    """Every committed day as a list of row dicts."""
    return {day: read_day(day).to_pylist() for day in DAYS}


def test_day_folders_exist():
    folders = sorted(p.name for p in (EXAMPLES / "listings").iterdir() if p.is_dir())
    assert folders == [f"dt={day}" for day in DAYS]
    for day in DAYS:
        assert day_file(EXAMPLES / "listings", day).is_file()


@pytest.mark.parametrize("day", DAYS)
def test_schema_is_exactly_the_contract(day):
    schema = pq.read_schema(day_file(EXAMPLES / "listings", day))
    assert schema.equals(EXPECTED_SCHEMA, check_metadata=False), schema


@pytest.mark.parametrize("day", DAYS)
def test_updated_at_within_day_and_required_columns(days, day):
    for row in days[day]:
        assert row["listing_id"], row
        assert row["updated_at"].date().isoformat() == day
        assert row["image_uri"] is None
        if row["price"] is not None:
            assert row["price"] > 0 and row["currency"] in {"USD", "GBP"}
        else:
            assert row["currency"] is None


def test_duplicate_ground_truth_exists_in_listings(days):
    supplier_of = {}
    for rows in days.values():
        for row in rows:
            if row["supplier_id"] is not None:
                supplier_of[row["listing_id"]] = row["supplier_id"]
    truth = read_csv(EXAMPLES / "ground_truth" / "duplicates.csv")
    assert truth and list(truth[0]) == ["supplier_id", "listing_id", "product_id"]
    for rec in truth:
        assert supplier_of.get(rec["listing_id"]) == rec["supplier_id"], rec
    assert len({rec["listing_id"] for rec in truth}) == len(truth)


def test_every_duplicate_group_has_two_members_in_one_supplier():
    truth = read_csv(EXAMPLES / "ground_truth" / "duplicates.csv")
    groups = collections.defaultdict(set)
    for rec in truth:
        groups[(rec["supplier_id"], rec["product_id"])].add(rec["listing_id"])
    assert len(groups) >= 50
    for key, members in groups.items():
        assert len(members) >= 2, key
    suppliers = {s for s, _ in groups}
    assert suppliers == {"google-products", "amazon", "buy", "abt", "grocer-north", "grocer-south"}


def test_some_duplicates_arrive_on_different_days(days):
    day_of = {row["listing_id"]: day for day, rows in days.items() for row in rows}
    truth = read_csv(EXAMPLES / "ground_truth" / "duplicates.csv")
    spans = collections.defaultdict(set)
    for rec in truth:
        spans[rec["product_id"], rec["supplier_id"]].add(day_of[rec["listing_id"]])
    assert any(len(d) > 1 for d in spans.values())
    assert any(len(d) == 1 for d in spans.values())


def test_images_present_on_some_rows_and_decode(days):
    with_image = without_image = 0
    for rows in days.values():
        for row in rows:
            if row["image"] is None:
                without_image += 1
                continue
            with_image += 1
            with Image.open(io.BytesIO(row["image"])) as image:
                image.load()
                assert image.format == "JPEG"
                assert max(image.size) <= 256
    assert with_image > 0 and without_image > 0


def test_listing_ids_unique_per_day_except_the_fault_row(days):
    quarantine = read_csv(EXAMPLES / "ground_truth" / "quarantine.csv")
    allowed = {(q["run_date"], q["listing_id"]) for q in quarantine if q["rule"] == "listing_id_unique"}
    assert allowed
    for day, rows in days.items():
        counts = collections.Counter(row["listing_id"] for row in rows)
        repeated = {(day, lid) for lid, n in counts.items() if n > 1}
        assert repeated == {key for key in allowed if key[0] == day}


def test_quarantine_rows_break_their_rule(days):
    quarantine = read_csv(EXAMPLES / "ground_truth" / "quarantine.csv")
    assert {q["rule"] for q in quarantine} == {"supplier_id_not_null", "title_or_image_present", "listing_id_unique"}
    for q in quarantine:
        rows = [r for r in days[q["run_date"]] if r["listing_id"] == q["listing_id"]]
        assert rows, q
        if q["rule"] == "supplier_id_not_null":
            assert rows[0]["supplier_id"] is None
        elif q["rule"] == "title_or_image_present":
            assert rows[0]["title"] is None and rows[0]["image"] is None
        else:
            assert len(rows) == 2 and rows[0]["updated_at"] != rows[1]["updated_at"]


def test_day3_update_and_deletion(days):
    changes = read_csv(EXAMPLES / "ground_truth" / "changes.csv")
    assert sorted(c["event"] for c in changes) == ["deleted", "updated"]
    day1 = {r["listing_id"]: r for r in days[DAYS[0]]}
    for change in changes:
        new = [r for r in days[change["run_date"]] if r["listing_id"] == change["listing_id"]]
        assert len(new) == 1
        old = day1[change["listing_id"]]
        assert new[0]["updated_at"] > old["updated_at"]
        assert new[0]["title"] == old["title"]
        if change["event"] == "deleted":
            assert new[0]["is_deleted"] is True
        else:
            assert new[0]["price"] != old["price"] and not new[0]["is_deleted"]


def test_total_size_within_budget():
    total = sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total <= MAX_TOTAL_BYTES, total


def test_builder_is_deterministic(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"../shared/datasets not present: cannot rebuild the sample ({SHARED})")
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "build_samples.py"),
            "--shared",
            str(SHARED),
            "--out",
            str(tmp_path),
            "--log-level",
            "WARNING",
        ],
        check=True,
    )
    for day in DAYS:
        rebuilt, committed = read_day(day, tmp_path), read_day(day)
        assert rebuilt.equals(committed), f"dt={day} differs from the committed sample"
    for name in ("duplicates.csv", "quarantine.csv", "changes.csv", "GROCERYSTORE_LICENSE"):
        rebuilt = (tmp_path / "ground_truth" / name).read_bytes()
        assert rebuilt == (EXAMPLES / "ground_truth" / name).read_bytes(), name
    assert (tmp_path / "README.md").read_text() == (EXAMPLES / "README.md").read_text()
