"""Great Expectations suites: the row rules of the listings contract.

Each expectation carries its rule name in ``meta["rule"]``; a row that fails one goes to the
``quarantine`` table with that name. Rules that need the whole day (``listing_id_unique``: the latest
``updated_at`` wins) are applied by ``jobs/validate.py`` across partitions, after these row rules.

GX runs on pandas batches (one per Spark partition inside ``mapInPandas``), because the pandas
engine returns the index of every failing row, which is what quarantining needs.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

log = logging.getLogger(__name__)

# Order matters: a row that breaks several rules is quarantined under the first one.
ROW_RULES: tuple[str, ...] = (
    "listing_id_not_null",
    "listing_id_not_blank",
    "supplier_id_not_null",
    "supplier_id_not_blank",
    "updated_at_not_null",
    "title_or_image_present",
)
DAY_RULES: tuple[str, ...] = ("listing_id_unique",)
ALL_RULES: tuple[str, ...] = ROW_RULES + DAY_RULES

_NOT_BLANK = r"\S"


def build_listings_suite(gx_module=None):
    """Builds the GX expectation suite for listing rows.

    The suite expects the helper column ``_title_or_image`` (see ``add_helper_columns``).

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
    ):
        expectation.meta = {"rule": rule}
        suite.add_expectation(expectation)
    return suite


def _import_gx():
    os.environ.setdefault("TQDM_DISABLE", "1")  # GX draws progress bars per batch otherwise
    import great_expectations as gx

    return gx


def add_helper_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Adds the derived columns the suite checks.

    Args:
        frame: listing rows with ``title``, ``image_uri`` and either ``image`` (bytes) or
            ``_has_image_bytes`` (bool, so Spark need not ship image bytes to Python to validate).

    Returns:
        A copy with ``_title_or_image`` (bool): a non-blank title, or image bytes / an image URI.
    """
    out = frame.copy()
    title_ok = out["title"].fillna("").astype(str).str.strip().str.len() > 0
    has_bytes = out["image"].notna() if "image" in out else out["_has_image_bytes"].eq(True)
    image_ok = has_bytes | out["image_uri"].fillna("").astype(str).str.strip().ne("")
    out["_title_or_image"] = title_ok | image_ok
    return out


class ListingsValidator:
    """Runs the listings suite on pandas batches; build once per process and reuse."""

    def __init__(self) -> None:
        gx = _import_gx()
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
        checked = add_helper_columns(frame)
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
