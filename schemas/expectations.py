"""Great Expectations suites: the row rules of the listings contract and the rules of every output.

Input (``listings``): each expectation carries its rule name in ``meta["rule"]``; a row that fails
one goes to the ``quarantine`` table with that name. Rules whose inputs are computed from the row
(a usable title or image, the title's length, valid UTF-8) check helper columns that
``add_helper_columns`` derives; ``jobs/validate.py`` computes ``_title_within_limit`` and
``_text_valid_utf8`` in Spark instead, from the configured limit and the raw bytes (strings that
are not UTF-8 cannot reach pandas at all). Rules that need the whole day
(``listing_id_unique``: the latest ``updated_at`` wins; ``stale_update``: older than the version
stored from an earlier run date) are applied by ``jobs/validate.py`` across partitions, after
these row rules. GX runs on pandas batches (one per Spark partition inside
``mapInPandas``), because the pandas engine returns the index of every failing row, which is what
quarantining needs.

Outputs (``embeddings``, ``pairs``, ``groups``, ``group_members``): ``OUTPUT_RULES`` names the rules
of each table; ``build_output_suite`` builds the table's suite and ``OutputValidator`` runs it on the
Spark DataFrame a stage is about to write (``jobs.warehouse.publish`` refuses to write anything when
a rule fails). Column rules are GX column expectations; rules over a row's vectors or over a whole
group are ``UnexpectedRowsExpectation`` Spark SQL queries, so Spark computes norms and counts and
only the count and a few offending ids reach the driver.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from schemas.vectors import STORED_DTYPE, VECTOR_COLUMNS

log = logging.getLogger(__name__)

# Order matters: a row that breaks several rules is quarantined under the first one.
ROW_RULES: tuple[str, ...] = (
    "listing_id_not_null",
    "listing_id_not_blank",
    "supplier_id_not_null",
    "supplier_id_not_blank",
    "updated_at_not_null",
    "title_or_image_present",
    "title_too_long",
    "text_valid_utf8",
)
DAY_RULES: tuple[str, ...] = ("listing_id_unique", "stale_update")
ALL_RULES: tuple[str, ...] = ROW_RULES + DAY_RULES

DEFAULT_MAX_TITLE_CHARS = 1000
"""``title_too_long`` limit for callers without a config; ``ValidationConfig.max_title_chars``
(same default, a test checks it) is what the validate stage uses."""

TEXT_COLUMNS: tuple[str, ...] = (
    "listing_id",
    "supplier_id",
    "title",
    "description",
    "category",
    "brand",
    "currency",
    "image_uri",
)
"""The string columns of the listings contract; ``text_valid_utf8`` checks each of them."""

_NOT_BLANK = r"\S"
# A character that shows: not whitespace (\s covers Unicode spaces such as U+00A0, U+3000), not a
# control character and not an invisible format character (zero-width spaces and joiners, bidi
# marks, variation selectors, BOM, Hangul fillers, braille blank). A title made only of such
# characters is blank: the tokenizer drops them and the listing would get an empty text vector.
_VISIBLE = re.compile(
    r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    r"\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0]"
)


def build_listings_suite(gx_module=None):
    """Builds the GX expectation suite for listing rows.

    The suite expects the helper columns ``_title_or_image``, ``_title_within_limit`` and
    ``_text_valid_utf8`` (see ``add_helper_columns``).

    Args:
        gx_module: the imported ``great_expectations`` module (imported here when None).

    Returns:
        A ``great_expectations.ExpectationSuite`` named ``listings`` whose expectations carry
        ``meta={"rule": <rule name>}``.
    """
    gx = gx_module or _import_gx()
    e = gx.expectations
    suite = gx.ExpectationSuite(name="listings")
    for rule, expectation in (
        ("listing_id_not_null", e.ExpectColumnValuesToNotBeNull(column="listing_id")),
        ("listing_id_not_blank", e.ExpectColumnValuesToMatchRegex(column="listing_id", regex=_NOT_BLANK)),
        ("supplier_id_not_null", e.ExpectColumnValuesToNotBeNull(column="supplier_id")),
        ("supplier_id_not_blank", e.ExpectColumnValuesToMatchRegex(column="supplier_id", regex=_NOT_BLANK)),
        ("updated_at_not_null", e.ExpectColumnValuesToNotBeNull(column="updated_at")),
        ("title_or_image_present", e.ExpectColumnValuesToBeInSet(column="_title_or_image", value_set=[True])),
        ("title_too_long", e.ExpectColumnValuesToBeInSet(column="_title_within_limit", value_set=[True])),
        ("text_valid_utf8", e.ExpectColumnValuesToBeInSet(column="_text_valid_utf8", value_set=[True])),
    ):
        expectation.meta = {"rule": rule}
        suite.add_expectation(expectation)
    return suite


def _import_gx():
    os.environ.setdefault("TQDM_DISABLE", "1")  # GX draws progress bars per batch otherwise
    import great_expectations as gx

    return gx


def add_helper_columns(frame: pd.DataFrame, max_title_chars: int = DEFAULT_MAX_TITLE_CHARS) -> pd.DataFrame:
    """Adds the derived columns the suite checks.

    Args:
        frame: listing rows with ``title``, ``image_uri`` and either ``image`` (bytes) or
            ``_has_image_bytes`` (bool, so Spark need not ship image bytes to Python to validate).
            ``_title_within_limit`` and ``_text_valid_utf8`` are kept when present (the validate
            stage computes them in Spark) and derived here otherwise.
        max_title_chars: the ``title_too_long`` limit in characters when ``_title_within_limit``
            is derived here; 0 = no limit.

    Returns:
        A copy with ``_title_or_image`` (bool): a title with a visible character, or image bytes /
        an image URI; ``_title_within_limit`` (bool): the title has at most ``max_title_chars``
        characters (or is null); ``_text_valid_utf8`` (bool): every string of ``TEXT_COLUMNS`` in
        the frame encodes as UTF-8 (a Python string can hold lone surrogates, which cannot; such
        strings are repaired in the copy, with "?" for each surrogate).
    """
    out = frame.copy()
    titles = out["title"].map(lambda t: t if isinstance(t, str) else "")
    title_ok = titles.map(lambda t: _VISIBLE.search(t) is not None).astype(bool)
    has_bytes = out["image"].notna() if "image" in out else out["_has_image_bytes"].eq(True)
    image_ok = has_bytes | out["image_uri"].fillna("").astype(str).str.strip().ne("")
    out["_title_or_image"] = title_ok | image_ok
    if "_title_within_limit" not in out:
        out["_title_within_limit"] = True if max_title_chars == 0 else titles.str.len().le(max_title_chars)
    if "_text_valid_utf8" not in out:
        valid = pd.Series(True, index=out.index)
        for column in TEXT_COLUMNS:
            if column in out:
                ok = out[column].map(_encodes_as_utf8).astype(bool)
                if not ok.all():  # GX hashes the batch, which fails on such strings: repair them
                    out.loc[~ok, column] = out.loc[~ok, column].map(
                        lambda v: v.encode("utf-8", "replace").decode("utf-8")
                    )
                valid &= ok
        out["_text_valid_utf8"] = valid
    return out


def _encodes_as_utf8(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ListingsValidator:
    """Runs the listings suite on pandas batches; build once per process and reuse."""

    def __init__(self, max_title_chars: int = DEFAULT_MAX_TITLE_CHARS) -> None:
        gx = _import_gx()
        self._max_title_chars = max_title_chars
        self._context = gx.get_context(mode="ephemeral")
        try:  # no per-batch progress bars in executor logs
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        except ImportError:  # moved in some GX 1.x release: bars are cosmetic
            pass
        asset = self._context.data_sources.add_pandas("listings").add_dataframe_asset("batch")
        batch = asset.add_batch_definition_whole_dataframe("whole")
        suite = self._context.suites.add(build_listings_suite(gx))
        self._definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name="listings", data=batch, suite=suite)
        )

    def failed_rules(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Validates listing rows and names the rule each failing row broke.

        Args:
            frame: listing rows; its index identifies rows in the result.

        Returns:
            A DataFrame indexed like the failing rows of ``frame`` with columns ``rule`` (the first
            broken rule in ``ROW_RULES`` order) and ``detail`` (every broken rule, comma-separated).
            Empty when every row passes.
        """
        if frame.empty:
            return pd.DataFrame({"rule": pd.Series(dtype=str), "detail": pd.Series(dtype=str)})
        checked = add_helper_columns(frame, self._max_title_chars)
        checked.index.name = None  # GX reports rows of a named index as dicts; plain labels are wanted
        result = self._definition.run(
            batch_parameters={"dataframe": checked}, result_format={"result_format": "COMPLETE"}
        )
        broken: dict[object, list[str]] = {}
        for res in result.results:
            rule = res.expectation_config.meta["rule"]
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(
                    f"GX expectation for rule {rule} raised: {res.exception_info.get('exception_message')}"
                )
            for index in res.result.get("unexpected_index_list") or []:
                broken.setdefault(index, []).append(rule)
        order = {rule: i for i, rule in enumerate(ROW_RULES)}
        rows = {
            index: (min(rules, key=order.__getitem__), ",".join(sorted(rules, key=order.__getitem__)))
            for index, rules in broken.items()
        }
        return pd.DataFrame.from_dict(rows, orient="index", columns=["rule", "detail"])


# --------------------------------------------------------------------------- output suites
UNIT_NORM_TOLERANCE = 1e-3
"""How far a vector's L2 norm may be from 1 (or from 0 for an absent modality's zero vector)."""

OUTPUT_RULES: dict[str, tuple[str, ...]] = {
    "embeddings": ("embedding_dimension", "embedding_unit_norm"),
    "pairs": ("pair_within_one_supplier", "pair_similarity_in_range", "pair_probability_in_range"),
    "groups": ("group_has_two_members",),
    "group_members": ("group_has_two_members", "group_member_unique"),
}
"""The output rules of each checked table, in the order they are reported."""

OUTPUT_ID_COLUMNS: dict[str, tuple[str, ...]] = {
    "embeddings": ("listing_id",),
    "pairs": ("supplier_id", "listing_id_l", "listing_id_r"),
    "groups": ("supplier_id", "group_id"),
    "group_members": ("supplier_id", "group_id", "listing_id"),
}
"""The columns that identify an offending row in a failure message."""

PAIR_SUPPLIER_COLUMNS = ("_supplier_id_l", "_supplier_id_r")

VECTOR_NORM_COLUMNS = ("_norm_m", "_norm_t", "_norm_i")
"""Helper columns the embeddings rules need: the stored ``emb_m`` / ``emb_t`` / ``emb_i``'s L2
norm (``schemas.vectors.vector_norms``; null for a null vector), added by the jobs before the
check (Spark SQL cannot read float16 bytes)."""
"""Helper columns the pairs suite expects: the supplier each side's listing belongs to."""

EXAMPLES_PER_RULE = 5
"""How many offending rows a failed rule reports."""


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one output rule on one table.

    Attributes:
        table: the warehouse table checked, e.g. ``"pairs"``.
        rule: the rule's name from ``OUTPUT_RULES``.
        success: True when no row breaks the rule.
        unexpected_count: how many rows (or groups) break it.
        examples: up to ``EXAMPLES_PER_RULE`` offending rows as ``"column=value, ..."`` strings.
    """

    table: str
    rule: str
    success: bool
    unexpected_count: int
    examples: tuple[str, ...] = ()

    def describe(self) -> str:
        """Returns a one-line account: table, rule, count and the first offending ids."""
        if self.success:
            return f"table {self.table}, rule {self.rule}: ok"
        shown = "; ".join(self.examples) or "no examples returned"
        rows = "row" if self.unexpected_count == 1 else "rows"
        return f"table {self.table}, rule {self.rule}: {self.unexpected_count} offending {rows}, e.g. [{shown}]"


def build_output_suite(table: str, embedding_dim: int | None = None, gx_module=None):
    """Builds the GX expectation suite for one output table.

    Rules (each expectation carries ``meta={"rule": <rule name>}``):

    * ``embeddings``: ``embedding_dimension``: every vector present has ``embedding_dim`` float16
      elements (``2 x embedding_dim`` bytes, ``schemas.vectors``);
      ``embedding_unit_norm``: ``emb_m`` has norm 1, ``emb_t`` / ``emb_i`` norm 1 where the listing
      has text / an image and 0 (the all-zero vector) otherwise, within ``UNIT_NORM_TOLERANCE``
      (needs the helper columns ``VECTOR_NORM_COLUMNS``).
      Rows with null vectors (tombstones, listings that could not be embedded) are exempt.
    * ``pairs``: ``pair_within_one_supplier``: both listings belong to the pair's ``supplier_id``
      (needs the helper columns ``PAIR_SUPPLIER_COLUMNS``); ``pair_similarity_in_range``:
      ``similarity_m`` is present and every similarity is within [-1, 1];
      ``pair_probability_in_range``: the verifier's ``match_score`` (null without a
      verifier) is within [0, 1].
    * ``groups``: ``group_has_two_members``: ``size >= 2``.
    * ``group_members``: ``group_has_two_members``: each (supplier, group) has at least 2 rows;
      ``group_member_unique``: a listing is in at most one group per run date and supplier.

    Args:
        table: a key of ``OUTPUT_RULES``.
        embedding_dim: the encoder's vector width; required for ``embeddings``.
        gx_module: the imported ``great_expectations`` module (imported here when None).

    Returns:
        A ``great_expectations.ExpectationSuite`` named after the table. The
        ``UnexpectedRowsExpectation`` rules run on Spark only.

    Raises:
        ValueError: for a table without output rules, or ``embeddings`` without ``embedding_dim``.
    """
    if table not in OUTPUT_RULES:
        raise ValueError(f"no output rules for table {table!r}; checked tables: {sorted(OUTPUT_RULES)}")
    gx = gx_module or _import_gx()
    e = gx.expectations
    rows = e.UnexpectedRowsExpectation
    expectations: list[tuple[str, Any]] = []
    if table == "embeddings":
        if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 1:
            raise ValueError(f"the embeddings suite needs the encoder's vector width, got {embedding_dim!r}")
        width = embedding_dim * STORED_DTYPE.itemsize
        wrong_size = " OR ".join(f"({c} IS NOT NULL AND octet_length({c}) <> {width})" for c in VECTOR_COLUMNS)
        expected_norms = ("1", "IF(has_text, 1, 0)", "IF(has_image, 1, 0)")
        off_norm = " OR ".join(
            f"({c} IS NOT NULL AND NOT abs(coalesce({n}, -1D) - {expected}) <= {UNIT_NORM_TOLERANCE!r})"
            for c, n, expected in zip(VECTOR_COLUMNS, VECTOR_NORM_COLUMNS, expected_norms, strict=True)
        )
        expectations += [
            (
                "embedding_dimension",
                rows(
                    unexpected_rows_query=(
                        "SELECT listing_id, octet_length(emb_m) AS bytes_m, octet_length(emb_t) AS bytes_t, "
                        f"octet_length(emb_i) AS bytes_i FROM {{batch}} WHERE {wrong_size}"
                    )
                ),
            ),
            (
                "embedding_unit_norm",
                rows(
                    unexpected_rows_query=(
                        "SELECT listing_id, "
                        + ", ".join(f"round({n}, 6) AS norm_{n[-1]}" for n in VECTOR_NORM_COLUMNS)
                        + f" FROM {{batch}} WHERE {off_norm}"
                    )
                ),
            ),
        ]
    elif table == "pairs":
        left, right = PAIR_SUPPLIER_COLUMNS
        expectations += [
            (
                "pair_within_one_supplier",
                rows(
                    unexpected_rows_query=(
                        f"SELECT supplier_id, listing_id_l, listing_id_r, {left}, {right} FROM {{batch}} "
                        f"WHERE NOT ({left} <=> supplier_id AND {right} <=> supplier_id)"
                    )
                ),
            ),
            ("pair_similarity_in_range", e.ExpectColumnValuesToNotBeNull(column="similarity_m")),
        ]
        expectations += [
            ("pair_similarity_in_range", e.ExpectColumnValuesToBeBetween(column=c, min_value=-1, max_value=1))
            for c in ("similarity_m", "similarity_t", "similarity_i")
        ]
        expectations.append(
            (
                "pair_probability_in_range",
                e.ExpectColumnValuesToBeBetween(column="match_score", min_value=0, max_value=1),
            )
        )
    elif table == "groups":
        expectations.append(("group_has_two_members", e.ExpectColumnValuesToBeBetween(column="size", min_value=2)))
    else:  # group_members
        expectations += [
            (
                "group_has_two_members",
                rows(
                    unexpected_rows_query=(
                        "SELECT supplier_id, group_id, count(*) AS members FROM {batch} "
                        "GROUP BY supplier_id, group_id HAVING count(*) < 2"
                    )
                ),
            ),
            (
                "group_member_unique",
                e.ExpectCompoundColumnsToBeUnique(column_list=["run_date", "supplier_id", "listing_id"]),
            ),
        ]
    for rule, expectation in expectations:
        expectation.meta = {"rule": rule}
    # Passed to the constructor (not add_expectation), so building a suite needs no GX data context.
    return gx.ExpectationSuite(name=table, expectations=[expectation for _, expectation in expectations])


def _example(row: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in row.items())


class OutputValidator:
    """Runs the output suites on Spark DataFrames; build once per process and reuse.

    GX validates the DataFrame in place (it is not persisted by GX and not collected): column rules
    return counts and ``EXAMPLES_PER_RULE`` offending rows, query rules a count and at most 200
    rows of the query's id columns.
    """

    def __init__(self) -> None:
        self._gx = _import_gx()
        self._context = self._gx.get_context(mode="ephemeral")
        try:  # no progress bars in stage logs
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        except ImportError:  # moved in some GX 1.x release: bars are cosmetic
            pass
        self._source = self._context.data_sources.add_spark("outputs", persist=False)
        self._definitions: dict[tuple[str, int | None], list[tuple[Any, dict[str, Any]]]] = {}

    def _definitions_for(self, table: str, embedding_dim: int | None) -> list[tuple[Any, dict[str, Any]]]:
        """Returns (validation definition, result format) pairs for a table, building them once.

        Query rules run with the COMPLETE result format (their offending rows are capped by GX);
        column rules with SUMMARY, so only ``EXAMPLES_PER_RULE`` offending rows are collected.
        """
        key = (table, embedding_dim)
        if key in self._definitions:
            return self._definitions[key]
        gx = self._gx
        name = f"{table}_{embedding_dim}" if embedding_dim is not None else table
        suite = build_output_suite(table, embedding_dim, gx)
        query_rules = [x for x in suite.expectations if isinstance(x, gx.expectations.UnexpectedRowsExpectation)]
        column_rules = [x for x in suite.expectations if x not in query_rules]
        batch = self._source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        formats = {
            "rows": {"result_format": "COMPLETE"},
            "columns": {
                "result_format": "SUMMARY",
                "partial_unexpected_count": EXAMPLES_PER_RULE,
                "unexpected_index_column_names": list(OUTPUT_ID_COLUMNS[table]),
            },
        }
        definitions = []
        for kind, members in (("rows", query_rules), ("columns", column_rules)):
            if not members:
                continue
            part = self._context.suites.add(gx.ExpectationSuite(name=f"{name}_{kind}", expectations=members))
            definition = self._context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{name}_{kind}", data=batch, suite=part)
            )
            definitions.append((definition, formats[kind]))
        self._definitions[key] = definitions
        return definitions

    def check(self, table: str, frame, embedding_dim: int | None = None) -> list[RuleResult]:
        """Runs a table's output suite on the rows about to be written.

        Args:
            table: a key of ``OUTPUT_RULES``.
            frame: a Spark DataFrame with the table's columns (plus ``PAIR_SUPPLIER_COLUMNS`` for
                ``pairs``, ``VECTOR_NORM_COLUMNS`` for ``embeddings``).
            embedding_dim: the stored vector width; required for ``embeddings``.

        Returns:
            One ``RuleResult`` per rule of ``OUTPUT_RULES[table]``, in that order.

        Raises:
            RuntimeError: when GX could not evaluate an expectation (a bug, not bad data).
        """
        counts = {rule: 0 for rule in OUTPUT_RULES[table]}
        examples: dict[str, list[str]] = {rule: [] for rule in OUTPUT_RULES[table]}
        failed: set[str] = set()
        for definition, result_format in self._definitions_for(table, embedding_dim):
            result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
            for res in result.results:
                rule = res.expectation_config.meta["rule"]
                if res.exception_info and res.exception_info.get("raised_exception"):
                    raise RuntimeError(
                        f"GX output check {rule} on table {table} raised: {res.exception_info.get('exception_message')}"
                    )
                if res.success:
                    continue
                failed.add(rule)
                if "observed_value" in res.result:  # UnexpectedRowsExpectation
                    counts[rule] += int(res.result["observed_value"])
                    rows = res.result.get("details", {}).get("unexpected_rows") or []
                else:
                    counts[rule] += int(res.result.get("unexpected_count") or 0)
                    rows = res.result.get("partial_unexpected_index_list") or []
                examples[rule] += [_example(row) for row in rows]
        results = [
            RuleResult(
                table=table,
                rule=rule,
                success=rule not in failed,
                unexpected_count=counts[rule],
                examples=tuple(examples[rule][:EXAMPLES_PER_RULE]),
            )
            for rule in OUTPUT_RULES[table]
        ]
        log.info(
            "output checks on %s: %s",
            table,
            ", ".join(f"{r.rule}={'ok' if r.success else r.unexpected_count}" for r in results),
        )
        return results
