"""Tests for the output suites in schemas/expectations.py that need no Spark.

Running the suites on data is tested in tests/jobs/test_output_checks.py.
"""

from __future__ import annotations

import pytest

from schemas.expectations import OUTPUT_ID_COLUMNS, OUTPUT_RULES, RuleResult, build_output_suite
from schemas.tables import TABLES


@pytest.mark.parametrize("table", sorted(OUTPUT_RULES))
def test_suite_expectations_carry_exactly_the_tables_rules(table):
    suite = build_output_suite(table, embedding_dim=8)
    assert suite.name == table
    rules = [x.meta["rule"] for x in suite.expectations]
    assert set(rules) == set(OUTPUT_RULES[table])


@pytest.mark.parametrize("table", sorted(OUTPUT_RULES))
def test_id_columns_are_contract_columns(table):
    assert set(OUTPUT_ID_COLUMNS[table]) <= set(TABLES[table].schema.names)


def test_embeddings_suite_uses_the_given_width():
    queries = [
        x.unexpected_rows_query
        for x in build_output_suite("embeddings", embedding_dim=1664).expectations
        if x.meta["rule"] == "embedding_dimension"
    ]
    # stored as float16: 2 bytes a component
    assert len(queries) == 1 and "octet_length(emb_m) <> 3328" in queries[0]


@pytest.mark.parametrize("dim", [None, 0, True, "1664"])
def test_embeddings_suite_needs_a_width(dim):
    with pytest.raises(ValueError, match="vector width"):
        build_output_suite("embeddings", embedding_dim=dim)


def test_unknown_table_has_no_suite():
    with pytest.raises(ValueError, match="no output rules for table 'run_metrics'"):
        build_output_suite("run_metrics")


def test_rule_result_describes_table_rule_count_and_examples():
    failed = RuleResult("pairs", "pair_within_one_supplier", False, 3, ("listing_id_l=a", "listing_id_l=b"))
    assert failed.describe() == (
        "table pairs, rule pair_within_one_supplier: 3 offending rows, e.g. [listing_id_l=a; listing_id_l=b]"
    )
    assert RuleResult("groups", "group_has_two_members", True, 0).describe() == (
        "table groups, rule group_has_two_members: ok"
    )
