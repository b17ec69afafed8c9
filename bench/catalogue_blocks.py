"""What searching a big supplier in catalogue blocks costs against one task per query block with its whole catalogue.

    .venv/bin/python bench/catalogue_blocks.py                    # 40,000-listing supplier (~12 min)
    .venv/bin/python bench/catalogue_blocks.py --listings 4000 --block 1000 --repeats 1 --readme ''
    # writes bench/results/catalogue_blocks.json and the table in bench/README.md

The pairs stage (``jobs.pairs.find_supplier_pairs``, the shipped conf/sspr.toml: lexical hybrid,
verifier, budget) on one synthetic text-only supplier (``bench/block_reuse.py``'s product-like
titles, 256-d float16 vectors, a tenth planted near-copies) whose newest quarter arrives
tonight, in Spark local mode, two ways: ``dedup.catalogue_block_size`` above the catalogue
(every query-block task holds the whole catalogue: the layout before catalogue blocks) and at
``--block`` ((query block x catalogue block) tasks, merged exactly). Each run is a fresh process
and Spark session (the two alternate, ``--repeats`` times each); it times the search to the
collected pairs (Spark start-up excluded) and samples the resident memory of every Python
worker every 0.1 s: the largest is what one task needs. It reports medians, their ratios and
whether both ways give the same pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- catalogue-blocks:begin -->", "<!-- catalogue-blocks:end -->"
log = logging.getLogger("bench.catalogue_blocks")


def worker_rss_mib() -> float:
    """The largest resident set (MiB) among this machine's PySpark Python workers now."""
    largest = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"pyspark.daemon" not in f.read():  # workers are forks of the daemon
                    continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        largest = max(largest, int(line.split()[1]))
        except OSError:  # the worker ended while it was read
            continue
    return largest / 1024


class PeakSampler:
    """Samples ``worker_rss_mib`` in a thread until stopped; ``peak`` is the largest seen."""

    def __init__(self, every: float = 0.1) -> None:
        self.peak = 0.0
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, worker_rss_mib())
            self._stop.wait(self._every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_once(listings: int, block: int, seed: int, config_path: Path, out: Path) -> None:
    """One run in this process: the search with ``catalogue_block_size`` = ``block``; writes ``out``."""
    import dataclasses
    import importlib.util

    from pyspark.sql import functions as F

    from config.loader import load_config
    from jobs.pairs import catalogue_sizes, find_supplier_pairs
    from jobs.spark import build_spark

    # the synthetic supplier of bench/block_reuse.py (bench/ is no package)
    spec = importlib.util.spec_from_file_location("block_reuse", ROOT / "bench" / "block_reuse.py")
    reuse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reuse)

    with tempfile.TemporaryDirectory(prefix="sspr-catalogue-blocks-") as tmp:
        overrides = {
            "paths.warehouse_dir": f"{tmp}/warehouse",
            "paths.metastore_dir": f"{tmp}/metastore",
            "spark.master": "local[2]",
            "spark.shuffle_partitions": "8",
        }
        config = load_config(config_path, overrides, environ={})
        dedup = dataclasses.replace(config.dedup, catalogue_block_size=block)
        catalogue, ids = reuse.make_supplier(listings, seed)
        catalogue = catalogue.assign(supplier_id="big", model_version="bench")
        spark = build_spark(config, "bench-catalogue-blocks")
        try:
            frame = spark.createDataFrame(catalogue).persist()
            frame.count()  # the input is in memory before the clock starts
            queries = frame.filter(F.col("listing_id") >= ids[len(ids) - len(ids) // 4])
            with PeakSampler() as sampler:
                started = time.perf_counter()
                search = find_supplier_pairs(
                    queries, frame, dedup, "2024-01-01", config.encoder, catalogue_sizes(frame)
                )
                pairs = search.pairs.select("listing_id_l", "listing_id_r", "similarity_m", "match_score").toPandas()
                tasks = search.found.filter("kind = 'candidates' and queries is not null").toPandas()
                seconds = time.perf_counter() - started
                search.release()
        finally:
            spark.stop()
    pairs = pairs.sort_values(["listing_id_l", "listing_id_r"]).reset_index(drop=True)
    out.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "worker_peak_mib": sampler.peak,
                "tasks": len(tasks),
                "largest_task_rows": int(tasks["catalogue_rows"].max()),
                "queries": len(ids) // 4,
                "pairs": [list(p) for p in zip(pairs["listing_id_l"], pairs["listing_id_r"], strict=True)],
                "match_score": pairs["match_score"].tolist(),
            }
        )
    )


def render(result: dict) -> str:
    """The markdown table."""
    rows = [
        (
            "| catalogue | new tonight | layout | tasks | largest task (catalogue rows) | search (s) | "
            "largest Python worker (MiB) |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, label in (("whole", "whole catalogue per task"), ("blocked", "catalogue blocks")):
        run = result[name]
        rows.append(
            f"| {result['listings']:,} | {result['queries']:,} | {label} | {run['tasks']} | "
            f"{run['largest_task_rows']:,} | {run['seconds']:.1f} | {run['worker_peak_mib']:.0f} |"
        )
    rows.append("")
    rows.append(
        f"Catalogue blocks of {result['block']:,}: time {result['time_ratio']:.2f}x, largest worker "
        f"{result['memory_ratio']:.2f}x the whole-catalogue layout's; same pairs: "
        f"{'yes' if result['same_pairs'] else 'NO'} ({result['pair_count']:,} pairs, match scores within "
        f"{result['max_score_difference']:.1e})."
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Runs both layouts in alternation, writes the JSON and the table; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bench/catalogue_blocks.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listings", type=int, default=40000, help="the supplier's catalogue size")
    parser.add_argument("--block", type=int, default=10000, help="dedup.catalogue_block_size of the blocked runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "conf" / "sspr.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "catalogue_blocks.json")
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"), help="'' = no table")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child run with this block size
    parser.add_argument("--one-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.one is not None:
        logging.getLogger("jobs.pairs").setLevel(logging.WARNING)
        logging.getLogger("dedup.search").setLevel(logging.WARNING)
        run_once(args.listings, args.one, args.seed, args.config, args.one_out)
        return 0
    if args.block >= args.listings:
        parser.error("--block must be smaller than --listings, or nothing is split")
    sizes = {"whole": args.listings + 1, "blocked": args.block}
    runs: dict[str, list[dict]] = {"whole": [], "blocked": []}
    with tempfile.TemporaryDirectory(prefix="sspr-catalogue-blocks-") as tmp:
        for repeat in range(args.repeats):
            for name in ("whole", "blocked") if repeat % 2 == 0 else ("blocked", "whole"):
                out = Path(tmp) / f"{name}-{repeat}.json"
                command = [sys.executable, __file__, "--one", str(sizes[name]), "--one-out", str(out)]
                command += ["--listings", str(args.listings), "--seed", str(args.seed), "--config", str(args.config)]
                subprocess.run(command, check=True, cwd=ROOT)
                runs[name].append(json.loads(out.read_text()))
                log.info("repeat %d, %s: %.1fs", repeat, name, runs[name][-1]["seconds"])
    summary = {}
    for name, done in runs.items():
        summary[name] = {
            "seconds": statistics.median(r["seconds"] for r in done),
            "worker_peak_mib": statistics.median(r["worker_peak_mib"] for r in done),
            "tasks": done[0]["tasks"],
            "largest_task_rows": done[0]["largest_task_rows"],
            "timings": [r["seconds"] for r in done],
            "worker_peaks_mib": [r["worker_peak_mib"] for r in done],
        }
    whole, blocked = runs["whole"][0], runs["blocked"][0]
    same = whole["pairs"] == blocked["pairs"] and all(
        r["pairs"] == whole["pairs"] for r in runs["whole"] + runs["blocked"]
    )
    differences = [abs(a - b) for a, b in zip(whole["match_score"], blocked["match_score"], strict=False)]
    result = {
        "listings": args.listings,
        "queries": whole["queries"],
        "block": args.block,
        "repeats": args.repeats,
        **summary,
        "time_ratio": summary["blocked"]["seconds"] / summary["whole"]["seconds"],
        "memory_ratio": summary["blocked"]["worker_peak_mib"] / summary["whole"]["worker_peak_mib"],
        "same_pairs": bool(same),
        "pair_count": len(whole["pairs"]),
        "max_score_difference": max(differences, default=0.0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.readme:
        from evaluation.report import update_readme

        update_readme(Path(args.readme), render(result), BEGIN, END)
    log.info("%s", render(result))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
