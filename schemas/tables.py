"""Pyarrow schemas of every table the pipeline reads or writes: the contracts between stages.

The listings input contract is ``LISTINGS`` (docs/ARCHITECTURE.md, "Input contract"). Every warehouse table
is listed in ``TABLES`` with its partition columns; ``jobs/`` create the Hive tables from these
schemas and check every DataFrame against them before writing, so a stage can never publish a table
that drifted from its contract.

``run_date`` is an ISO date string (``YYYY-MM-DD``), the Airflow logical date of the run that wrote
the row. Vectors are ``list<float32>``; similarity columns are cosine similarities of L2-normalised
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

_VECTOR = pa.list_(pa.float32())

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

The catalogue of run date D is, per listing, its row with the latest ``run_date <= D`` (then the
latest ``updated_at``), minus tombstones.
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

GROUPS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("weakest_similarity", pa.float32()),
        pa.field("strongest_similarity", pa.float32()),
        pa.field("representative", pa.string()),
        _RUN_DATE,
    ]
)
"""Duplicate groups: connected components of a supplier's pair graph on a run date.

``weakest_similarity`` is the weakest link: the smallest edge on the group's maximum spanning tree,
i.e. the threshold above which the group would split.
"""

GROUP_MEMBERS = pa.schema(
    [
        pa.field("supplier_id", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("listing_id", pa.string()),
        pa.field("is_new", pa.bool_()),
        _RUN_DATE,
    ]
)
"""Members of each group; ``is_new`` marks listings that arrived on the run date."""

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
    ]
)
"""What the pairs stage's per-(supplier, block) search returns: ``kind`` is "pair"; "saturated"
for a query cut by the per-query budget (its id in ``listing_id_l``, the rest null); or
"candidates", one row per block whose ``candidates`` counts the pairs the search found before
the verifier (the rest null)."""

GROUP_ROWS = pa.schema(
    [
        GROUPS.field("supplier_id"),
        GROUPS.field("group_id"),
        GROUP_MEMBERS.field("listing_id"),
        *(GROUPS.field(name) for name in ("size", "weakest_similarity", "strongest_similarity", "representative")),
    ]
)
"""What the groups stage's per-supplier clustering returns: one row per member, with its group."""


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
        TableSpec("pairs", PAIRS, ("run_date",)),
        TableSpec("groups", GROUPS, ("run_date",)),
        TableSpec("group_members", GROUP_MEMBERS, ("run_date",)),
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
