"""Where a stage's time goes: Spark start-up and metastore checks against the stage's own work.

    make nightly && .venv/bin/python bench/stage_overhead.py    # reads var/warehouse
    # writes bench/results/stage_overhead.json and the table in bench/README.md

Every stage records ``details.timings`` in ``run_metrics`` (``jobs.stage.run_stage``): waiting
for the metastore lock, building the SparkSession (JVM, Hive client), the first metastore queries
(the later-dates check) and the stage's work (reads, compute, writes). The table gives, per stage,
the median over the run dates found; "overhead" is everything but the work, as a share of the
stage's seconds, so the ratio is measured within each run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- stage-overhead:begin -->", "<!-- stage-overhead:end -->"
PHASES = ("lock_wait", "spark_start", "metastore_checks", "work")
ORDER = ("validate", "embed", "catalog", "pairs", "groups", "report")
log = logging.getLogger("bench.stage_overhead")


def read_timings(warehouse: Path, database: str = "dedup") -> dict[str, list[dict[str, float]]]:
    """Returns stage -> one ``{phase: seconds, "seconds": total}`` per run date that has timings."""
    import pyarrow.dataset as ds

    folder = warehouse / f"{database}.db" / "run_metrics"
    if not folder.is_dir():
        raise SystemExit(f"no run_metrics under {folder}: run `make nightly` first (or pass --warehouse)")
    rows = ds.dataset(folder, format="parquet", partitioning="hive").to_table().to_pylist()
    out: dict[str, list[dict[str, float]]] = {}
    for row in rows:
        timings = json.loads(row["details"] or "{}").get("timings")
        if timings:
            out.setdefault(row["stage"], []).append(timings | {"seconds": row["seconds"]})
    if not out:
        raise SystemExit(f"no stage timings in {folder}: rerun the nightly with this version (make nightly)")
    return out


def summarise(timings: dict[str, list[dict[str, float]]]) -> list[dict[str, float | str | int]]:
    """Returns one row per stage: medians of each phase and the overhead share."""
    rows = []
    for stage in sorted(timings, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s)):
        runs = timings[stage]
        med = {p: statistics.median(r.get(p, 0.0) for r in runs) for p in (*PHASES, "seconds")}
        shares = [1 - r.get("work", 0.0) / r["seconds"] for r in runs if r["seconds"]]
        rows.append({"stage": stage, "runs": len(runs), **med, "overhead_share": statistics.median(shares)})
    return rows


def render(rows: list[dict]) -> str:
    """The markdown table."""
    lines = [
        "| stage | runs | lock wait (s) | Spark start (s) | metastore checks (s) | work (s) | total (s) | overhead share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['runs']} | {r['lock_wait']:.1f} | {r['spark_start']:.1f} | "
            f"{r['metastore_checks']:.1f} | {r['work']:.1f} | {r['seconds']:.1f} | {r['overhead_share']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Reads the timings, writes the JSON and the table; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bench/stage_overhead.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warehouse", type=Path, default=ROOT / "var" / "warehouse")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stage_overhead.json")
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"), help="'' = no table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = summarise(read_timings(args.warehouse))
    args.out.write_text(json.dumps({"warehouse": str(args.warehouse), "stages": rows}, indent=2) + "\n")
    if args.readme:
        from evaluation.report import update_readme

        update_readme(Path(args.readme), render(rows), BEGIN, END)
    for r in rows:
        log.info("%s: %.1fs, %.0f%% outside the work", r["stage"], r["seconds"], 100 * r["overhead_share"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
