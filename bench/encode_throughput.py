"""Encoding throughput of the encoders on the shipped sample listings (CPU, or the configured device).

    .venv/bin/python bench/encode_throughput.py            # writes bench/results/encode_throughput.json
                                                           # and the table in bench/README.md

Encoders, all built by ``encoder.build_encoder`` from ``conf/sspr.toml`` with overrides:
``zero-shot`` (the baseline of every ratio), ``sspr`` (the trained model alone) and ``hybrid``
(the shipped default: sspr + lexical part). Plus ``lexical`` alone (``encoder.lexical``), to show
what the hybrid adds, and sentence-transformers' own ``encode`` of the same MiniLM weights (the
yardstick of text-only speed). Cases: ``text-only`` (every sample listing's title, no image) and
``title+image`` (the sample listings that have a photo, with it).

Each (encoder, case) is run once to warm up, then ``--repeats`` times; the median wall time gives
records/s. Ratios are against ``zero-shot`` on the same case in the same run, because absolute
numbers on this shared machine move with its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- throughput:begin -->", "<!-- throughput:end -->"
log = logging.getLogger("bench.encode_throughput")


def read_samples(limit: int | None) -> tuple[list[str | None], list[bytes | None]]:
    """Returns the titles and image bytes of the sample listings (valid, not deleted rows)."""
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted(glob.glob(str(ROOT / "examples/listings/dt=*/*.parquet")))]
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["listing_id"].notna() & rows["supplier_id"].notna()]
    rows = rows[rows["title"].fillna("").str.strip().ne("") | rows["image"].notna()]
    titles = [t if isinstance(t, str) else None for t in rows["title"]]
    images = [bytes(b) if isinstance(b, (bytes, bytearray)) else None for b in rows["image"]]
    if limit:
        titles, images = titles[:limit], images[:limit]
    return titles, images


def measure(encode, repeats: int) -> float:
    """Median seconds of ``encode()`` over ``repeats`` runs, after one warm-up run."""
    encode()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_memory_mb(name: str, limit: int | None, threads: int) -> float:
    """Peak resident memory (MiB) of a fresh process that builds one encoder and encodes both cases.

    A child process per encoder, so each peak is its own (the parent holds every model at once).
    """
    import subprocess

    command = [sys.executable, __file__, "--child", name, "--threads", str(threads), "--readme", ""]
    if limit:
        command += ["--limit", str(limit)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


def child(name: str, limit: int | None, threads: int) -> int:
    """Builds encoder ``name``, encodes both cases once, prints ``{"peak_rss_mb": ...}``."""
    import resource

    import torch

    from config import load_config
    from encoder.factory import build_encoder

    torch.set_num_threads(threads)
    titles, images = read_samples(limit)
    base = dataclasses.replace(load_config(ROOT / "conf" / "sspr.toml", environ={}).encoder, device="cpu")
    if name == ST_NAME:
        from sentence_transformers import SentenceTransformer

        from encoder.text import minilm_model_dir

        model = SentenceTransformer(str(minilm_model_dir()), device="cpu")
        model.encode([t for t in titles if t], batch_size=base.batch_size, show_progress_bar=False)
    else:
        encoder = build_encoder(encoder_configs(base)[name])
        encoder.encode([t for t in titles if t], [None] * sum(1 for t in titles if t))
        with_image = [k for k, image in enumerate(images) if image is not None]
        if with_image:
            encoder.encode([titles[k] for k in with_image], [images[k] for k in with_image])
    # VmHWM is this process image's own peak; ru_maxrss would carry over the parent's peak
    # through fork + exec on Linux
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        peak_mb = int(line.split()[1]) / 1024
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak_mb}))
    return 0


ST_NAME = "sentence-transformers encode (MiniLM)"


def encoder_configs(base) -> dict:
    """The encoders measured, by name: zero-shot (the baseline), sspr alone, the shipped hybrid."""
    return {
        "zero-shot": dataclasses.replace(base, kind="zero-shot", weights="", lexical_weight=0.0),
        "sspr": dataclasses.replace(base, lexical_weight=0.0),
        "hybrid": base,
    }


def run(limit: int | None, repeats: int, threads: int) -> dict:
    """Measures every (encoder, case); returns the JSON-ready results."""
    import torch

    from config import load_config
    from encoder.factory import build_encoder
    from encoder.lexical import LexicalVectorizer

    torch.set_num_threads(threads)
    base = dataclasses.replace(load_config(ROOT / "conf" / "sspr.toml", environ={}).encoder, device="cpu")
    configs = encoder_configs(base)
    titles, images = read_samples(limit)
    with_image = [k for k, image in enumerate(images) if image is not None]
    cases = {
        "text-only": ([t for t in titles if t], None),
        "title+image": ([titles[k] for k in with_image], [images[k] for k in with_image]),
    }
    results = []
    for name, config in configs.items():
        encoder = build_encoder(config)
        for case, (case_titles, case_images) in cases.items():
            if not case_titles:
                continue
            given = case_images if case_images is not None else [None] * len(case_titles)
            seconds = measure(lambda e=encoder, t=case_titles, g=given: e.encode(t, g), repeats)
            results.append(
                {
                    "encoder": name,
                    "case": case,
                    "records": len(case_titles),
                    "seconds": round(seconds, 4),
                    "records_per_s": round(len(case_titles) / seconds, 1),
                }
            )
            log.info("%s / %s: %d records in %.2fs", name, case, len(case_titles), seconds)
    text = cases["text-only"][0]
    # the yardstick of issue 14: sentence-transformers' own encode of the same MiniLM weights
    from sentence_transformers import SentenceTransformer

    from encoder.text import minilm_model_dir

    model = SentenceTransformer(str(minilm_model_dir()), device="cpu")
    model.max_seq_length = base.text_max_tokens
    seconds = measure(lambda: model.encode(text, batch_size=base.batch_size, show_progress_bar=False), repeats)
    results.append(
        {
            "encoder": ST_NAME,
            "case": "text-only",
            "records": len(text),
            "seconds": round(seconds, 4),
            "records_per_s": round(len(text) / seconds, 1),
        }
    )
    lexical = LexicalVectorizer(base.lexical_buckets, base.lexical_idf)
    seconds = measure(lambda: lexical.transform(text), repeats)
    results.append(
        {
            "encoder": "lexical part alone",
            "case": "text-only",
            "records": len(text),
            "seconds": round(seconds, 4),
            "records_per_s": round(len(text) / seconds, 1),
        }
    )
    baseline = {r["case"]: r["seconds"] for r in results if r["encoder"] == "zero-shot"}
    st_seconds = next(r["seconds"] for r in results if r["encoder"] == ST_NAME)
    peaks = {name: round(peak_memory_mb(name, limit, threads), 1) for name in [*configs, ST_NAME]}
    for r in results:
        r["speed_vs_zero_shot"] = round(baseline[r["case"]] / r["seconds"], 3)
        if r["case"] == "text-only":
            r["speed_vs_sentence_transformers"] = round(st_seconds / r["seconds"], 3)
        r["peak_rss_mb"] = peaks.get(r["encoder"])
    return {
        "results": results,
        "repeats": repeats,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "limit": limit,
    }


def render(report: dict) -> str:
    """The markdown table of a report."""
    lines = [
        (
            f"Median of {report['repeats']} runs after a warm-up, {report['torch_threads']} torch "
            f"thread(s), {report['cpu_count']} CPUs; speed relative to zero-shot on the same case "
            "in the same run (higher is faster)."
        ),
        "",
        "| encoder | case | records | records/s | speed vs zero-shot | vs sentence-transformers | peak memory (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        st = r.get("speed_vs_sentence_transformers")
        peak = r.get("peak_rss_mb")
        lines.append(
            f"| {r['encoder']} | {r['case']} | {r['records']} | {r['records_per_s']:.1f} | "
            f"{r['speed_vs_zero_shot']:.2f}x | {'' if st is None else f'{st:.2f}x'} | "
            f"{'' if peak is None else f'{peak:.0f}'} |"
        )
    lines.append("")
    lines.append(
        "Peak memory: the peak resident set of a fresh process that builds that encoder alone and "
        "encodes both cases once (the lexical part runs inside the hybrid)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and writes its outputs; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="bench/encode_throughput.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encode_throughput.json")
    parser.add_argument(
        "--readme",
        default=str(ROOT / "bench" / "README.md"),
        help="markdown file whose throughput table is replaced ('' = none)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (Spark runs one per core)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N sample listings")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one encoder's peak memory
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.limit, args.threads)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    report = run(args.limit, args.repeats, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.readme:
        from evaluation.report import update_readme

        try:
            update_readme(Path(args.readme), render(report), BEGIN, END)
        except ValueError as error:
            log.error("%s", error)
            return 2
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
