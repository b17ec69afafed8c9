"""The Spark stages on a local session: validate, pairs, groups on small hand-made inputs.

Inputs here are synthetic (they test the stages' logic, not match quality); vectors are built by
hand so that which listings pair is known exactly. The real encoder runs in ``test_embed_stage``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from jobs.stage import StageContext
from schemas.tables import LISTINGS, TABLES

pytestmark = pytest.mark.spark

UTC = dt.UTC


def _ctx(spark, config, stage: str, run_date: str) -> StageContext:
    return StageContext(stage=stage, run_date=run_date, config=config, spark=spark, args=argparse.Namespace())


def _listing(listing_id, supplier_id="s1", title="t", image=None, hour=1, deleted=False, **extra):
    row = {name: None for name in LISTINGS.names}
    row.update(
        listing_id=listing_id,
        supplier_id=supplier_id,
        title=title,
        image=image,
        updated_at=dt.datetime(2024, 1, 1, hour, tzinfo=UTC),
        is_deleted=deleted,
        **extra,
    )
    return row


def _write_day(root: Path, day: str, rows: list[dict], name="part-0.parquet") -> None:
    folder = root / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LISTINGS), folder / name)


def _table_rows(config, table: str, run_date: str) -> pa.Table:
    """Reads a table's partition straight from its Parquet files (what any reader sees)."""
    path = Path(config.paths.warehouse_dir) / f"{config.warehouse.database}.db" / table
    if not (path / f"run_date={run_date}").is_dir():
        return pa.table({"run_date": pa.array([], pa.string())})  # no partition: no rows
    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    return dataset.to_table(filter=ds.field("run_date") == run_date)


def _check_contract(config, table: str, run_date: str) -> pa.Table:
    data = _table_rows(config, table, run_date)
    spec = TABLES[table]
    for field in spec.schema:
        if field.name in spec.partition_by:
            continue
        assert data.schema.field(field.name).type == field.type, (table, field.name)
    assert set(data.schema.names) == set(spec.schema.names), table
    return data


def test_validate_quarantines_with_rule_names_and_accounts_for_every_row(spark, pipeline_config):
    from jobs import validate

    day = "2024-01-01"
    rows = [
        _listing("a", title="ok"),
        _listing("b", supplier_id=None),
        _listing("c", title="   "),  # blank title, no image
        _listing("d", title="   ", image=b"\xff\xd8 not really a jpeg"),  # image present: valid here
        _listing("e", hour=1, price=1.0),
        _listing("e", hour=5, price=2.0),  # newer duplicate wins
        _listing(" ", title="x"),
    ]
    _write_day(Path(pipeline_config.paths.listings_root), day, rows)
    result = validate.run(_ctx(spark, pipeline_config, "validate", day))

    assert result.rows_in == len(rows)
    assert result.rows_in == result.rows_out + result.rows_quarantined
    quarantine = _check_contract(pipeline_config, "quarantine", day).to_pylist()
    rules = sorted((r["listing_id"], r["rule"]) for r in quarantine)
    assert rules == [
        (" ", "listing_id_not_blank"),
        ("b", "supplier_id_not_null"),
        ("c", "title_or_image_present"),
        ("e", "listing_id_unique"),
    ]
    kept = _check_contract(pipeline_config, "listings", day).to_pylist()
    assert sorted(r["listing_id"] for r in kept) == ["a", "d", "e"]
    assert [r["price"] for r in kept if r["listing_id"] == "e"] == [2.0]
    assert result.details["quarantined_by_rule"]["listing_id_unique"] == 1


def test_validate_quarantines_a_late_replay_of_an_older_version(spark, pipeline_config):
    """A row re-sent on a later day with an older updated_at never replaces the stored version."""
    from jobs import validate

    root = Path(pipeline_config.paths.listings_root)
    d1, d2, d3 = "2024-06-11", "2024-06-12", "2024-06-13"
    _write_day(root, d1, [_listing("late-x", title="v2 newest", hour=9)])
    _write_day(
        root,
        d2,
        [
            _listing("late-x", title="v1 replayed", hour=3),  # older than d1's
            _listing("late-y", title="new on d2", hour=1),
        ],
    )
    _write_day(root, d3, [_listing("late-x", title="v3 newer", hour=10)])
    validate.run(_ctx(spark, pipeline_config, "validate", d1))
    for _ in range(2):  # a rerun of d2 gives the same result
        result = validate.run(_ctx(spark, pipeline_config, "validate", d2))
        assert (result.rows_in, result.rows_out, result.rows_quarantined) == (2, 1, 1)
        assert result.details["quarantined_by_rule"] == {"stale_update": 1}
        [row] = _check_contract(pipeline_config, "quarantine", d2).to_pylist()
        assert (row["listing_id"], row["rule"]) == ("late-x", "stale_update")
        assert "run_date 2024-06-11" in row["detail"] and "09:00:00" in row["detail"]
        kept = _check_contract(pipeline_config, "listings", d2).to_pylist()
        assert [r["listing_id"] for r in kept] == ["late-y"]
    # a newer version on a later day is an ordinary update
    result = validate.run(_ctx(spark, pipeline_config, "validate", d3))
    assert (result.rows_out, result.rows_quarantined) == (1, 0)
    assert [r["title"] for r in _check_contract(pipeline_config, "listings", d3).to_pylist()] == ["v3 newer"]


def test_validate_rejects_a_file_missing_a_required_column(spark, pipeline_config, tmp_path):
    from config.errors import DedupError
    from jobs import validate

    folder = tmp_path / "dt=2024-01-09"
    folder.mkdir()
    pq.write_table(pa.table({"listing_id": ["x"], "title": ["t"]}), folder / "bad.parquet")
    with pytest.raises(DedupError, match="required column 'supplier_id' is missing"):
        validate.check_file_schemas(validate.list_day_files(str(tmp_path), "2024-01-09"))


def test_validate_empty_day_succeeds_with_zero_rows(spark, pipeline_config):
    from jobs import validate

    result = validate.run(_ctx(spark, pipeline_config, "validate", "2023-12-31"))
    assert (result.rows_in, result.rows_out) == (0, 0)
    assert result.details["empty_day"] is True


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


def _stored(v):
    """A vector as the embeddings table stores it (float16 bytes, ``schemas.vectors``)."""
    from schemas.vectors import pack_vectors

    return pack_vectors(np.asarray([v], dtype=np.float32))[0]


def _embedding(listing_id, supplier_id, vector, run_date, image=None, deleted=False, version="v1"):
    return {
        "listing_id": listing_id,
        "supplier_id": supplier_id,
        "updated_at": dt.datetime(2024, 1, 1, tzinfo=UTC),
        "is_deleted": deleted,
        "has_text": not deleted,
        "has_image": image is not None,
        "image_error": None,
        "emb_m": None if deleted else _stored(_unit(vector)),
        "emb_t": None if deleted else _stored(_unit(vector)),
        "emb_i": None if deleted else _stored(_unit(image) if image is not None else [0.0] * len(vector)),
        "model_version": None if deleted else version,
        "run_date": run_date,
    }


def _own_database(config, name):
    """The config with its own warehouse database: the catalogue chains nights, so a test's
    nights must not meet other tests' dates."""
    import dataclasses

    return dataclasses.replace(config, warehouse=dataclasses.replace(config.warehouse, database=name))


def _run_chained(spark, config, stage, run_date):
    """Runs a stage and records its run_metrics row, as run_stage does (later stages read it)."""
    import importlib

    from jobs.stage import record_metrics

    ctx = _ctx(spark, config, stage, run_date)
    result = importlib.import_module(f"jobs.{stage}").run(ctx)
    record_metrics(ctx, result, 0.0)
    return result


def _write_embeddings(spark, config, run_date, rows):
    from jobs.warehouse import replace_partition
    from schemas.tables import EMBEDDINGS, to_ddl

    df = spark.createDataFrame(rows, schema=to_ddl(EMBEDDINGS))
    replace_partition(spark, df, config.warehouse.database, "embeddings", {"run_date": run_date})


def test_pairs_and_groups_within_supplier_against_catalogue(spark, pipeline_config):
    pipeline_config = _own_database(pipeline_config, "stages_catalogue")
    d1, d2 = "2024-02-01", "2024-02-02"
    _write_embeddings(
        spark,
        pipeline_config,
        d1,
        [
            _embedding("old-a", "s1", [1, 0, 0, 0], d1, image=[1, 1, 0, 0]),
            _embedding("old-gone", "s1", [0, 1, 0, 0], d1),
            _embedding("other-supplier", "s2", [1, 0, 0, 0], d1),
        ],
    )
    _write_embeddings(
        spark,
        pipeline_config,
        d2,
        [
            _embedding("new-a", "s1", [1, 0.05, 0, 0], d2, image=[1, 0.9, 0, 0]),  # near old-a
            _embedding("new-a2", "s1", [1, 0.1, 0, 0], d2),  # near both, no image
            _embedding("new-b", "s1", [0, 0, 1, 0], d2),  # alone
            _embedding("old-gone", "s1", [0, 1, 0, 0], d2, deleted=True),  # leaves the catalogue
            _embedding("new-gone-twin", "s1", [0, 1, 0.01, 0], d2),  # its twin was deleted
        ],
    )
    config = pipeline_config
    for day in (d1, d2):
        _run_chained(spark, config, "catalog", day)
    _run_chained(spark, config, "pairs", d1)
    _run_chained(spark, config, "groups", d1)
    result = _run_chained(spark, config, "pairs", d2)
    found = _check_contract(config, "pairs", d2).to_pylist()
    got = sorted((p["listing_id_l"], p["listing_id_r"]) for p in found)
    assert got == [("new-a", "new-a2"), ("new-a", "old-a"), ("new-a2", "old-a")]
    assert all(p["supplier_id"] == "s1" for p in found)
    by_pair = {(p["listing_id_l"], p["listing_id_r"]): p for p in found}
    assert by_pair[("new-a", "old-a")]["similarity_i"] == pytest.approx(
        float(np.dot(_unit([1, 0.9, 0, 0]), _unit([1, 1, 0, 0]))), abs=1e-3
    )
    assert by_pair[("new-a", "new-a2")]["similarity_i"] is None  # new-a2 has no image
    assert result.rows_in == 4 and result.rows_out == 3
    # the plan: one task, s1's 4 new listings against its 5 live ones (old-gone left on d2)
    assert result.details["search_tasks"] == 1
    assert result.details["largest_task"] == {"supplier_id": "s1", "queries": 4, "catalogue_rows": 5}
    assert result.details["largest_task_share"] == 1.0
    assert result.details["candidates"] >= 3 and result.details["search_seconds"] >= 0.0

    result = _run_chained(spark, config, "groups", d2)
    grouped = _check_contract(config, "groups", d2).to_pylist()
    members = _check_contract(config, "group_members", d2).to_pylist()
    assert len(grouped) == 1 and grouped[0]["size"] == 3
    assert sorted((m["listing_id"], m["is_new"]) for m in members) == [
        ("new-a", True),
        ("new-a2", True),
        ("old-a", False),
    ]
    weakest = min(p["similarity_m"] for p in found)
    assert grouped[0]["weakest_similarity"] >= weakest - 1e-6

    # Rerunning a date replaces its partitions: same rows, no duplicates.
    _run_chained(spark, config, "pairs", d2)
    _run_chained(spark, config, "groups", d2)
    assert sorted((p["listing_id_l"], p["listing_id_r"]) for p in _table_rows(config, "pairs", d2).to_pylist()) == got
    assert len(_table_rows(config, "group_members", d2)) == 3

    # A catalogue bigger than dedup.catalogue_block_size is searched in (catalogue block x query
    # block) tasks: s1's 5 rows in blocks of 2 give the rows of the whole-catalogue task, and a
    # rerun gives the same values.
    import dataclasses

    blocked = dataclasses.replace(config, dedup=dataclasses.replace(config.dedup, catalogue_block_size=2))
    result = _run_chained(spark, blocked, "pairs", d2)
    assert result.details["blocked_suppliers"] == 1 and result.details["catalogue_block_size"] == 2
    assert result.details["search_tasks"] == 3  # one query block x 3 catalogue blocks
    assert result.details["largest_task"]["catalogue_rows"] == 2 and result.rows_out == 3

    def by_pair_rows():
        rows = _check_contract(blocked, "pairs", d2).to_pylist()
        return {(r["listing_id_l"], r["listing_id_r"]): r for r in rows}

    split = by_pair_rows()
    assert sorted(split) == got
    for key, row in split.items():
        for column in ("similarity_m", "similarity_t", "similarity_i"):
            if by_pair[key][column] is None:
                assert row[column] is None
            else:
                assert row[column] == pytest.approx(by_pair[key][column], abs=1e-6)
    _run_chained(spark, blocked, "pairs", d2)
    assert by_pair_rows() == split


def test_pairs_rerun_with_higher_threshold_drops_the_old_partition_rows(spark, pipeline_config):
    import dataclasses

    pipeline_config = _own_database(pipeline_config, "stages_rerun")
    d = "2024-03-05"
    _write_embeddings(
        spark, pipeline_config, d, [_embedding("x1", "s9", [1, 0, 0], d), _embedding("x2", "s9", [1, 0.3, 0], d)]
    )
    _run_chained(spark, pipeline_config, "catalog", d)
    _run_chained(spark, pipeline_config, "pairs", d)
    assert len(_table_rows(pipeline_config, "pairs", d)) == 1
    assert len(_table_rows(pipeline_config, "live_pairs", d)) == 1
    strict = dataclasses.replace(pipeline_config, dedup=dataclasses.replace(pipeline_config.dedup, min_similarity=0.99))
    _run_chained(spark, strict, "pairs", d)
    assert len(_table_rows(pipeline_config, "pairs", d)) == 0
    assert len(_table_rows(pipeline_config, "live_pairs", d)) == 0  # every bucket folder of the date went


def test_embed_stage_with_the_real_encoder(spark, pipeline_config):
    """Real MiniLM + EfficientNet weights inside Spark workers; a corrupt image falls back to text."""
    import io

    from PIL import Image

    from jobs import embed, validate

    day = "2024-01-20"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="JPEG")
    rows = [
        _listing("p1", title="apple iphone 12 64gb black"),
        _listing("p2", title="red mug", image=buffer.getvalue()),
        _listing("p3", title="garden hose 50ft", image=b"corrupt bytes"),
        _listing("p4", title="to delete", deleted=True),
    ]
    _write_day(Path(pipeline_config.paths.listings_root), day, rows)
    validate.run(_ctx(spark, pipeline_config, "validate", day))
    result = embed.run(_ctx(spark, pipeline_config, "embed", day))
    assert (result.rows_in, result.rows_out, result.rows_skipped) == (4, 3, 1)
    table = {r["listing_id"]: r for r in _check_contract(pipeline_config, "embeddings", day).to_pylist()}
    assert table["p4"]["is_deleted"] and table["p4"]["emb_m"] is None
    assert table["p2"]["has_image"] and not table["p1"]["has_image"]
    assert not table["p3"]["has_image"] and table["p3"]["image_error"]
    from encoder.config import stored_dim
    from schemas.vectors import VECTOR_BUDGET_BYTES, unpack_vectors

    dim = stored_dim(pipeline_config.encoder)
    for listing_id in ("p1", "p2", "p3"):
        stored = [table[listing_id][c] for c in ("emb_m", "emb_t", "emb_i")]
        assert [len(v) for v in stored] == [2 * dim] * 3  # float16, the neural width
        m = unpack_vectors([stored[0]], normalise=False)[0]
        assert abs(np.linalg.norm(m) - 1) < 2e-3  # unit up to float16 rounding
    if dim <= 256:  # the shipped eSSPR width fits the budget (zero-shot's 1,664 does not)
        assert 3 * 2 * dim <= VECTOR_BUDGET_BYTES
    assert len({table[k]["model_version"] for k in ("p1", "p2", "p3")}) == 1
    assert json.loads(json.dumps(result.details))["image_errors"] == 1


def test_a_table_of_an_older_vector_layout_is_refused_with_what_to_do(spark):
    """Vectors stored as array<float> (before float16 bytes) cannot be appended to: the stage
    says to move the warehouse away and backfill instead of failing inside a write."""
    from config.errors import DedupError
    from jobs.warehouse import ensure_tables
    from schemas.tables import EMBEDDINGS, to_ddl

    database = "stages_old_layout"
    old = to_ddl(EMBEDDINGS).replace("`emb_m` BINARY", "`emb_m` ARRAY<FLOAT>")
    assert old != to_ddl(EMBEDDINGS)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {database}.embeddings ({old}) USING parquet PARTITIONED BY (run_date)")
    with pytest.raises(DedupError, match=r"emb_m array<float> \(the contract: binary\).*backfill"):
        ensure_tables(spark, database, ["embeddings"])


def test_run_metrics_row_is_replaced_per_stage_and_matches_contract(spark, pipeline_config):
    from jobs.stage import StageResult, record_metrics

    day = "2024-01-30"
    ctx = _ctx(spark, pipeline_config, "validate", day)
    record_metrics(ctx, StageResult(5, 3, rows_quarantined=2, details={"files": 1}), 1.5)
    record_metrics(ctx, StageResult(7, 7, details={"files": 2}), 2.5)  # a rerun replaces the row
    record_metrics(_ctx(spark, pipeline_config, "embed", day), StageResult(7, 6, rows_skipped=1), 3.0)
    rows = _check_contract(pipeline_config, "run_metrics", day).to_pylist()
    by_stage = {r["stage"]: r for r in rows}
    assert len(rows) == 2
    assert (by_stage["validate"]["rows_in"], by_stage["validate"]["rows_quarantined"]) == (7, 0)
    assert json.loads(by_stage["validate"]["details"]) == {"files": 2}
    assert by_stage["embed"]["rows_skipped"] == 1


def test_pair_similarities_stay_within_unit_range():
    import pandas as pd

    from dedup.config import DedupConfig
    from encoder.config import EncoderConfig
    from jobs.pairs import find_block_pairs
    from schemas.vectors import unpack_vectors

    # This seeded vector, stored as float16 and renormalised in float32, has a self-similarity
    # of 1.0000001 (checked below), so the stage must clip it into the contract's [-1, 1].
    v = _stored(_unit(np.random.default_rng(4).normal(size=8)))
    searched = unpack_vectors([v])[0]
    assert np.einsum("d,d->", searched, searched) > 1.0
    queries = pd.DataFrame({"listing_id": ["a", "b"], "model_version": "v"})
    catalogue = queries.assign(emb_m=[v, v], emb_t=[v, v], emb_i=[v, v], has_text=True, has_image=True)
    out = find_block_pairs(
        ("s", 0),
        queries,
        catalogue,
        DedupConfig(min_similarity=0.5, max_results_per_query=5, backend="faiss", device="cpu"),
        EncoderConfig(),
    )
    pairs = out[out["kind"] == "pair"]
    assert len(pairs) == 1
    for column in ("similarity_m", "similarity_t", "similarity_i"):
        assert -1.0 <= pairs[column].iloc[0] <= 1.0
