"""Tests for schemas/tables.py (the table contracts) and schemas/expectations.py (the GX row rules)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from schemas.expectations import ALL_RULES, DAY_RULES, ROW_RULES, ListingsValidator, add_helper_columns
from schemas.tables import (
    LISTINGS,
    LISTINGS_REQUIRED_COLUMNS,
    PAIRS,
    TABLES,
    TableSpec,
    to_ddl,
    to_ddl_type,
)

SPECS = list(TABLES.values())


# --- tables ---------------------------------------------------------------------------------------


def test_tables_are_keyed_by_their_name():
    assert set(TABLES) == {
        "listings",
        "quarantine",
        "embeddings",
        "catalog",
        "pairs",
        "live_pairs",
        "groups",
        "group_members",
        "group_lineage",
        "run_metrics",
    }
    for name, spec in TABLES.items():
        assert spec.name == name


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_partition_columns_exist_and_come_last(spec: TableSpec):
    names = spec.schema.names
    assert spec.partition_by, "every table is partitioned"
    assert set(spec.partition_by) <= set(names)
    assert tuple(names[-len(spec.partition_by) :]) == spec.partition_by
    assert len(names) == len(set(names)), "duplicate column names"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_data_columns_exclude_partition_columns(spec: TableSpec):
    data = spec.data_columns
    assert not set(data) & set(spec.partition_by)
    assert data + list(spec.partition_by) == spec.schema.names


def test_run_metrics_partitioned_by_run_date_and_stage():
    spec = TABLES["run_metrics"]
    assert spec.partition_by == ("run_date", "stage")
    assert "stage" not in spec.data_columns and "run_date" not in spec.data_columns
    assert "rows_in" in spec.data_columns


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_to_ddl_renders_every_schema(spec: TableSpec):
    ddl = to_ddl(spec.schema)
    columns = ddl.split(", ")
    assert len(columns) == len(spec.schema.names)
    for column, name in zip(columns, spec.schema.names, strict=True):
        assert column.startswith(f"`{name}` ")


def test_to_ddl_type_strings():
    embeddings = to_ddl(TABLES["embeddings"].schema)
    assert "`emb_m` BINARY" in embeddings
    assert "`updated_at` TIMESTAMP" in embeddings
    assert "`is_deleted` BOOLEAN" in embeddings
    listings = to_ddl(LISTINGS)
    assert "`image` BINARY" in listings
    assert "`price` DOUBLE" in listings
    assert "`listing_id` STRING" in listings
    assert "`size` BIGINT" in to_ddl(TABLES["groups"].schema)
    assert to_ddl_type(pa.list_(pa.float32())) == "ARRAY<FLOAT>"
    assert to_ddl_type(pa.timestamp("us", tz="UTC")) == "TIMESTAMP"
    assert to_ddl_type(pa.binary()) == "BINARY"
    assert to_ddl_type(pa.int32()) == "INT"


def test_to_ddl_column_subset_and_order():
    assert to_ddl(PAIRS, ["similarity_m", "supplier_id"]) == "`similarity_m` FLOAT, `supplier_id` STRING"


def test_to_ddl_unknown_column_raises():
    with pytest.raises(KeyError):
        to_ddl(PAIRS, ["no_such_column"])


@pytest.mark.parametrize("arrow_type", [pa.date32(), pa.int8(), pa.timestamp("ms"), pa.list_(pa.date32())])
def test_to_ddl_raises_for_unmapped_type(arrow_type):
    schema = pa.schema([pa.field("ok", pa.string()), pa.field("d", arrow_type)])
    with pytest.raises(ValueError, match="no Spark SQL type"):
        to_ddl(schema)


def test_pairs_contract():
    names = PAIRS.names
    for column in ("supplier_id", "listing_id_l", "listing_id_r", "similarity_m", "similarity_t", "similarity_i"):
        assert column in names
    for column in ("similarity_m", "similarity_t", "similarity_i"):
        assert PAIRS.field(column).type == pa.float32()
    assert TABLES["pairs"].schema is PAIRS


def test_listings_required_columns_are_in_the_contract():
    assert set(LISTINGS_REQUIRED_COLUMNS) <= set(LISTINGS.names)
    assert "listing_id" in LISTINGS_REQUIRED_COLUMNS


def test_validated_listings_extend_the_input_contract():
    validated = TABLES["listings"].schema
    assert validated.names[: len(LISTINGS.names)] == LISTINGS.names
    for field in LISTINGS:
        assert validated.field(field.name).type == field.type


# --- expectations ---------------------------------------------------------------------------------


def test_rule_lists():
    assert ALL_RULES == ROW_RULES + DAY_RULES
    assert len(set(ALL_RULES)) == len(ALL_RULES)


@pytest.fixture(scope="module")
def validator() -> ListingsValidator:
    return ListingsValidator()


_TS = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
_JPEG_ISH = b"\xff\xd8\xff\xe0fake"


def _frame(rows: list[dict], index: list[int]) -> pd.DataFrame:
    base = {
        "listing_id": "L",
        "supplier_id": "S",
        "title": "A title",
        "updated_at": _TS,
        "image": None,
        "image_uri": None,
    }
    return pd.DataFrame([base | row for row in rows], index=index)


def test_helper_column_title_or_image():
    frame = _frame(
        [
            {"title": "  "},
            {"title": "  ", "image": _JPEG_ISH},
            {"title": None, "image_uri": "s3://img"},
            {"title": None, "image_uri": "  "},
            {"title": "x"},
        ],
        index=[0, 1, 2, 3, 4],
    )
    assert add_helper_columns(frame)["_title_or_image"].tolist() == [False, True, True, False, True]
    assert "_title_or_image" not in frame  # a copy, not in place


def test_helper_column_from_has_image_bytes_flag():
    frame = pd.DataFrame({"title": ["", ""], "image_uri": [None, None], "_has_image_bytes": [True, None]})
    assert add_helper_columns(frame)["_title_or_image"].tolist() == [True, False]


def test_failed_rules_names_the_rule_per_row(validator):
    frame = _frame(
        [
            {"listing_id": "ok-1"},  # 10: valid
            {"listing_id": "n-sup", "supplier_id": None},  # 11
            {"listing_id": "   "},  # 12
            {"listing_id": "no-title", "title": "  "},  # 13
            {"listing_id": "bytes", "title": "", "image": _JPEG_ISH},  # 14: passes
            {"listing_id": "uri", "title": None, "image_uri": "https://x/y.jpg"},  # 15: passes
            {"listing_id": "n-upd", "updated_at": None},  # 16
            {"listing_id": None},  # 17
            {"listing_id": "blank-sup", "supplier_id": " \t"},  # 18
        ],
        index=[10, 11, 12, 13, 14, 15, 16, 17, 18],
    )
    failed = validator.failed_rules(frame)
    assert list(failed.columns) == ["rule", "detail"]
    assert sorted(failed.index) == [11, 12, 13, 16, 17, 18]
    assert failed.loc[11, "rule"] == "supplier_id_not_null"
    assert failed.loc[12, "rule"] == "listing_id_not_blank"
    assert failed.loc[13, "rule"] == "title_or_image_present"
    assert failed.loc[16, "rule"] == "updated_at_not_null"
    assert failed.loc[17, "rule"] == "listing_id_not_null"
    assert failed.loc[18, "rule"] == "supplier_id_not_blank"
    for index in (11, 12, 13, 16, 18):
        assert failed.loc[index, "detail"] == failed.loc[index, "rule"]


def test_row_breaking_two_rules_reports_first_in_order(validator):
    frame = _frame(
        [
            {"listing_id": "ok"},
            # title_or_image_present and supplier_id_not_null: supplier rule comes first in ROW_RULES
            {"listing_id": "two", "supplier_id": None, "title": " "},
            {"listing_id": " ", "updated_at": None},
        ],
        index=[5, 3, 9],
    )
    failed = validator.failed_rules(frame)
    assert sorted(failed.index) == [3, 9]
    assert failed.loc[3, "rule"] == "supplier_id_not_null"
    assert failed.loc[3, "detail"] == "supplier_id_not_null,title_or_image_present"
    assert failed.loc[9, "rule"] == "listing_id_not_blank"
    assert failed.loc[9, "detail"] == "listing_id_not_blank,updated_at_not_null"


def test_all_valid_frame_gives_empty_result(validator):
    frame = _frame([{"listing_id": "a"}, {"listing_id": "b", "title": "", "image_uri": "u"}], index=[0, 1])
    failed = validator.failed_rules(frame)
    assert failed.empty
    assert list(failed.columns) == ["rule", "detail"]


def test_empty_frame_gives_empty_result(validator):
    failed = validator.failed_rules(_frame([], index=[]))
    assert failed.empty
    assert list(failed.columns) == ["rule", "detail"]


def test_named_index_works(validator):
    frame = _frame(
        [{"listing_id": "ok"}, {"listing_id": "bad", "supplier_id": None}, {"listing_id": "x", "title": None}],
        index=[100, 200, 300],
    )
    frame.index.name = "row_id"
    failed = validator.failed_rules(frame)
    assert sorted(failed.index) == [200, 300]
    assert failed.loc[200, "rule"] == "supplier_id_not_null"
    assert failed.loc[300, "rule"] == "title_or_image_present"
    assert frame.index.name == "row_id"  # the caller's frame is not changed
