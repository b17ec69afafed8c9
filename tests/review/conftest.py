"""A hand-made night for the review app: two suppliers, hostile listing fields, real image bytes.

The extract goes through ``review.runs.write_review_extract`` (the report stage's writer), so it
meets the same contract as a real night's.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest

RUN_DATE = "2024-03-02"
HOSTILE_TITLE = "<script>alert(1)</script>"
HOSTILE_URI = "javascript:alert(1)"


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    """A real 32×32 PNG of one colour."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="PNG")
    return out.getvalue()


def write_night(reports_dir, run_date: str = RUN_DATE, *, extra_member: bool = False) -> None:
    """Writes a night's report.json and review extract: groups g-milk (3 members), g-evil (2), g-juice (2).

    ``extra_member`` adds a fourth member to g-milk (the group changed since an earlier night).
    """
    from jobs.report import write_review_extract

    folder = reports_dir / f"run_date={run_date}"
    folder.mkdir(parents=True, exist_ok=True)
    milk = ["m1", "m2", "m3"] + (["m4"] if extra_member else [])
    members = [
        ("s-dairy", "g-milk", lid, "Oat Milk 1L", "Oatly", 2.5, "EUR", "Milk", png_bytes((200, 200, 240)), None)
        for lid in milk
    ] + [
        ("s-dairy", "g-evil", "e1", HOSTILE_TITLE, "<b>brand</b>", 1.0, "EUR", "Milk", None, HOSTILE_URI),
        (
            "s-dairy",
            "g-evil",
            "e2",
            "Plain yoghurt",
            None,
            None,
            None,
            "Yoghurt",
            b"not an image",
            "data:text/html,<b>x</b>",
        ),
        ("s-fruit", "g-juice", "j1", "Apple juice", "Juicy", 1.2, "EUR", "Juice", png_bytes((250, 180, 0)), None),
        ("s-fruit", "g-juice", "j2", "Apple juice 1l", "Juicy", 1.3, "EUR", "Juice", None, None),
    ]
    names = [
        "supplier_id",
        "group_id",
        "listing_id",
        "title",
        "brand",
        "price",
        "currency",
        "category",
        "image",
        "image_uri",
    ]
    member_table = (
        pa.table({n: [m[k] for m in members] for k, n in enumerate(names)})
        .append_column("is_new", pa.array([m[2] in ("m3", "j2") for m in members]))
        .append_column("first_seen", pa.array(["2024-03-01"] * len(members)))
    )
    pairs = [
        ("s-dairy", "g-milk", "m1", "m2", 0.95, 0.97, 0.9, 0.91),
        ("s-dairy", "g-milk", "m2", "m3", 0.62, 0.70, 0.55, 0.52),
        ("s-dairy", "g-evil", "e1", "e2", 0.45, 0.45, None, 0.40),
        ("s-fruit", "g-juice", "j1", "j2", 0.88, 0.88, None, 0.85),
    ]
    if extra_member:
        pairs.append(("s-dairy", "g-milk", "m3", "m4", 0.70, 0.72, 0.6, 0.6))
    pnames = [
        "supplier_id",
        "group_id",
        "listing_id_l",
        "listing_id_r",
        "similarity_m",
        "similarity_t",
        "similarity_i",
        "match_score",
    ]
    pair_table = pa.table({n: [p[k] for p in pairs] for k, n in enumerate(pnames)}).append_column(
        "found_on", pa.array([run_date] * len(pairs))
    )
    groups = pa.table(
        {
            "supplier_id": ["s-dairy", "s-dairy", "s-fruit"],
            "group_id": ["g-milk", "g-evil", "g-juice"],
            "size": [len(milk), 2, 2],
            "weakest_similarity": [0.62, 0.45, 0.88],
            "strongest_similarity": [0.95, 0.45, 0.88],
            "representative": ["m1", "e1", "j1"],
            "has_bridge": [True, True, True],
            "created_on": ["2024-03-01"] * 3,
            "category": ["Milk", "Milk", "Juice"],
        }
    )
    write_review_extract(folder, {"groups": groups, "members": member_table, "pairs": pair_table})
    report = {
        "run_date": run_date,
        "metrics": {
            "validate": {"rows_in": 9, "rows_out": 8, "rows_quarantined": 1, "rows_skipped": 0, "seconds": 3.0},
            "pairs": {"rows_in": 8, "rows_out": 4, "rows_quarantined": 0, "rows_skipped": 0, "seconds": 5.0},
        },
        "histograms": [
            {
                "title": "similarity_m of the night's pairs",
                "column": "similarity_m",
                "config_key": "dedup.min_similarity",
                "threshold": 0.3113,
                "edges": [i / 10 for i in range(11)],
                "counts": [0, 0, 0, 0, 1, 0, 1, 0, 1, 1],
            }
        ],
    }
    (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")


@pytest.fixture
def review_config(tmp_path):
    """A config whose reports, decisions and secrets live in tmp_path, with one night written."""
    from config import load_config

    reports = tmp_path / "reports"
    write_night(reports)
    return load_config(
        None,
        {
            "paths.reports_dir": str(reports),
            "review.decisions_db": str(tmp_path / "review" / "decisions.sqlite"),
            "review.secret_key_file": str(tmp_path / "review" / "secret.key"),
            "review.suggestions_dir": str(tmp_path / "review" / "suggestions"),
            "dedup.verifier": "",
            "dedup.min_similarity": "0.3113",
        },
        environ={},
    )
