"""Pyarrow schemas of every table the pipeline reads or writes: the contracts between stages.

The listings input contract is ``LISTINGS`` (docs/ARCHITECTURE.md, "Input contract"). Every warehouse table
is listed in ``TABLES`` with its partition columns; ``jobs/`` create the Hive tables from these
schemas and check every DataFrame against them before writing, so a stage can never publish a table
that drifted from its contract.

``run_date`` is an ISO date string (``YYYY-MM-DD``), the Airflow logical date of the run that wrote
the row. Vectors are ``binary``: float16 bytes of the encoder's neural vector (``schemas.vectors``:
the layout and the per-listing byte budget); similarity columns are cosine similarities of L2-normalised
vectors (higher = closer), ``null`` where a modality is missing on either side.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

LISTINGS = pa.schema(
    [
        pa.field("listing_id", pa.string()),
        pa.field("supplier_id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("category", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("is_deleted", pa.bool_()),
    ]
)
"""One row per new or changed listing of a day: ``{listings_root}/dt=YYYY-MM-DD/*.parquet``."""

LISTINGS_REQUIRED_COLUMNS = ("listing_id", "supplier_id", "title", "updated_at")
"""Columns an input file must have; the other ``LISTINGS`` columns are optional and filled with null."""

_RUN_DATE = pa.field("run_date", pa.string())

VALIDATED_LISTINGS = pa.schema([*LISTINGS, pa.field("source_file", pa.string()), _RUN_DATE])
"""Listings that passed validation, as written by ``jobs/validate.py`` (table ``listings``)."""

QUARANTINE = pa.schema(
    [
        pa.field("listing_id", pa.string()),
        pa.field("supplier_id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("rule", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("source_file", pa.string()),
        _RUN_DATE,
    ]
)
"""Input rows that broke a rule of the listings contract; ``rule`` names the broken rule."""

_VECTOR = pa.binary()  # float16 bytes, schemas.vectors

EMBEDDINGS = pa.schema(
    [
        pa.field("listing_id", pa.string()),
        pa.field("supplier_id", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("is_deleted", pa.bool_()),
        pa.field("has_text", pa.bool_()),
        pa.field("has_image", pa.bool_()),
        pa.field("image_error", pa.string()),
        pa.field("emb_m", _VECTOR),
        pa.field("emb_t", _VECTOR),
        pa.field("emb_i", _VECTOR),
        pa.field("model_version", pa.string()),
        _RUN_DATE,
    ]
)
"""One vector triple per validated listing. A deleted listing is a tombstone with null vectors.

Each vector is the encoder's neural vector as float16 bytes (``schemas.vectors``), the hybrid's
lexical part left out (the pairs stage adds it from the title); ``model_version`` is the whole
encoder's, lexical settings included.

The catalogue of run date D (table ``catalog``) holds, per listing, its row with the latest
``run_date <= D`` (then the latest ``updated_at``), unless that row is a tombstone or has no vectors.
"""

PAIRS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("listing_id_l", pa.string()),
        pa.field("listing_id_r", pa.string()),
        pa.field("similarity_m", pa.float32()),
        pa.field("similarity_t", pa.float32()),
        pa.field("similarity_i", pa.float32()),
        pa.field("match_score", pa.float32()),
        pa.field("model_version", pa.string()),
        _RUN_DATE,
    ]
)
"""Duplicate pairs found on a run date; ``listing_id_l < listing_id_r``, same supplier.

With a verifier (``dedup.verifier``), each is a candidate (``similarity_m >= dedup.min_similarity``)
whose ``match_score`` (the verifier's calibrated match probability) reached
``dedup.min_probability``; without one, ``match_score`` is null and every candidate is a pair.
"""

_BUCKET = pa.field("supplier_bucket", pa.int32())

CATALOG = pa.schema(
    [
        pa.field("listing_id", pa.string()),
        pa.field("supplier_id", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        pa.field("has_text", pa.bool_()),
        pa.field("has_image", pa.bool_()),
        pa.field("emb_m", _VECTOR),
        pa.field("emb_t", _VECTOR),
        pa.field("emb_i", _VECTOR),
        pa.field("model_version", pa.string()),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("embedded_on", pa.string()),
        pa.field("first_seen", pa.string()),
        _RUN_DATE,
        _BUCKET,
    ]
)
"""The catalogue as of a run date: the latest embedding of every live listing (``jobs/catalog.py``).

One partition per (run date, supplier bucket); ``supplier_bucket`` is
``pmod(xxhash64(supplier_id), warehouse.supplier_buckets)``, so one supplier's vectors are read
from one folder. ``embedded_on`` is the run date of the embedding the vectors come from (the run
date itself for the day's new and changed listings); ``first_seen`` the run date the listing
entered the catalogue (kept across updates; a deleted listing that comes back starts again).
Deleted and unembeddable listings are not in it. Title, brand, price and currency are the
embedded listing row's, for the pair verifier.
"""

LIVE_PAIRS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("listing_id_l", pa.string()),
        pa.field("listing_id_r", pa.string()),
        pa.field("similarity_m", pa.float32()),
        pa.field("similarity_t", pa.float32()),
        pa.field("similarity_i", pa.float32()),
        pa.field("match_score", pa.float32()),
        pa.field("model_version", pa.string()),
        pa.field("found_on", pa.string()),
        _RUN_DATE,
        _BUCKET,
    ]
)
"""The live pair graph as of a run date: every pair whose two listings still have the vectors
it was found with. The previous night's graph, less every pair of a listing that was updated or
deleted on the run date, plus the run date's ``pairs`` (``found_on`` = the run date)."""

GROUPS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("weakest_similarity", pa.float32()),
        pa.field("strongest_similarity", pa.float32()),
        pa.field("representative", pa.string()),
        pa.field("has_bridge", pa.bool_()),
        pa.field("created_on", pa.string()),
        _RUN_DATE,
    ]
)
"""A supplier's duplicate groups as of a run date, over its whole live pair graph (``jobs/groups.py``).

``group_id`` is stable across nights (``dedup.lineage``: it follows a group that grows or
shrinks; ``group_lineage`` records merges and splits); ``created_on`` is the run date the id was
first given. ``weakest_similarity`` is the weakest link: the smallest edge on the group's maximum
spanning tree, i.e. the threshold above which the group would split. ``has_bridge``: the group has
an edge whose removal splits it (a chain, not a dense cluster).
"""

GROUP_MEMBERS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("listing_id", pa.string()),
        pa.field("is_new", pa.bool_()),
        pa.field("first_seen", pa.string()),
        _RUN_DATE,
    ]
)
"""Members of each group as of the run date; ``is_new`` marks listings embedded on the run date (new
or changed), ``first_seen`` the run date the listing entered the catalogue."""

GROUP_LINEAGE = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("event", pa.string()),
        pa.field("other_group_id", pa.string()),
        _RUN_DATE,
    ]
)
"""What happened to group ids on a run date (``dedup.lineage``): ``new`` (other null), ``merge``
(``other_group_id`` was absorbed into ``group_id``), ``split`` (``group_id`` took members of
``other_group_id``), ``gone`` (no member of ``group_id`` is grouped any more; other null)."""

RUN_METRICS = pa.schema(
    [
        pa.field("rows_in", pa.int64()),
        pa.field("rows_out", pa.int64()),
        pa.field("rows_quarantined", pa.int64()),
        pa.field("rows_skipped", pa.int64()),
        pa.field("seconds", pa.float64()),
        pa.field("details", pa.string()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        _RUN_DATE,
        pa.field("stage", pa.string()),
    ]
)
"""One row per (run date, stage): counts in and out and wall time. ``details`` is a JSON object.

Accounting invariant for ``validate``: rows_in = rows_out + rows_quarantined. For ``embed``:
rows_in = rows_out + rows_skipped (deleted listings are skipped with reason ``is_deleted``).
"""


PAIR_SEARCH_ROWS = pa.schema(
    [
        pa.field("kind", pa.string()),
        *(f for f in PAIRS if f.name != "run_date"),
        pa.field("candidates", pa.int64()),
        pa.field("queries", pa.int64()),
        pa.field("catalogue_rows", pa.int64()),
        pa.field("dim", pa.int64()),
        pa.field("search_seconds", pa.float64()),
    ]
)
"""What the pairs stage's per-(supplier, block) search returns: ``kind`` is "pair"; "saturated"
for a query cut by the per-query budget (its id in ``listing_id_l``, the rest null); or
"candidates", one row per block (task) whose ``candidates`` counts the pairs the search found
before the verifier, with the task's size (``queries`` x ``catalogue_rows`` at width ``dim``) and
the seconds its exact search took (the rest null); or "cross", a candidate of two new listings in
different query blocks (ids only), which both blocks may find: the candidates count takes back
those found twice."""

BLOCK_HIT_ROWS = pa.schema(
    [
        pa.field("kind", pa.string()),
        pa.field("supplier_id", pa.string()),
        pa.field("listing_id", pa.string()),
        pa.field("match_id", pa.string()),
        pa.field("similarity", pa.float32()),
        pa.field("model_version", pa.string()),
        pa.field("queries", pa.int64()),
        pa.field("catalogue_rows", pa.int64()),
        pa.field("dim", pa.int64()),
        pa.field("search_seconds", pa.float64()),
    ]
)
"""What one (supplier, catalogue block, query block) search task of the pairs stage returns for a
supplier searched in catalogue blocks: ``kind`` is "hit" (query ``listing_id`` meets ``match_id``
of the block at ``similarity``; a query's best hits within the budget, ties to the lower id);
"cut" for a query that had more hits in the block than the budget (the rest null); or "task", one
row with the task's size (``queries`` x ``catalogue_rows`` at width ``dim``) and search seconds."""

GROUP_INPUT_ROWS = pa.schema(
    [
        pa.field("kind", pa.string()),
        pa.field("supplier_id", pa.string()),
        pa.field("listing_id_l", pa.string()),
        pa.field("listing_id_r", pa.string()),
        pa.field("similarity_m", pa.float32()),
        pa.field("match_score", pa.float32()),
        pa.field("listing_id", pa.string()),
        pa.field("first_seen", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("created_on", pa.string()),
    ]
)
"""What the groups stage hands its per-supplier clustering, one frame per supplier: ``kind`` is
"edge" (a live pair), "node" (a listing of the catalogue with its ``first_seen``) or "previous"
(a member of the supplier's groups on the previous night, with its group's id and created_on)."""

GROUP_ROWS = pa.schema(
    [
        pa.field("kind", pa.string()),
        *(f for f in GROUPS if f.name != "run_date"),
        GROUP_MEMBERS.field("listing_id"),
        GROUP_MEMBERS.field("first_seen"),
        GROUP_LINEAGE.field("event"),
        GROUP_LINEAGE.field("other_group_id"),
    ]
)
"""What the groups stage's per-supplier clustering returns: ``kind`` "member" (one row per member,
with its group's columns) or "lineage" (``group_id``, ``event``, ``other_group_id``)."""


@dataclass(frozen=True)
class TableSpec:
    """A warehouse table: its name in the ``dedup`` database, schema and partition columns."""

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...]

    @property
    def data_columns(self) -> list[str]:
        """Returns the non-partition column names, in schema order."""
        return [f.name for f in self.schema if f.name not in self.partition_by]


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("listings", VALIDATED_LISTINGS, ("run_date",)),
        TableSpec("quarantine", QUARANTINE, ("run_date",)),
        TableSpec("embeddings", EMBEDDINGS, ("run_date",)),
        TableSpec("catalog", CATALOG, ("run_date", "supplier_bucket")),
        TableSpec("pairs", PAIRS, ("run_date",)),
        TableSpec("live_pairs", LIVE_PAIRS, ("run_date", "supplier_bucket")),
        TableSpec("groups", GROUPS, ("run_date",)),
        TableSpec("group_members", GROUP_MEMBERS, ("run_date",)),
        TableSpec("group_lineage", GROUP_LINEAGE, ("run_date",)),
        TableSpec("run_metrics", RUN_METRICS, ("run_date", "stage")),
    )
}
"""Every warehouse table, by name."""


_DDL_TYPES = {
    pa.string(): "STRING",
    pa.float64(): "DOUBLE",
    pa.float32(): "FLOAT",
    pa.int64(): "BIGINT",
    pa.int32(): "INT",
    pa.bool_(): "BOOLEAN",
    pa.binary(): "BINARY",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",
}


def to_ddl_type(arrow_type: pa.DataType) -> str:
    """Maps a pyarrow type used in these schemas to its Spark SQL DDL type.

    Args:
        arrow_type: a type from one of the schemas above.

    Returns:
        The Spark SQL type name, e.g. ``"ARRAY<FLOAT>"`` for ``list<float32>``.

    Raises:
        ValueError: for a type no contract uses.
    """
    if pa.types.is_list(arrow_type):
        return f"ARRAY<{to_ddl_type(arrow_type.value_type)}>"
    if arrow_type in _DDL_TYPES:
        return _DDL_TYPES[arrow_type]
    raise ValueError(f"no Spark SQL type mapped for arrow type {arrow_type}; add it to _DDL_TYPES")


def to_ddl(schema: pa.Schema, columns: list[str] | None = None) -> str:
    """Renders a pyarrow schema as a Spark DDL column list (``"a STRING, b DOUBLE"``).

    Args:
        schema: the contract schema.
        columns: the subset and order of columns to render; all of them when None.

    Returns:
        A DDL string usable for ``mapInPandas`` output schemas and ``CREATE TABLE``.
    """
    names = columns if columns is not None else schema.names
    return ", ".join(f"`{name}` {to_ddl_type(schema.field(name).type)}" for name in names)


def empty_frame(schema: pa.Schema):
    """Returns a zero-row pandas DataFrame with the schema's columns and dtypes.

    An untyped ``pd.DataFrame(columns=...)`` (all ``object``) fails Spark's Arrow conversion of
    grouped-map output for numeric columns, so empty results must carry real dtypes.
    """
    return schema.empty_table().to_pandas()


REVIEW_GROUPS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("weakest_similarity", pa.float32()),
        pa.field("strongest_similarity", pa.float32()),
        pa.field("representative", pa.string()),
        pa.field("has_bridge", pa.bool_()),
        pa.field("created_on", pa.string()),
        pa.field("category", pa.string()),
    ]
)
"""The review app's groups of a night (``review/groups.parquet`` of its report): ``groups`` plus
``category``, the members' most common one."""

REVIEW_MEMBERS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("listing_id", pa.string()),
        pa.field("is_new", pa.bool_()),
        pa.field("first_seen", pa.string()),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("category", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
    ]
)
"""The review app's group members with their latest listing attributes (untrusted: escape them)."""

REVIEW_PAIRS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("listing_id_l", pa.string()),
        pa.field("listing_id_r", pa.string()),
        pa.field("found_on", pa.string()),
        pa.field("similarity_m", pa.float32()),
        pa.field("similarity_t", pa.float32()),
        pa.field("similarity_i", pa.float32()),
        pa.field("match_score", pa.float32()),
    ]
)
"""The review app's pairs: the night's live pairs inside each group, with their per-modality evidence."""

REVIEW_EXTRACT = {"groups": REVIEW_GROUPS, "members": REVIEW_MEMBERS, "pairs": REVIEW_PAIRS}
"""File name (without ``.parquet``) -> contract of the report stage's review extract (``review.runs``)."""
