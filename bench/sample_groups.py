"""How well the nightly's groups on the shipped samples match their known duplicates.

    make nightly                                   # the three sample days into var/warehouse
    .venv/bin/python bench/sample_groups.py        # prints the table, writes
                                                   # bench/results/sample_groups.json

Truth: ``examples/ground_truth/duplicates.csv`` (listings of one supplier that are one product).
Predicted: every pair of listings put in one group by any night (``group_members`` of the
warehouse, all run dates), as ``tests/e2e/test_nightly_dag.py`` scores them. Co-grouped pair
recall = true pairs grouped / true pairs; precision = true pairs grouped / pairs grouped; both
overall and per supplier, so a supplier whose groups chain shows up by name.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.sample_groups")


def true_pairs(duplicates_csv: Path) -> dict[tuple[str, str], str]:
    """The known duplicate pairs: {(listing_a, listing_b) sorted: supplier_id}."""
    by_product = defaultdict(list)
    with duplicates_csv.open() as f:
        for r in csv.DictReader(f):
            by_product[(r["supplier_id"], r["product_id"])].append(r["listing_id"])
    return {
        tuple(sorted(pair)): supplier
        for (supplier, _), ids in by_product.items()
        for pair in itertools.combinations(ids, 2)
    }


def grouped_pairs(members: list[dict]) -> dict[tuple[str, str], str]:
    """Pairs of listings sharing a group on some night: {(a, b) sorted: supplier_id}.

    ``members`` are ``group_members`` rows (run_date, group_id, supplier_id, listing_id).
    """
    groups = defaultdict(list)
    for m in members:
        groups[(m["run_date"], m["group_id"])].append((m["supplier_id"], m["listing_id"]))
    out = {}
    for rows in groups.values():
        ids = sorted({listing for _, listing in rows})
        for pair in itertools.combinations(ids, 2):
            out[pair] = rows[0][0]
    return out


def score(truth: dict, grouped: dict) -> dict:
    """Co-grouped pair recall and precision, overall and per supplier."""

    def rates(t: set, g: set) -> dict:
        found = len(t & g)
        return {
            "true_pairs": len(t),
            "grouped_pairs": len(g),
            "found": found,
            "recall": round(found / len(t), 4) if t else None,
            "precision": round(found / len(g), 4) if g else None,
        }

    suppliers = sorted(set(truth.values()) | set(grouped.values()))
    return {
        "all": rates(set(truth), set(grouped)),
        "suppliers": {
            s: rates({p for p, v in truth.items() if v == s}, {p for p, v in grouped.items() if v == s})
            for s in suppliers
        },
    }


def render(result: dict) -> str:
    """A markdown table of ``score``'s result."""
    lines = ["| supplier | true pairs | grouped pairs | found | recall | precision |", "|---|---:|---:|---:|---:|---:|"]
    rows = [("**all**", result["all"]), *result["suppliers"].items()]
    for name, r in rows:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"
        lines.append(
            f"| {name} | {r['true_pairs']} | {r['grouped_pairs']} | {r['found']} | {fmt(r['recall'])} | {fmt(r['precision'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", default=str(ROOT / "var" / "warehouse"), help="the nightly's warehouse folder")
    parser.add_argument("--truth", default=str(ROOT / "examples" / "ground_truth" / "duplicates.csv"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sample_groups.json"), help="'' = none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table = Path(args.warehouse) / "dedup.db" / "group_members"
    if not table.is_dir():
        log.error("no group_members table under %s: run `make nightly` first", args.warehouse)
        return 2
    import pyarrow.dataset as ds

    members = ds.dataset(table, format="parquet", partitioning="hive").to_table().to_pylist()
    result = score(true_pairs(Path(args.truth)), grouped_pairs(members))
    result["run_dates"] = sorted({str(m["run_date"]) for m in members})
    log.info("co-grouped pairs over %s:\n%s", ", ".join(result["run_dates"]), render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
