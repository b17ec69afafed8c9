"""Several consecutive nights through the catalog, pairs and groups stages (real Spark, local).

Hand-built vectors make which listings pair known exactly, so the tests check the catalogue-level
behaviour: complete groups as of each night, ids that follow a group as it grows, merges and
splits with their lineage rows, the rerun policy, byte-identical backfills, independence from
shuffle partitions and row order, model versions that never meet, and the per-supplier read.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import random
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from config.errors import DedupError
from schemas.vectors import pack_vectors

pytestmark = pytest.mark.spark

UTC = dt.UTC
N1, N2, N3, N4 = "2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04"
STAGES = ("catalog", "pairs", "groups")

# Two clusters whose centres are 0.85 apart (below the default pair threshold 0.88) and a bridge
# between them (0.96 to each): a and b groups stay apart until the bridge arrives.
_U = np.array([1.0, 0, 0, 0, 0, 0, 0, 0])
_V = np.array([0.85, np.sqrt(1 - 0.85**2), 0, 0, 0, 0, 0, 0])


def _near(centre, k):
    noise = np.zeros(8)
    noise[2 + k % 6] = 0.05 * (1 + k // 6)
    v = centre + noise
    return v / np.linalg.norm(v)


def _far(k):
    v = np.zeros(8)
    v[2 + k] = 1.0
    return v


BRIDGE = (_U + _V) / np.linalg.norm(_U + _V)


def _row(listing_id, supplier_id, vector, run_date, *, deleted=False, version="v1", hour=1):
    vec = None if deleted else pack_vectors(np.asarray([vector], dtype=np.float32))[0]
    return {
        "listing_id": listing_id,
        "supplier_id": supplier_id,
        "updated_at": dt.datetime(2024, 1, 1, hour, tzinfo=UTC),
        "is_deleted": deleted,
        "has_text": not deleted,
        "has_image": False,
        "image_error": None,
        "emb_m": vec,
        "emb_t": vec,
        "emb_i": None if deleted else pack_vectors(np.zeros((1, 8), dtype=np.float32))[0],
        "model_version": None if deleted else version,
        "run_date": run_date,
    }


NIGHTS = {
    # night 1: groups a (a1, a2) and b (b1, b2) form; c1 is alone; s2 has its own group
    N1: [
        ("a1", "s1", _near(_U, 0)),
        ("a2", "s1", _near(_U, 1)),
        ("b1", "s1", _near(_V, 0)),
        ("b2", "s1", _near(_V, 1)),
        ("c1", "s1", _far(3)),
        ("z1", "s2", _near(_U, 0)),
        ("z2", "s2", _near(_U, 2)),
    ],
    # night 2: a0 (the smallest id) joins group a, which keeps its id
    N2: [("a0", "s1", _near(_U, 2))],
    # night 3: the bridge x links a and b: one group, a's id (its oldest member a1 is older)
    N3: [("x", "s1", BRIDGE)],
    # night 4: x is deleted and a2 changes to something else: b splits off again, a keeps its id
    N4: [("x", "s1", None, True), ("a2", "s1", _far(4))],
}


def _database(config, name):
    return dataclasses.replace(config, warehouse=dataclasses.replace(config.warehouse, database=name))


def _write_embeddings(spark, config, run_date, rows, *, version="v1", shuffle_seed=None):
    from jobs.warehouse import replace_partition
    from schemas.tables import EMBEDDINGS, to_ddl

    records = [
        _row(i, s, v, run_date, deleted=bool(rest and rest[0]), version=version, hour=int(run_date[-2:]))
        for i, s, v, *rest in rows
    ]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(records)
    df = spark.createDataFrame(records, schema=to_ddl(EMBEDDINGS))
    replace_partition(spark, df, config.warehouse.database, "embeddings", {"run_date": run_date})


def _run(spark, config, stage, run_date, backfill_through=None):
    """One stage as run_stage runs it: the rerun check, the body, the run_metrics row."""
    import importlib

    from jobs.stage import CHAINED_STAGES, StageContext, check_later_dates, record_metrics

    args = argparse.Namespace(backfill_through=backfill_through, reembed=False)
    ctx = StageContext(stage=stage, run_date=run_date, config=config, spark=spark, args=args)
    if stage in CHAINED_STAGES:
        check_later_dates(ctx)
    result = importlib.import_module(f"jobs.{stage}").run(ctx)
    record_metrics(ctx, result, 0.0)
    return result


def _rows(config, table, run_date):
    path = Path(config.paths.warehouse_dir) / f"{config.warehouse.database}.db" / table
    data = ds.dataset(path, format="parquet", partitioning="hive").to_table(filter=ds.field("run_date") == run_date)
    return data.to_pylist()


def _canonical(config, table, run_date):
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in _rows(config, table, run_date))


def _groups(config, run_date):
    """group_id -> sorted member ids, for supplier s1."""
    out: dict[str, list[str]] = {}
    for m in _rows(config, "group_members", run_date):
        if m["supplier_id"] == "s1":
            out.setdefault(m["group_id"], []).append(m["listing_id"])
    return {g: sorted(v) for g, v in out.items()}


def _id_of(groups, member):
    return next(g for g, members in groups.items() if member in members)


def _lineage(config, run_date):
    return sorted(
        (r["group_id"], r["event"], r["other_group_id"])
        for r in _rows(config, "group_lineage", run_date)
        if r["supplier_id"] == "s1"
    )


def _run_nights(spark, config, shuffle_seed=None):
    for night, rows in NIGHTS.items():
        _write_embeddings(spark, config, night, rows, shuffle_seed=shuffle_seed)
        for stage in STAGES:
            _run(spark, config, stage, night)


@pytest.fixture(scope="module")
def nights(spark, pipeline_config):
    config = _database(pipeline_config, "nights")
    _run_nights(spark, config)
    return config


def test_night_1_forms_groups_with_new_events(nights):
    groups = _groups(nights, N1)
    assert sorted(groups.values()) == [["a1", "a2"], ["b1", "b2"]]
    assert _lineage(nights, N1) == sorted((g, "new", None) for g in groups)
    # a pair is held together by its one edge
    assert all(g["has_bridge"] and g["size"] == 2 and g["created_on"] == N1 for g in _rows(nights, "groups", N1))


def test_night_2_keeps_the_id_of_a_group_a_smaller_id_joined_and_lists_every_group(nights):
    one, two = _groups(nights, N1), _groups(nights, N2)
    group_a = _id_of(one, "a1")
    assert two[group_a] == ["a0", "a1", "a2"]  # a0 < a1 joined: same id
    assert two[_id_of(one, "b1")] == ["b1", "b2"]  # untouched tonight, still listed
    assert _lineage(nights, N2) == []
    # the group shows all its pairs, also those found on night 1
    live = {(p["listing_id_l"], p["listing_id_r"]) for p in _rows(nights, "live_pairs", N2)}
    assert {("a1", "a2"), ("a0", "a1"), ("a0", "a2")} <= live
    assert {p["found_on"] for p in _rows(nights, "live_pairs", N2) if p["listing_id_l"] == "a1"} == {N1}
    members = {m["listing_id"]: m for m in _rows(nights, "group_members", N2)}
    assert members["a0"]["is_new"] and not members["a1"]["is_new"]
    assert members["a1"]["first_seen"] == N1 and members["a0"]["first_seen"] == N2
    assert {g["group_id"] for g in _rows(nights, "groups", N2) if g["supplier_id"] == "s2"}  # s2 kept too


def test_night_3_bridge_merges_two_groups_keeping_the_oldest_id(nights):
    one, three = _groups(nights, N1), _groups(nights, N3)
    group_a, group_b = _id_of(one, "a1"), _id_of(one, "b1")
    assert three == {group_a: ["a0", "a1", "a2", "b1", "b2", "x"]}
    assert _lineage(nights, N3) == [(group_a, "merge", group_b)]
    merged = next(g for g in _rows(nights, "groups", N3) if g["group_id"] == group_a)
    assert merged["created_on"] == N1 and merged["size"] == 6
    # x links both sides by several edges each: no single edge holds the group together
    assert merged["has_bridge"] is False


def test_night_4_update_and_delete_split_the_group(nights):
    one, four = _groups(nights, N1), _groups(nights, N4)
    group_a = _id_of(one, "a1")
    assert four[group_a] == ["a0", "a1"]  # the part holding the oldest member (a1) keeps the id
    new_b = _id_of(four, "b1")
    assert new_b not in one and four[new_b] == ["b1", "b2"]
    assert _lineage(nights, N4) == [(new_b, "split", group_a)]
    live = {(p["listing_id_l"], p["listing_id_r"]) for p in _rows(nights, "live_pairs", N4)}
    assert not any("x" in pair or "a2" in pair for pair in live)  # the deleted and the updated left
    catalogue = {r["listing_id"]: r for r in _rows(nights, "catalog", N4)}
    assert "x" not in catalogue and catalogue["a2"]["embedded_on"] == N4 and catalogue["a2"]["first_seen"] == N1


def test_rerunning_an_earlier_night_alone_is_refused(spark, nights):
    with pytest.raises(DedupError, match="dedup_backfill"):
        _run(spark, nights, "catalog", N2)


TABLES = ("catalog", "pairs", "live_pairs", "groups", "group_members", "group_lineage")


def test_a_backfill_of_nights_2_to_4_reproduces_the_tables_byte_for_byte(spark, nights):
    before = {(t, n): _canonical(nights, t, n) for t in TABLES for n in (N2, N3, N4)}
    for night in (N2, N3, N4):
        for stage in STAGES:
            _run(spark, nights, stage, night, backfill_through=N4)
    for table in TABLES:
        assert any(before[(table, n)] for n in (N2, N3, N4)), f"{table} is empty: the comparison proves nothing"
    for key, rows in before.items():
        assert _canonical(nights, *key) == rows, key


def test_group_ids_do_not_depend_on_shuffle_partitions_or_row_order(spark, pipeline_config, nights):
    other = _database(pipeline_config, "nights_shuffled")
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    try:
        _run_nights(spark, other, shuffle_seed=3)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", str(pipeline_config.spark.shuffle_partitions))
    for night in NIGHTS:
        assert _groups(other, night) == _groups(nights, night), night
        assert _lineage(other, night) == _lineage(nights, night), night


def test_the_catalogue_built_from_history_equals_the_nightly_merge(spark, pipeline_config, nights):
    """A warehouse without earlier catalogues (an upgrade) builds night 4 from the whole history."""
    from jobs.catalog import catalogue_from_history

    embeddings = spark.table(f"{nights.warehouse.database}.embeddings")
    listings = spark.table(f"{nights.warehouse.database}.listings")
    rebuilt = catalogue_from_history(embeddings, listings, N4).collect()
    merged = {r["listing_id"]: r for r in _rows(nights, "catalog", N4)}
    assert {r["listing_id"] for r in rebuilt} == set(merged)
    for r in rebuilt:
        for column in ("embedded_on", "first_seen", "model_version", "emb_m"):
            assert r[column] == merged[r["listing_id"]][column], (r["listing_id"], column)


def test_the_pairs_stage_reads_only_the_day_suppliers_catalogue_folders(spark, nights):
    from jobs.catalog import read_catalogue, suppliers_buckets

    n = nights.warehouse.supplier_buckets
    day = suppliers_buckets(["s1"], spark, n)
    every = suppliers_buckets(["s1", "s2"], spark, n)
    assert day != every, "s1 and s2 share a bucket: pick other supplier ids"
    files = read_catalogue(spark, nights.warehouse.database, N4, day).inputFiles()
    assert files and all(any(f"supplier_bucket={b}/" in f for b in day) for f in files)
    assert all("s2" != r["supplier_id"] for r in read_catalogue(spark, nights.warehouse.database, N4, day).collect())
    metrics = {r["stage"]: json.loads(r["details"]) for r in _rows(nights, "run_metrics", N4)}
    assert metrics["pairs"]["catalogue_buckets_read"] == len(day)
    # three 8-wide float16 vectors a listing: the catalog stage states the vector bytes
    assert metrics["catalog"]["vector_bytes_per_listing_max"] == 3 * 8 * 2
    assert metrics["catalog"]["vector_bytes"] == 3 * 8 * 2 * metrics["catalog"]["listings"]


def test_vectors_of_two_model_versions_are_never_paired(spark, pipeline_config):
    config = _database(pipeline_config, "versions")
    _write_embeddings(spark, config, N1, [("m1", "s1", _near(_U, 0)), ("m2", "s1", _near(_U, 1))])
    for stage in STAGES:
        _run(spark, config, stage, N1)
    # a new model: tonight's listing is v2, the catalogue's are v1
    _write_embeddings(spark, config, N2, [("m3", "s1", _near(_U, 2))], version="v2")
    for stage in STAGES:
        _run(spark, config, stage, N2)
    assert _rows(config, "pairs", N2) == []
    versions = {r["listing_id"]: r["model_version"] for r in _rows(config, "catalog", N2)}
    for p in _rows(config, "live_pairs", N2):
        assert versions[p["listing_id_l"]] == versions[p["listing_id_r"]] == p["model_version"]
    assert _groups(config, N2) == {_id_of(_groups(config, N1), "m1"): ["m1", "m2"]}


def _listing_row(listing_id, title, hour):
    from schemas.tables import LISTINGS

    row = {name: None for name in LISTINGS.names}
    row.update(
        listing_id=listing_id,
        supplier_id="s1",
        title=title,
        updated_at=dt.datetime(2024, 1, 1, hour, tzinfo=UTC),
        is_deleted=False,
    )
    return row


def _write_listings(config, day, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.tables import LISTINGS

    folder = Path(config.paths.listings_root) / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=LISTINGS), folder / "part-0.parquet")


def test_reembed_moves_the_whole_catalogue_to_the_new_model_version(spark, pipeline_config, tmp_path):
    """The real zero-shot encoder; the model changes between nights (another image size)."""
    from encoder.factory import compute_model_version
    from jobs.stage import StageContext, record_metrics

    old = dataclasses.replace(
        _database(pipeline_config, "reembed"),
        paths=dataclasses.replace(pipeline_config.paths, listings_root=str(tmp_path / "listings")),
        dedup=dataclasses.replace(pipeline_config.dedup, min_similarity=0.8),
    )
    new = dataclasses.replace(old, encoder=dataclasses.replace(old.encoder, image_size=192))
    old_version, new_version = compute_model_version(old.encoder), compute_model_version(new.encoder)
    assert old_version != new_version
    _write_listings(
        old,
        N1,
        [
            _listing_row("r1", "stainless steel water bottle 750 ml", 1),
            _listing_row("r2", "stainless steel water bottle 750ml", 1),
            _listing_row("r3", "garden hose 50 ft green", 1),
        ],
    )
    _write_listings(old, N2, [_listing_row("r4", "wooden chess board set", 2)])

    def run(config, stage, day, reembed=False):
        import importlib

        args = argparse.Namespace(backfill_through=None, reembed=reembed)
        ctx = StageContext(stage=stage, run_date=day, config=config, spark=spark, args=args)
        result = importlib.import_module(f"jobs.{stage}").run(ctx)
        record_metrics(ctx, result, 0.0)
        return result

    for stage in ("validate", "embed", *STAGES):
        run(old, stage, N1)
    assert {r["model_version"] for r in _rows(old, "catalog", N1)} == {old_version}
    assert [(p["listing_id_l"], p["listing_id_r"]) for p in _rows(old, "live_pairs", N1)] == [("r1", "r2")]
    embedded = {}
    for stage in ("validate", "embed", *STAGES):
        embedded[stage] = run(new, stage, N2, reembed=True)
    assert embedded["embed"].details["reembedded"] == 3
    catalogue = _rows(new, "catalog", N2)
    assert sorted(r["listing_id"] for r in catalogue) == ["r1", "r2", "r3", "r4"]
    assert {r["model_version"] for r in catalogue} == {new_version}
    assert {r["embedded_on"] for r in catalogue} == {N2}
    assert {r["listing_id"]: r["first_seen"] for r in catalogue} == {"r1": N1, "r2": N1, "r3": N1, "r4": N2}
    assert {r["title"] for r in catalogue if r["listing_id"] == "r1"} == {"stainless steel water bottle 750 ml"}
    live = _rows(new, "live_pairs", N2)
    # the old-version pair was dropped and found again with the new vectors
    assert [(p["listing_id_l"], p["listing_id_r"], p["found_on"], p["model_version"]) for p in live] == [
        ("r1", "r2", N2, new_version)
    ]
    assert embedded["pairs"].details["stale_model_version"] == 0


def test_a_broken_chain_of_nights_stops_with_what_to_rerun(spark, pipeline_config):
    config = _database(pipeline_config, "gaps")
    for night in (N1, N2, N3):
        _write_embeddings(spark, config, night, [(f"g-{night}", "s1", _near(_U, int(night[-1])))])
    _run(spark, config, "catalog", N1)
    with pytest.raises(DedupError, match=rf"would miss the embeddings of \['{N2}'\]"):
        _run(spark, config, "catalog", N3)  # N2 was never catalogued
    _run(spark, config, "catalog", N2)
    with pytest.raises(DedupError, match=f"pairs stage did not finish for {N1}.*dedup_backfill start_date={N1}"):
        _run(spark, config, "pairs", N2)
    with pytest.raises(DedupError, match=f"the pairs stage has not run for {N2}"):
        _run(spark, config, "groups", N2)
