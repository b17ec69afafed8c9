"""The nightly end to end at three catalogue sizes, in Spark local mode: seconds and peak memory per stage.

    .venv/bin/python bench/end_to_end_scale.py                    # sizes 1000,10000,30000 (about 35 minutes)
    .venv/bin/python bench/end_to_end_scale.py --sizes 300,600,900 --readme ''   # a quick look
    # writes bench/results/end_to_end_scale.json and the table in bench/README.md

For each catalogue size C it builds a fresh warehouse and runs the six real stage jobs (the
shipped conf/sspr.toml: trained encoder, lexical hybrid, verifier, average-link groups), each as
its own process as the DAG's spark-submit would (``python jobs/<stage>.py --run-date D``), for
two nights: night 1 brings C synthetic listings (the catalogue), night 2 brings C/10 new ones
against it. Listings are text-only (random product-like titles, a brand, a price), in suppliers
whose sizes follow a Zipf law with, on average, 100 listings each, so supplier count grows with
the catalogue; a share of night 2's listings are reworded copies of catalogue listings, so the
night has real candidates and pairs to verify.

Per stage it records the wall seconds of the job's process, its peak resident memory (the
process and its JVM, sampled every 0.2 s) and the stage's own ``run_metrics`` timings. Then, per
stage, a non-negative least-squares fit over all six nights, seconds = fixed + b x the night's
listings + c x the catalogue's listings (a stage's cost may grow with what it reads, the night's
rows or the whole catalogue; never fall), extrapolated to the issue's night of 100,000 new
listings against a 1,000,000-listing catalogue (the same Zipf supplier layout scaled up; the cost
of one giant supplier is bench/search_scale.py's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- e2e-scale:begin -->", "<!-- e2e-scale:end -->"
STAGES = ("validate", "embed", "catalog", "pairs", "groups", "report")  # jobs.stage.PIPELINE_STAGES
NIGHTS = ("2024-06-01", "2024-06-02")
TARGET_NEW, TARGET_CATALOGUE = 100_000, 1_000_000
DEFAULT_SIZES = "1000,10000,30000"  # night 1 from 1,000 to 30,000 listings: the costs beyond the fixed ones show
log = logging.getLogger("bench.end_to_end_scale")


def supplier_sizes(total: int, mean: int = 100, exponent: float = 1.1, seed: int = 0) -> np.ndarray:
    """Returns Zipf-like supplier sizes (each >= 1) that sum to ``total``, ``total // mean`` suppliers."""
    count = max(1, total // mean)
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - sizes.sum()  # the remainder to the largest
    if sizes[0] < 1:
        raise ValueError(f"cannot split {total} listings into {count} suppliers")
    return sizes


def _title(rng: np.random.Generator, vocabulary: list[str]) -> str:
    words = rng.choice(vocabulary, size=int(rng.integers(4, 9)))
    return " ".join(words) + f" {rng.choice(list(string.ascii_uppercase))}{int(rng.integers(100, 10_000))}"


def reword(title: str, rng: np.random.Generator) -> str:
    """A same-product rewording: brand-style capitals, the model code's hyphen, one word more."""
    words = title.split()
    words[-1] = words[-1][0] + "-" + words[-1][1:]
    words.insert(int(rng.integers(0, len(words))), "new")
    return " ".join(words).upper() if rng.random() < 0.5 else " ".join(words)


def make_nights(catalogue: int, seed: int = 0, reworded_share: float = 0.3):
    """Returns (night-1 rows, night-2 rows, planted pairs) of synthetic listings as lists of dicts.

    Night 2 has ``catalogue // 10`` new listings in the same suppliers; ``reworded_share`` of
    them reword a catalogue listing of their supplier (the planted pairs, by listing id).
    """
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))
    vocabulary = ["".join(rng.choice(letters, size=int(rng.integers(3, 9)))) for _ in range(5000)]
    sizes = supplier_sizes(catalogue, seed=seed)
    first, second, planted = [], [], []
    start = dt.datetime(2024, 6, 1, 1, tzinfo=dt.UTC)

    def row(listing_id: str, supplier: str, title: str, when: dt.datetime) -> dict:
        return {
            "listing_id": listing_id,
            "supplier_id": supplier,
            "title": title,
            "description": None,
            "category": None,
            "brand": "Acme",
            "price": float(rng.integers(100, 100_000)) / 100,
            "currency": "USD",
            "image": None,
            "image_uri": None,
            "updated_at": when,
            "is_deleted": False,
        }

    for s, size in enumerate(sizes):
        supplier = f"s{s:05d}"
        titles = [_title(rng, vocabulary) for _ in range(size)]
        first += [row(f"{supplier}-{k:06d}", supplier, t, start) for k, t in enumerate(titles)]
        new = max(0, round(size / 10)) if s else max(1, round(size / 10))
        for k in range(new):
            listing_id = f"{supplier}-n{k:06d}"
            if rng.random() < reworded_share:
                source = int(rng.integers(0, size))
                title = reword(titles[source], rng)
                planted.append((f"{supplier}-{source:06d}", listing_id))
            else:
                title = _title(rng, vocabulary)
            second.append(row(listing_id, supplier, title, start + dt.timedelta(days=1)))
    return first, second, planted


def write_listings(folder: Path, rows: list[dict]) -> None:
    """Writes one night's listings in the input contract (the sample files' schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(next((ROOT / "examples" / "listings").glob("dt=*/*.parquet")))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-00000.parquet")


def run_stage(stage: str, night: str, env: dict[str, str], logs: Path) -> dict:
    """Runs one stage job as its own process; returns its wall seconds and peak memory (MiB)."""
    import psutil

    command = [sys.executable, str(ROOT / "jobs" / f"{stage}.py"), "--run-date", night]
    started = time.monotonic()
    with (logs / f"{night}-{stage}.log").open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            parent = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [parent, *parent.children(recursive=True)]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
                except psutil.Error:
                    pass
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    seconds = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"{stage} {night} failed with exit code {rc}: see {logs / f'{night}-{stage}.log'}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak[0] / 2**20, 1)}


def read_metrics(warehouse: Path, night: str) -> dict[str, dict]:
    """Returns stage -> its run_metrics row (rows in / out, details with timings) for a night."""
    import pyarrow.dataset as ds

    folder = warehouse / "dedup.db" / "run_metrics"
    table = ds.dataset(folder, format="parquet", partitioning="hive").to_table(filter=ds.field("run_date") == night)
    out = {}
    for row in table.to_pylist():
        details = json.loads(row["details"] or "{}")
        out[row["stage"]] = {
            "rows_in": row["rows_in"],
            "rows_out": row["rows_out"],
            "timings": details.get("timings", {}),
        }
    return out


def planted_recall(warehouse: Path, night: str, planted: list[tuple[str, str]]) -> float:
    """Returns the share of planted (catalogue, new) pairs that night's pairs table holds."""
    import pyarrow.dataset as ds

    folder = warehouse / "dedup.db" / "pairs"
    table = ds.dataset(folder, format="parquet", partitioning="hive").to_table(filter=ds.field("run_date") == night)
    found = {
        tuple(sorted(p)) for p in zip(table["listing_id_l"].to_pylist(), table["listing_id_r"].to_pylist(), strict=True)
    }
    return sum(tuple(sorted(p)) in found for p in planted) / max(1, len(planted))


def run_size(catalogue: int, workdir: Path, seed: int) -> dict:
    """Runs both nights for one catalogue size; returns the measurements."""
    first, second, planted = make_nights(catalogue, seed=seed)
    root = workdir / f"c{catalogue}"
    logs = root / "logs"
    logs.mkdir(parents=True)
    write_listings(root / "listings" / f"dt={NIGHTS[0]}", first)
    write_listings(root / "listings" / f"dt={NIGHTS[1]}", second)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        PYSPARK_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        SSPR_CONFIG=str(ROOT / "conf" / "sspr.toml"),
        SSPR__SPARK__MASTER="local[2]",
        SSPR__PATHS__LISTINGS_ROOT=str(root / "listings"),
        **{
            f"SSPR__PATHS__{k.upper()}": str(root / k)
            for k in ("warehouse_dir", "metastore_dir", "reports_dir", "runs_dir")
        },
    )
    nights = []
    for night, rows in zip(NIGHTS, (first, second), strict=True):
        stages = {}
        for stage in STAGES:
            stages[stage] = run_stage(stage, night, env, logs)
            log.info(
                "catalogue %d, %s %s: %.1fs, peak %.0f MiB",
                catalogue,
                night,
                stage,
                stages[stage]["seconds"],
                stages[stage]["peak_rss_mib"],
            )
        for stage, metrics in read_metrics(root / "warehouse_dir", night).items():
            stages[stage] |= metrics
        nights.append({"night": night, "listings": len(rows), "stages": stages})
    recall = planted_recall(root / "warehouse_dir", NIGHTS[1], planted)
    return {
        "catalogue": catalogue,
        "new": len(second),
        "suppliers": len(supplier_sizes(catalogue)),
        "largest_supplier": int(supplier_sizes(catalogue)[0]),
        "planted_pairs": len(planted),
        "planted_recall": round(recall, 4),
        "nights": nights,
    }


def night_points(sizes: list[dict], stage: str, key: str = "seconds") -> list[tuple[int, int, float]]:
    """Every measured night of a stage as ``(night's listings, catalogue after it, value)``."""
    points = []
    for size in sizes:
        catalogue = 0
        for night in size["nights"]:
            listings = night["listings"]
            catalogue += listings  # night 2's listings are all new
            points.append((listings, catalogue, float(night["stages"][stage][key])))
    return points


def fit_cost(points: list[tuple[int, int, float]]) -> tuple[float, float, float, float]:
    """Non-negative least squares ``value = fixed + per_listing x listings + per_catalogue x catalogue``.

    A stage's cost cannot fall as its input grows, so a coefficient that noise would make
    negative is held at 0 (scipy's NNLS). Returns (fixed, per_listing, per_catalogue, rms residual).
    """
    from scipy.optimize import nnls

    design = np.array([[1.0, n, c] for n, c, _ in points])
    values = np.array([v for _, _, v in points])
    # scale the columns so the three coefficients are solved on comparable terms
    scale = np.maximum(np.abs(design).max(axis=0), 1.0)
    coefficients, _ = nnls(design / scale, values)
    coefficients = coefficients / scale
    residual = float(np.sqrt(np.mean((design @ coefficients - values) ** 2)))
    return float(coefficients[0]), float(coefficients[1]), float(coefficients[2]), residual


def extrapolate(sizes: list[dict], key: str = "seconds") -> dict[str, dict]:
    """Per stage: ``fit_cost`` over every measured night and its value at the target night
    (``TARGET_NEW`` new listings bringing the catalogue to ``TARGET_CATALOGUE``)."""
    out = {}
    for stage in STAGES:
        fixed, per_listing, per_catalogue, residual = fit_cost(night_points(sizes, stage, key))
        out[stage] = {
            "fixed": round(fixed, 3),
            "per_night_listing": per_listing,
            "per_catalogue_listing": per_catalogue,
            "rms_residual": round(residual, 3),
            "at_target": round(fixed + per_listing * TARGET_NEW + per_catalogue * TARGET_CATALOGUE, 1),
        }
    return out


def render(result: dict) -> str:
    """The markdown tables: measured per size and stage, then the extrapolation."""
    sizes = result["sizes"]
    head = " | ".join(f"C={s['catalogue']:,}: {s['catalogue']:,} / {s['new']:,} listings" for s in sizes)
    lines = [
        (
            f"Seconds per stage, night 1 / night 2 (night 1 loads the catalogue C, night 2 brings C/10 new listings "
            f"against it); {result['cpus']} CPUs, Spark local[2], one stage process at a time."
        ),
        "",
        (
            f"| stage | {head} | peak MiB (largest run) | fit: fixed + per night listing + per catalogue listing "
            f"(rms residual) | {TARGET_NEW:,} new vs {TARGET_CATALOGUE:,} (extrapolated) |"
        ),
        "|---|" + "---:|" * len(sizes) + "---:|---|---:|",
    ]
    seconds = extrapolate(sizes)
    for stage in STAGES:
        cells = " | ".join(
            " / ".join(f"{night['stages'][stage]['seconds']:.1f}" for night in s["nights"]) for s in sizes
        )
        peak = max(night["stages"][stage]["peak_rss_mib"] for s in sizes for night in s["nights"])
        fit = seconds[stage]
        lines.append(
            f"| {stage} | {cells} | {peak:.0f} | {fit['fixed']:.1f} s + {1000 * fit['per_night_listing']:.2f} ms"
            f" + {1000 * fit['per_catalogue_listing']:.3f} ms ({fit['rms_residual']:.1f} s) | {fit['at_target'] / 60:.1f} min |"
        )
    totals = " | ".join(
        " / ".join(f"{sum(st['seconds'] for st in night['stages'].values()):.0f}" for night in s["nights"])
        for s in sizes
    )
    lines.append(f"| **all six** | {totals} | | | **{sum(f['at_target'] for f in seconds.values()) / 60:.0f} min** |")
    recall = ", ".join(f"{s['planted_recall']:.3f} of {s['planted_pairs']:,}" for s in sizes)
    lines += [
        "",
        f"Planted reworded pairs found on night 2: {recall}. Command: `{result['command']}` ({result['wall_minutes']:.0f} min).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the sizes, writes the JSON and the table; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bench/end_to_end_scale.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help="catalogue sizes, comma-separated (night 2 brings a tenth)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the warehouses go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "end_to_end_scale.json")
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"), help="'' = no table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) < 2:
        parser.error("--sizes needs at least two sizes (four nights) to fit the three cost terms")
    started = time.monotonic()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sspr-e2e-scale-"))
    measured = [run_size(c, workdir, args.seed) for c in sizes]
    result = {
        "command": "python bench/end_to_end_scale.py"
        + ("" if args.sizes == DEFAULT_SIZES else f" --sizes {args.sizes}"),
        "cpus": os.cpu_count(),
        "wall_minutes": round((time.monotonic() - started) / 60, 1),
        "sizes": measured,
        "extrapolation": {
            "target_new": TARGET_NEW,
            "target_catalogue": TARGET_CATALOGUE,
            "seconds": extrapolate(measured),
            "peak_rss_mib": extrapolate(measured, "peak_rss_mib"),
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.readme:
        from evaluation.report import update_readme

        update_readme(Path(args.readme), render(result), BEGIN, END)
    log.info("done in %.1f min; %s", result["wall_minutes"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
