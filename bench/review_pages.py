"""How fast the review app serves a big night: page times at 10,000 groups against 100 groups.

    .venv/bin/python bench/review_pages.py      # writes bench/results/review_pages.json
                                                # and the table in bench/README.md

Two synthetic nights are written with the report stage's own writer
(``jobs.report.write_review_extract``): ``--groups`` groups (default 10,000) and a baseline of 100,
each group of 2–6 members (a third with a real image) in 50 suppliers, with 10% of the groups
decided. Timed in the same process through Starlette's test client (the app's own work, no
network): the night's first load (reading the extract), the overview page, a filtered page, a
group page, a thumbnail and the calibration page. Medians of ``--repeats`` after one warm-up;
the ratio is the big night's time over the baseline's, so "flat" means paging works.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- review-pages:begin -->", "<!-- review-pages:end -->"
log = logging.getLogger("bench.review_pages")


def write_synthetic_night(
    reports_dir: Path, run_date: str, n_groups: int, seed: int = 0
) -> list[tuple[str, list[str]]]:
    """Writes a night of ``n_groups`` groups; returns (group id, member ids) of each."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from jobs.report import write_review_extract

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.new("RGB", (224, 224), (120, 160, 200)).save(out, format="JPEG")
    photo = out.getvalue()
    groups, members, pairs, made = [], [], [], []
    for g in range(n_groups):
        supplier, gid = f"s{g % 50:02d}", f"g-{g:06d}"
        ids = [f"{supplier}:{g}-{k}" for k in range(int(rng.integers(2, 7)))]
        sims = rng.uniform(0.35, 1.0, size=len(ids) - 1).astype("float32")
        groups.append(
            (
                supplier,
                gid,
                len(ids),
                float(sims.min()),
                float(sims.max()),
                ids[0],
                bool(g % 7 == 0),
                "2024-03-01",
                f"cat{g % 12}",
            )
        )
        for k, lid in enumerate(ids):
            members.append(
                (
                    supplier,
                    gid,
                    lid,
                    k == 0,
                    "2024-03-01",
                    f"Listing {lid} <title>",
                    "Brand",
                    9.99,
                    "EUR",
                    f"cat{g % 12}",
                    photo if g % 3 == 0 else None,
                    None,
                )
            )
        for k, sim in enumerate(sims):
            pairs.append((supplier, gid, ids[k], ids[k + 1], run_date, float(sim), float(sim), None, float(sim) * 0.9))
        made.append((gid, ids))
    columns = lambda rows, names: pa.table({n: [r[k] for r in rows] for k, n in enumerate(names)})
    folder = reports_dir / f"run_date={run_date}"
    folder.mkdir(parents=True)
    write_review_extract(
        folder,
        {
            "groups": columns(
                groups,
                [
                    "supplier_id",
                    "group_id",
                    "size",
                    "weakest_similarity",
                    "strongest_similarity",
                    "representative",
                    "has_bridge",
                    "created_on",
                    "category",
                ],
            ),
            "members": columns(
                members,
                [
                    "supplier_id",
                    "group_id",
                    "listing_id",
                    "is_new",
                    "first_seen",
                    "title",
                    "brand",
                    "price",
                    "currency",
                    "category",
                    "image",
                    "image_uri",
                ],
            ),
            "pairs": columns(
                pairs,
                [
                    "supplier_id",
                    "group_id",
                    "listing_id_l",
                    "listing_id_r",
                    "found_on",
                    "similarity_m",
                    "similarity_t",
                    "similarity_i",
                    "match_score",
                ],
            ),
        },
    )
    report = {"run_date": run_date, "metrics": {}, "histograms": []}
    (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return made


def time_night(n_groups: int, repeats: int, workdir: Path) -> dict[str, float]:
    """Median seconds per page of a night with ``n_groups`` groups (10% decided)."""
    from starlette.testclient import TestClient

    from config import load_config
    from review import runs
    from review.app import create_app
    from review.store import DecisionStore

    run_date = "2024-03-02"
    root = workdir / f"n{n_groups}"
    made = write_synthetic_night(root / "reports", run_date, n_groups)
    config = load_config(
        ROOT / "conf" / "sspr.toml",
        {
            "paths.reports_dir": str(root / "reports"),
            "review.decisions_db": str(root / "decisions.sqlite"),
            "review.secret_key_file": str(root / "secret.key"),
        },
        environ={},
    )
    store = DecisionStore(config.review.decisions_db)
    for gid, ids in made[::10]:
        store.record(
            supplier_id=ids[0].split(":")[0],
            group_id=gid,
            members=ids,
            decision="confirm",
            reviewer="bench",
            run_date=run_date,
        )
    client = TestClient(create_app(config), base_url="http://127.0.0.1")
    gid, ids = made[len(made) // 2]
    first_image = next(i for g, i in made if int(g[2:]) % 3 == 0)[0]
    pages = {
        "overview": f"/runs/{run_date}",
        "filtered (supplier, undecided)": f"/runs/{run_date}?supplier=s07&undecided=1",
        "page 20": f"/runs/{run_date}?page=20",
        "group": f"/runs/{run_date}/groups/{gid}",
        "thumbnail": f"/runs/{run_date}/images/{first_image}",
        "calibration": "/calibration",
    }
    out = {}
    runs._CACHE.clear()
    started = time.perf_counter()
    assert client.get(pages["overview"]).status_code == 200
    out["first load (reads the extract)"] = time.perf_counter() - started
    for name, url in pages.items():
        assert client.get(url).status_code == 200, url
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            client.get(url)
            times.append(time.perf_counter() - started)
        out[name] = statistics.median(times)
    return out


def write_table(result: dict, readme: Path) -> None:
    """Replaces the table between the markers in bench/README.md."""
    big, base = result["groups"], result["baseline_groups"]
    lines = [
        BEGIN,
        f"| page | {base:,} groups (s) | {big:,} groups (s) | ratio |",
        "|---|---|---|---|",
    ]
    for name, seconds in result["seconds"][str(big)].items():
        b = result["seconds"][str(base)][name]
        lines.append(f"| {name} | {b:.3f} | {seconds:.3f} | {seconds / b:.1f}× |")
    lines.append(
        f"\n{result['machine']}; medians of {result['repeats']} after a warm-up, measured {result['measured_at']}."
    )
    lines.append(END)
    text = readme.read_text()
    table = "\n".join(lines)
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        text += "\n" + table + "\n"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bench/review_pages.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=10_000, help="groups of the big night (default 10000)")
    parser.add_argument("--baseline-groups", type=int, default=100, help="groups of the baseline night (default 100)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per page after one warm-up (default 5)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "review_pages.json"))
    parser.add_argument(
        "--readme", default=str(ROOT / "bench" / "README.md"), help="where the table goes ('' = nowhere)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("review").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {str(n): time_night(n, args.repeats, Path(tmp)) for n in (args.baseline_groups, args.groups)}
    result = {
        "groups": args.groups,
        "baseline_groups": args.baseline_groups,
        "repeats": args.repeats,
        "seconds": seconds,
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.readme:
        write_table(result, Path(args.readme))
    for name, s in seconds[str(args.groups)].items():
        log.info(
            "%s: %.3fs at %d groups (%.1f× the %d-group night)",
            name,
            s,
            args.groups,
            s / seconds[str(args.baseline_groups)][name],
            args.baseline_groups,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
