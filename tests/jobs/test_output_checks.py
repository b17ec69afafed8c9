"""Output checks: the GX output suites (schemas/expectations.py) and publish (jobs/warehouse.py).

Each rule gets a frame that breaks it (the check must fail with that rule named and the offending id
shown) and the shared good frame of its table must pass every rule. The publish tests write through
the real ``replace_partition`` on the local Hive warehouse and show that a failed check leaves the
previous partitions in place, including when the failing output is not the first one written.
Vectors are 4-d here; the checks take the width as a parameter.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from config.errors import DedupError
from schemas.expectations import OUTPUT_RULES
from schemas.tables import EMBEDDINGS, GROUP_MEMBERS, GROUPS, PAIRS, to_ddl

pytestmark = pytest.mark.spark

UTC = dt.UTC
DIM = 4
RUN_DATE = "2024-05-01"


def _unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


def _stored(vector):
    """The stored form (float16 bytes, schemas.vectors) of a vector given as floats; NaN kept."""
    return None if vector is None else np.asarray(vector, dtype="<f2").tobytes()


def _embedding(
    listing_id, emb_m=None, emb_t=None, emb_i=None, has_text=True, has_image=False, deleted=False, supplier_id="s1"
):
    return {
        "listing_id": listing_id,
        "supplier_id": supplier_id,
        "updated_at": dt.datetime(2024, 5, 1, tzinfo=UTC),
        "is_deleted": deleted,
        "has_text": has_text,
        "has_image": has_image,
        "image_error": None,
        "emb_m": _stored(emb_m),
        "emb_t": _stored(emb_t),
        "emb_i": _stored(emb_i),
        "model_version": None if deleted else "v1",
        "run_date": RUN_DATE,
    }


def _good_embeddings() -> list[dict]:
    return [
        _embedding("text-only", _unit(1, 1, 0, 0), _unit(1, 1, 0, 0), [0.0] * DIM),
        _embedding("with-image", _unit(1, 0, 1, 0), _unit(1, 0, 0, 0), _unit(0, 0, 1, 0), has_image=True),
        _embedding("image-only", _unit(0, 0, 1, 1), [0.0] * DIM, _unit(0, 0, 1, 1), has_text=False, has_image=True),
        _embedding("tombstone", deleted=True, has_text=False),  # null vectors: exempt
        _embedding("not-embeddable", has_text=False),  # null vectors: exempt
    ]


def _pair(left, right, similarity_m=0.9, similarity_t=0.8, similarity_i=None, supplier_id="s1", match_score=0.7):
    return {
        "supplier_id": supplier_id,
        "listing_id_l": left,
        "listing_id_r": right,
        "similarity_m": similarity_m,
        "similarity_t": similarity_t,
        "similarity_i": similarity_i,
        "match_score": match_score,
        "model_version": "v1",
        "run_date": RUN_DATE,
    }


SUPPLIERS = [("a", "s1"), ("b", "s1"), ("c", "s1"), ("x", "s2"), ("y", "s2")]


def _good_pairs() -> list[dict]:
    return [
        _pair("a", "b", 1.0, 1.0, -1.0, match_score=1.0),
        _pair("a", "c", 0.85, match_score=None),  # no verifier: null
        _pair("x", "y", 0.95, supplier_id="s2", match_score=0.0),
    ]


def _group(group_id, size=2, supplier_id="s1"):
    return {
        "supplier_id": supplier_id,
        "group_id": group_id,
        "size": size,
        "weakest_similarity": 0.8,
        "strongest_similarity": 0.9,
        "representative": "a",
        "run_date": RUN_DATE,
    }


def _member(group_id, listing_id, supplier_id="s1", is_new=True):
    return {
        "supplier_id": supplier_id,
        "group_id": group_id,
        "listing_id": listing_id,
        "is_new": is_new,
        "run_date": RUN_DATE,
    }


def _good_groups() -> list[dict]:
    return [_group("g1", 3), _group("g2", 2, supplier_id="s2")]


def _good_members() -> list[dict]:
    return [
        _member("g1", "a"),
        _member("g1", "b"),
        _member("g1", "c", is_new=False),
        _member("g2", "x", "s2"),
        _member("g2", "y", "s2"),
    ]


SCHEMAS = {"embeddings": EMBEDDINGS, "pairs": PAIRS, "groups": GROUPS, "group_members": GROUP_MEMBERS}
GOOD = {"embeddings": _good_embeddings, "pairs": _good_pairs, "groups": _good_groups, "group_members": _good_members}


def _frame(spark, table: str, rows: list[dict]):
    return spark.createDataFrame(rows, schema=to_ddl(SCHEMAS[table]))


def _check(spark, table: str, rows: list[dict]):
    from jobs.warehouse import check_output

    suppliers = spark.createDataFrame(SUPPLIERS, "listing_id STRING, supplier_id STRING")
    return check_output(_frame(spark, table, rows), table, embedding_dim=DIM, listing_suppliers=suppliers)


# --- one good frame per table passes every rule --------------------------------------------------


@pytest.mark.parametrize("table", sorted(OUTPUT_RULES))
def test_good_output_passes_every_rule(spark, table):
    results = _check(spark, table, GOOD[table]())
    assert [r.rule for r in results] == list(OUTPUT_RULES[table])
    assert [r.describe() for r in results if not r.success] == []
    assert all(r.unexpected_count == 0 and r.examples == () for r in results)


# --- each rule: a frame that breaks it fails with the rule and the offending id -----------------

_bad_norm = _good_embeddings()[:1] + [_embedding("long-m", [1.0, 1.0, 0.0, 0.0], _unit(1, 0, 0, 0), [0.0] * DIM)]
_bad_zero = _good_embeddings()[:1] + [
    _embedding("stray-i", _unit(1, 0, 0, 0), _unit(1, 0, 0, 0), _unit(0, 1, 0, 0), has_image=False)
]
_bad_nan = _good_embeddings()[:1] + [_embedding("nan-t", _unit(1, 0, 0, 0), [float("nan"), 0.0, 0.0, 0.0], [0.0] * DIM)]
_bad_size = _good_embeddings()[:1] + [_embedding("short-t", _unit(1, 0, 0, 0), _unit(1, 0, 0), [0.0] * DIM)]
_bad_supplier = _good_pairs() + [_pair("a", "x")]  # x belongs to s2
_bad_unknown = _good_pairs() + [_pair("a", "ghost")]  # ghost is in no catalogue
_bad_sim_high = _good_pairs() + [_pair("b", "c", 0.9, 1.5)]
_bad_sim_nan = _good_pairs() + [_pair("b", "c", float("nan"))]
_bad_sim_null = _good_pairs() + [_pair("b", "c", None)]
_bad_score = _good_pairs() + [_pair("b", "c", match_score=1.2)]
_bad_group_size = _good_groups() + [_group("g-single", 1)]
_bad_members_single = _good_members() + [_member("g-single", "d")]
_bad_members_twice = _good_members() + [_member("g3", "a"), _member("g3", "e")]  # a is in g1 too

BROKEN = [
    pytest.param("embeddings", _bad_norm, "embedding_unit_norm", "long-m", id="m-not-unit"),
    pytest.param("embeddings", _bad_zero, "embedding_unit_norm", "stray-i", id="absent-image-not-zero"),
    pytest.param("embeddings", _bad_nan, "embedding_unit_norm", "nan-t", id="nan-in-vector"),
    pytest.param("embeddings", _bad_size, "embedding_dimension", "short-t", id="wrong-width"),
    pytest.param("pairs", _bad_supplier, "pair_within_one_supplier", "listing_id_r=x", id="two-suppliers"),
    pytest.param("pairs", _bad_unknown, "pair_within_one_supplier", "listing_id_r=ghost", id="unknown-listing"),
    pytest.param("pairs", _bad_sim_high, "pair_similarity_in_range", "listing_id_r=c", id="similarity-above-1"),
    pytest.param("pairs", _bad_sim_nan, "pair_similarity_in_range", "listing_id_r=c", id="similarity-nan"),
    pytest.param("pairs", _bad_sim_null, "pair_similarity_in_range", "listing_id_r=c", id="similarity-null"),
    pytest.param("pairs", _bad_score, "pair_probability_in_range", "listing_id_r=c", id="score-above-1"),
    pytest.param("groups", _bad_group_size, "group_has_two_members", "g-single", id="group-size-1"),
    pytest.param("group_members", _bad_members_single, "group_has_two_members", "g-single", id="one-member"),
    pytest.param("group_members", _bad_members_twice, "group_member_unique", "listing_id=a", id="in-two-groups"),
]


@pytest.mark.parametrize(("table", "rows", "rule", "offender"), BROKEN)
def test_broken_output_fails_the_rule_it_breaks(spark, table, rows, rule, offender):
    results = {r.rule: r for r in _check(spark, table, rows)}
    assert set(results) == set(OUTPUT_RULES[table])
    assert [name for name, r in results.items() if not r.success] == [rule]
    broken = results[rule]
    assert broken.unexpected_count >= 1
    assert any(offender in example for example in broken.examples), broken.examples
    message = broken.describe()
    assert table in message and rule in message and offender in message


def test_embedding_dimension_is_the_encoders_width(spark):
    from jobs.warehouse import check_output

    frame = _frame(spark, "embeddings", _good_embeddings())
    results = {r.rule: r for r in check_output(frame, "embeddings", embedding_dim=DIM + 1)}
    assert not results["embedding_dimension"].success
    assert results["embedding_dimension"].unexpected_count == 3  # every row with vectors
    assert results["embedding_unit_norm"].success


def test_checks_need_their_inputs(spark):
    from jobs.warehouse import check_output

    with pytest.raises(ValueError, match="embedding_dim"):
        check_output(_frame(spark, "embeddings", _good_embeddings()), "embeddings")
    with pytest.raises(ValueError, match="listing_suppliers"):
        check_output(_frame(spark, "pairs", _good_pairs()), "pairs")
    assert check_output(_frame(spark, "groups", _good_groups()), "run_metrics") == []


def test_encoder_dims_match_the_encoder():
    from types import SimpleNamespace

    from encoder.config import ENCODER_KINDS, KIND_DIMS, SSPR_DIM, EncoderConfig, stored_dim, vector_dim
    from encoder.image import IMAGE_DIM
    from encoder.text import TEXT_DIM
    from schemas.vectors import VECTOR_BUDGET_BYTES, stored_bytes

    assert set(KIND_DIMS) == set(ENCODER_KINDS)
    zero_shot = EncoderConfig(kind="zero-shot")
    assert vector_dim(zero_shot) == TEXT_DIM + IMAGE_DIM == 1664  # encoder/zero_shot.py: [text | image]
    assert vector_dim(EncoderConfig(kind="sspr")) == SSPR_DIM
    # a hybrid appends the lexical columns (encoder/hybrid.py)
    hybrid = EncoderConfig(kind="sspr", lexical_weight=0.2, lexical_buckets=100)
    assert vector_dim(hybrid) == SSPR_DIM + 100
    # only the neural part is stored (schemas.vectors): within the per-listing budget for sspr
    assert stored_dim(hybrid) == stored_dim(EncoderConfig(kind="sspr")) == SSPR_DIM
    assert stored_bytes(stored_dim(hybrid)) == 3 * 2 * SSPR_DIM <= VECTOR_BUDGET_BYTES
    with pytest.raises(ValueError, match="no vector width known"):
        vector_dim(SimpleNamespace(kind="not-a-kind", lexical_weight=0.0, lexical_buckets=0))


# --- publish: nothing is written unless every output passes --------------------------------------


def _partition_rows(spark, config, table: str, run_date: str) -> list[tuple]:
    spark.catalog.refreshTable(f"{config.warehouse.database}.{table}")
    df = spark.table(f"{config.warehouse.database}.{table}").filter(f"run_date = '{run_date}'")
    return sorted(tuple(r) for r in df.drop("run_date").collect())


def test_failed_check_leaves_the_published_partition_untouched(spark, pipeline_config):
    from jobs.warehouse import publish

    database, partition = pipeline_config.warehouse.database, {"run_date": RUN_DATE}
    suppliers = spark.createDataFrame(SUPPLIERS, "listing_id STRING, supplier_id STRING")
    written = publish(
        spark, {"pairs": _frame(spark, "pairs", _good_pairs())}, database, partition, listing_suppliers=suppliers
    )
    assert written == {"pairs": 3}
    before = _partition_rows(spark, pipeline_config, "pairs", RUN_DATE)
    assert len(before) == 3

    with pytest.raises(DedupError) as raised:
        publish(
            spark,
            {"pairs": _frame(spark, "pairs", [_pair("a", "x")])},
            database,
            partition,
            listing_suppliers=suppliers,
        )
    message = str(raised.value)
    assert "table pairs" in message and "pair_within_one_supplier" in message and "listing_id_r=x" in message
    assert "nothing was written" in message
    assert _partition_rows(spark, pipeline_config, "pairs", RUN_DATE) == before


def test_a_failing_second_table_keeps_the_first_unwritten_too(spark, pipeline_config):
    """publish(groups, group_members) as the groups stage calls it: good groups, bad members.

    The real grouping (dedup.cluster_pairs) cannot put a listing in two groups, so the bad frame
    is built here; what is tested is publish's all-or-nothing rule on the real warehouse. The
    stage's exit code 2 on a DedupError is exercised by real stages in tests/bad_input.
    """
    from jobs.warehouse import publish

    run_date = "2024-05-02"
    database, partition = pipeline_config.warehouse.database, {"run_date": run_date}
    old_groups = [dict(r, run_date=run_date) for r in _good_groups()]
    old_members = [dict(r, run_date=run_date) for r in _good_members()]
    publish(
        spark,
        {"groups": _frame(spark, "groups", old_groups), "group_members": _frame(spark, "group_members", old_members)},
        database,
        partition,
    )
    before = {t: _partition_rows(spark, pipeline_config, t, run_date) for t in ("groups", "group_members")}
    assert len(before["groups"]) == 2 and len(before["group_members"]) == 5

    # The rerun's groups are fine (different from the old ones), its members put "a" in two groups.
    new_groups = [dict(_group("g9", 2), run_date=run_date), dict(_group("g8", 2), run_date=run_date)]
    bad_members = [
        dict(_member(g, i), run_date=run_date) for g, i in (("g9", "a"), ("g9", "b"), ("g8", "a"), ("g8", "c"))
    ]
    with pytest.raises(DedupError) as raised:
        publish(
            spark,
            {
                "groups": _frame(spark, "groups", new_groups),
                "group_members": _frame(spark, "group_members", bad_members),
            },
            database,
            partition,
        )
    message = str(raised.value)
    assert "table group_members" in message and "group_member_unique" in message and "listing_id=a" in message
    after = {t: _partition_rows(spark, pipeline_config, t, run_date) for t in ("groups", "group_members")}
    assert after == before
