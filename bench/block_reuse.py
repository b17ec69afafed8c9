"""What a big supplier's query blocks save by sharing its catalogue's vectors on a worker.

    .venv/bin/python bench/block_reuse.py                        # 20,000 listings, 10 blocks (~5 min)
    .venv/bin/python bench/block_reuse.py --listings 4000 --readme ''   # a quick look
    # writes bench/results/block_reuse.json and the table in bench/README.md

The pairs stage runs one task per (supplier, query block), and every block of a supplier gets the
supplier's whole catalogue. Building the catalogue's searchable vectors — the hybrid's lexical
title vectors (a Python loop over titles) joined to the upcast ``m`` vectors — is the same work
for every block; ``jobs.pairs.catalogue_vectors`` does it once per worker. This runs the real
``jobs.pairs.find_block_pairs`` (the shipped conf/sspr.toml: lexical hybrid, verifier, budget)
over every query block of one synthetic text-only supplier (titles from a product-like
vocabulary, 256-d vectors stored as float16, a tenth of them planted near-copies), in one
process: once with the cache emptied before each block (as before), once sharing it, in
alternating order, ``--repeats`` times. It reports the median seconds of each, their ratio and
whether both give the same rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- block-reuse:begin -->", "<!-- block-reuse:end -->"
log = logging.getLogger("bench.block_reuse")
VOCABULARY = (
    "samsung sony lg philips bosch apple dell hp lenovo asus acer canon nikon panasonic sharp "
    "tv lcd led oled monitor laptop tablet phone camera lens speaker headphones charger cable "
    "black white silver blue red 4k hd 32in 40in 55in 128gb 256gb 1tb usb hdmi wireless bluetooth "
    "pro max mini plus ultra series edition pack kit"
)
WORDS = VOCABULARY.split()


def make_supplier(listings: int, seed: int):
    """One supplier's catalogue frame (every column find_block_pairs reads) and its listing ids."""
    import pandas as pd

    from schemas.vectors import pack_vectors

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(listings, 256)).astype(np.float32)
    titles = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 10)))) for _ in range(listings)]
    copies = rng.choice(listings, size=listings // 10, replace=False)
    for k in copies:  # a near-copy of the previous listing: close vector, reworded title
        source = (k - 1) % listings
        vectors[k] = vectors[source] + 0.2 * rng.normal(size=256)
        titles[k] = titles[source].upper() + " new"
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    stored = pack_vectors(vectors)
    ids = [f"l{k:07d}" for k in range(listings)]
    catalogue = pd.DataFrame(
        {
            "listing_id": ids,
            "emb_m": stored,
            "emb_t": stored,
            "emb_i": pack_vectors(np.zeros((listings, 256), dtype=np.float32)),
            "has_text": True,
            "has_image": False,
            "title": titles,
            "brand": [t.split()[0] for t in titles],
            "price": rng.uniform(5, 500, size=listings).round(2),
            "currency": "EUR",
        }
    )
    return catalogue, ids


def run_blocks(catalogue, ids, config, share: bool):
    """Seconds for find_block_pairs over every query block; the rows it returned."""
    import pandas as pd

    from jobs import pairs

    size = config.dedup.query_block_size
    pairs.forget_catalogue_vectors()
    started = time.perf_counter()
    out = []
    for number, start in enumerate(range(0, len(ids), size)):
        if not share:
            pairs.forget_catalogue_vectors()
        queries = pd.DataFrame({"listing_id": ids[start : start + size], "model_version": "bench"})
        out.append(pairs.find_block_pairs(("s", number), queries, catalogue, config.dedup, config.encoder))
    seconds = time.perf_counter() - started
    rows = pd.concat(out, ignore_index=True).drop(columns="search_seconds")
    return seconds, rows


def render(result: dict) -> str:
    """The markdown table."""
    return "\n".join(
        [
            "| listings | query blocks | rebuilt per block (s) | shared per worker (s) | speed-up | same rows |",
            "|---:|---:|---:|---:|---:|---|",
            (
                f"| {result['listings']:,} | {result['blocks']} | {result['rebuilt_seconds']:.1f} | "
                f"{result['shared_seconds']:.1f} | {result['speedup']:.2f}x | {'yes' if result['same_rows'] else 'NO'} |"
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Runs both ways, writes the JSON and the table; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bench/block_reuse.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listings", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=ROOT / "conf" / "sspr.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "block_reuse.json")
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"), help="'' = no table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("jobs.pairs").setLevel(logging.WARNING)
    logging.getLogger("dedup.search").setLevel(logging.WARNING)
    from config.loader import load_config

    config = load_config(args.config)
    catalogue, ids = make_supplier(args.listings, args.seed)
    timings: dict[bool, list[float]] = {False: [], True: []}
    rows = {}
    for repeat in range(args.repeats):
        for share in (False, True) if repeat % 2 == 0 else (True, False):
            seconds, rows[share] = run_blocks(catalogue, ids, config, share)
            timings[share].append(seconds)
            log.info("repeat %d, %s: %.1fs", repeat, "shared" if share else "rebuilt", seconds)
    rebuilt, shared = statistics.median(timings[False]), statistics.median(timings[True])
    result = {
        "listings": args.listings,
        "blocks": -(-args.listings // config.dedup.query_block_size),
        "query_block_size": config.dedup.query_block_size,
        "dim": 256 + (config.encoder.lexical_buckets if config.encoder.lexical_weight > 0 else 0),
        "repeats": args.repeats,
        "rebuilt_seconds": rebuilt,
        "shared_seconds": shared,
        "speedup": rebuilt / shared,
        "same_rows": bool(rows[False].equals(rows[True])),
        "pairs": int((rows[True]["kind"] == "pair").sum()),
        "timings": {"rebuilt": timings[False], "shared": timings[True]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.readme:
        from evaluation.report import update_readme

        update_readme(Path(args.readme), render(result), BEGIN, END)
    log.info("%d blocks: %.1fs rebuilt, %.1fs shared (%.2fx)", result["blocks"], rebuilt, shared, result["speedup"])
    return 0 if result["same_rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
