"""What the pair verifier costs: candidate pairs/s on this CPU, against the search it follows.

    .venv/bin/python bench/verifier_throughput.py     # writes bench/results/verifier_throughput.json
                                                      # and the table in bench/README.md

The shipped sample listings (``examples/``) are embedded once with the shipped encoder and put in
one catalogue of ``--copies`` times their number (each copy's vectors nudged by a little noise, so
the copies are near-duplicates of each other, as a catalogue's re-listings are). Timed, in the
same process: the candidate search alone (``dedup.find_pairs_by_id`` at ``dedup.min_similarity``,
the pairs stage without a verifier) and the verifier's work on those candidates
(``jobs.pairs.verify_candidates``: neighbour lists, parsing, features, trees). Each is run once
to warm up, then ``--repeats`` times; medians. The ratio is the pairs stage's search-plus-verify
time over search alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- verifier:begin -->", "<!-- verifier:end -->"
log = logging.getLogger("bench.verifier_throughput")


def median_seconds(run, repeats: int) -> float:
    """Median wall seconds of ``run()`` over ``repeats`` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def catalogue(config, copies: int, seed: int = 0):
    """The sample listings embedded, ``copies`` times with noise: (frame, index_m, sim_t/i inputs)."""
    import glob

    import pandas as pd

    from encoder.factory import build_encoder

    frames = [pd.read_parquet(p) for p in sorted(glob.glob(str(ROOT / "examples/listings/dt=*/*.parquet")))]
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["supplier_id"].notna() & (rows["title"].notna() | rows["image"].notna())]
    rows = rows.drop_duplicates("listing_id").reset_index(drop=True)
    encoded = build_encoder(config.encoder).encode(
        [t if isinstance(t, str) else None for t in rows["title"]],
        [bytes(b) if isinstance(b, bytes | bytearray) else None for b in rows["image"]],
    )
    rng = np.random.default_rng(seed)
    parts, vectors = [], []
    for copy in range(copies):
        noisy = encoded.m + (rng.normal(scale=0.01, size=encoded.m.shape) if copy else 0.0)
        vectors.append((noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32))
        parts.append(rows.assign(listing_id=rows["listing_id"] + f"#{copy}"))
    frame = pd.concat(parts, ignore_index=True)
    frame["has_text"] = np.tile(encoded.has_text, copies)
    order = np.argsort(frame["listing_id"].to_numpy(), kind="stable")
    return frame.iloc[order].reset_index(drop=True), np.concatenate(vectors)[order]


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "conf" / "sspr.toml"), help="the pipeline config")
    parser.add_argument("--copies", type=int, default=5, help="catalogue = this many copies of the samples")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "verifier_throughput.json"))
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"), help="'' = no table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.copies < 1 or args.repeats < 1:
        log.error("--copies and --repeats must be >= 1")
        return 2
    from config import load_config
    from dedup.search import find_pairs_by_id
    from evaluation.report import update_readme
    from jobs.pairs import verify_candidates

    config = load_config(Path(args.config))
    if not config.dedup.verifier:
        log.error("dedup.verifier is not set in %s: nothing to measure", args.config)
        return 2
    frame, index_m = catalogue(config, args.copies)
    ids = frame["listing_id"].tolist()
    position = {listing_id: k for k, listing_id in enumerate(ids)}

    def search():
        return find_pairs_by_id(
            ids, index_m, ids, index_m, config.dedup.min_similarity, config.dedup.max_results_per_query
        )[0]

    pairs = search()
    left = np.array([position[i] for i in pairs.column("listing_id_l").to_pylist()], dtype=np.int64)
    right = np.array([position[i] for i in pairs.column("listing_id_r").to_pylist()], dtype=np.int64)
    sim = pairs.column("similarity").to_numpy().astype(np.float32)
    nan = np.full(len(left), np.nan, dtype=np.float32)

    def verify():
        return verify_candidates(frame, index_m, left, right, sim, sim, nan, config.dedup, config.encoder)

    search_s = median_seconds(search, args.repeats)
    verify_s = median_seconds(verify, args.repeats)
    report = {
        "listings": len(frame),
        "candidates": len(left),
        "search_s": round(search_s, 4),
        "verify_s": round(verify_s, 4),
        "verifier_pairs_per_s": round(len(left) / verify_s, 1),
        "stage_time_vs_search_alone": round((search_s + verify_s) / search_s, 2),
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    if args.readme:
        table = (
            f"Median of {args.repeats} runs after a warm-up, {os.cpu_count()} CPUs, one process; "
            f"catalogue of {len(frame)} listings ({args.copies} copies of the samples), "
            f"{len(left)} candidate pairs at `dedup.min_similarity` {config.dedup.min_similarity:.4f}.\n\n"
            "| step | seconds | candidate pairs/s | time vs search alone |\n|---|---:|---:|---:|\n"
            f"| candidate search (no verifier) | {search_s:.3f} | {len(left) / search_s:.0f} | 1.00x |\n"
            f"| verifier on the candidates | {verify_s:.3f} | {len(left) / verify_s:.0f} | "
            f"{verify_s / search_s:.2f}x |\n"
            f"| search + verifier (the verified pairs stage) | {search_s + verify_s:.3f} | "
            f"{len(left) / (search_s + verify_s):.0f} | {(search_s + verify_s) / search_s:.2f}x |"
        )
        update_readme(Path(args.readme), table, BEGIN, END)
    log.info("wrote %s: %s", args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
