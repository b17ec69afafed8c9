"""Tests for the Spark-free parts of jobs/report.py (review page, thumbnails, publishing) and jobs/summary.py."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from config import load_config
from jobs.report import make_thumbnail, publish_report, render_review_page
from jobs.summary import format_summary, main

SCRIPT_TITLE = "<script>alert(1)</script>"
ATTR_TITLE = '"><img src=x onerror=alert(1)>'
BOLD_ID = "<b>L-1</b>"


def _jpeg(size=(320, 200), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def _metrics(
    rows_in: int,
    valid: int,
    quarantined: int,
    embedded: int,
    skipped: int,
    pairs: int,
    groups: int,
    rules: dict[str, int] | None = None,
) -> dict:
    def m(rows_in, rows_out, q=0, s=0, details=None):
        return {
            "rows_in": rows_in,
            "rows_out": rows_out,
            "rows_quarantined": q,
            "rows_skipped": s,
            "seconds": 1.25,
            "details": details or {},
        }

    return {
        "validate": m(rows_in, valid, quarantined, details={"quarantined_by_rule": rules or {}}),
        "embed": m(valid, embedded, s=skipped),
        "pairs": m(embedded, pairs),
        "groups": m(pairs, groups),
    }


def _member(listing_id, title, *, price=9.5, is_new=False, has_image=False, brand="Acme"):
    return {
        "listing_id": listing_id,
        "title": title,
        "brand": brand,
        "price": price,
        "currency": "EUR",
        "is_new": is_new,
        "has_image": has_image,
    }


def _group(group_id, supplier_id, members, weakest=0.9012, strongest=0.99):
    ids = [m["listing_id"] for m in members]
    pairs = [
        {"listing_id_l": a, "listing_id_r": b, "similarity_m": 0.95, "similarity_t": None, "similarity_i": 0.91}
        for a, b in itertools.pairwise(ids)
    ]
    return {
        "supplier_id": supplier_id,
        "group_id": group_id,
        "size": len(members),
        "weakest_similarity": weakest,
        "strongest_similarity": strongest,
        "representative": ids[0],
        "members": members,
        "pairs": pairs,
    }


def _report(run_date, groups, metrics, database="dedup") -> dict:
    """The shape jobs.report.collect_report returns."""
    return {
        "run_date": run_date,
        "generated_at": "2024-03-02T01:00:00+00:00",
        "warehouse": {
            "database": database,
            "warehouse_dir": "/w",
            "tables": [f"{database}.{t}" for t in ("listings", "pairs", "groups")],
        },
        "metrics": metrics,
        "groups_total": len(groups),
        "groups": groups,
    }


@pytest.fixture
def hostile_report():
    members = [
        _member(BOLD_ID, SCRIPT_TITLE, is_new=True, has_image=True),
        _member("L-2", ATTR_TITLE, has_image=True, brand="<i>brand</i>"),
        _member("L-3", None, price=None, has_image=False),
    ]
    return _report("2024-03-01", [_group("g<1>", "sup'&\"", members)], _metrics(10, 8, 2, 8, 0, 2, 1))


# --- review page ----------------------------------------------------------------------------------


def test_review_page_escapes_listing_fields(hostile_report):
    page = render_review_page(hostile_report, {BOLD_ID: _jpeg()})
    assert "<script>" not in page
    assert "<img src=x" not in page
    assert "<b>" not in page
    assert "<i>brand" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;L-1&lt;/b&gt;" in page
    assert "&lt;i&gt;brand&lt;/i&gt;" in page
    assert "id='g&lt;1&gt;'" in page
    assert "sup&#x27;&amp;&quot;" in page  # quotes escaped too, so attributes cannot be broken out of
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")


def test_review_page_thumbnails(hostile_report):
    page = render_review_page(hostile_report, {BOLD_ID: _jpeg(), "L-2": b"\xff\xd8\xff not really a jpeg"})
    assert page.count("data:image/jpeg;base64,") == 1  # only the real JPEG
    assert page.count("no image") == 2  # corrupt bytes and no bytes at all
    row_of = {
        lid: next(line for line in page.splitlines() if lid in line) for lid in ("&lt;b&gt;L-1&lt;/b&gt;", "L-2", "L-3")
    }
    assert "data:image/jpeg;base64," in row_of["&lt;b&gt;L-1&lt;/b&gt;"]
    assert "no image" in row_of["L-2"]
    assert "no image" in row_of["L-3"]


def test_review_page_content(hostile_report):
    page = render_review_page(hostile_report, {})
    assert "Duplicate groups for 2024-03-01" in page
    assert "1 groups; showing 1" in page
    assert "9.50 EUR" in page
    assert "weakest link 0.901" in page
    assert "<span class='new'>new</span>" in page
    assert "<td>0.950</td><td>–</td><td>0.910</td>" in page  # missing modality shown as a dash
    assert "<td>validate</td><td>10</td><td>8</td><td>2</td><td>0</td><td>1.250</td>" in page


def test_make_thumbnail_real_jpeg():
    uri = make_thumbnail(_jpeg((640, 320)), size=96)
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    data = base64.b64decode(uri.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        assert max(img.size) <= 96
        assert img.size[0] > img.size[1]  # aspect ratio kept


def test_make_thumbnail_png_with_alpha():
    out = io.BytesIO()
    Image.new("RGBA", (50, 50), (0, 0, 255, 128)).save(out, format="PNG")
    uri = make_thumbnail(out.getvalue())
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("data", [b"", b"garbage", _jpeg()[:40]])
def test_make_thumbnail_corrupt_bytes(data):
    assert make_thumbnail(data) is None


# --- publishing -----------------------------------------------------------------------------------


def _hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_publish_report_writes_and_replaces(tmp_path):
    root = tmp_path / "reports"
    first = publish_report(str(root), "2024-03-01", {"report.json": '{"a": 1}', "old.html": "old"})
    assert first == root / "run_date=2024-03-01"
    assert (first / "report.json").read_text(encoding="utf-8") == '{"a": 1}'
    assert (first / "old.html").read_text(encoding="utf-8") == "old"
    assert (os.stat(first).st_mode & 0o777) == 0o755  # readable by the web server, not mkdtemp's 0700

    second = publish_report(str(root), "2024-03-01", {"report.json": '{"a": 2}', "review.html": "<p>é</p>"})
    assert second == first
    assert sorted(p.name for p in second.iterdir()) == ["report.json", "review.html"]
    assert (second / "report.json").read_text(encoding="utf-8") == '{"a": 2}'
    assert (second / "review.html").read_text(encoding="utf-8") == "<p>é</p>"
    assert _hidden(root) == []
    assert sorted(p.name for p in root.iterdir()) == ["run_date=2024-03-01"]


def test_publish_report_keeps_other_dates(tmp_path):
    publish_report(str(tmp_path), "2024-03-01", {"a.txt": "1"})
    publish_report(str(tmp_path), "2024-03-02", {"a.txt": "2"})
    publish_report(str(tmp_path), "2024-03-01", {"b.txt": "3"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_date=2024-03-01", "run_date=2024-03-02"]
    assert (tmp_path / "run_date=2024-03-02" / "a.txt").read_text() == "2"
    assert sorted(p.name for p in (tmp_path / "run_date=2024-03-01").iterdir()) == ["b.txt"]


def test_publish_report_failure_leaves_old_report_and_no_staging(tmp_path):
    publish_report(str(tmp_path), "2024-03-01", {"report.json": "old"})
    with pytest.raises(OSError):
        publish_report(str(tmp_path), "2024-03-01", {"report.json": "new", "missing/dir.html": "x"})
    assert (tmp_path / "run_date=2024-03-01" / "report.json").read_text() == "old"
    assert _hidden(tmp_path) == []


# --- summary --------------------------------------------------------------------------------------


@pytest.fixture
def two_reports():
    day1 = _report(
        "2024-03-01",
        [_group("g-small", "s1", [_member("a1", "Red mug"), _member("a2", "Red mug 2")], weakest=0.9)],
        _metrics(120, 110, 10, 105, 5, 7, 1, rules={"title_or_image_present": 6, "supplier_id_not_null": 4}),
    )
    day2 = _report(
        "2024-03-02",
        [
            _group("g-mid", "s2", [_member(f"b{i}", f"Blue vase {i}") for i in range(3)], weakest=0.91),
            _group(
                "g-big", "s3", [_member(f"c{i}", None if i == 0 else f"Lamp {i}") for i in range(5)], weakest=0.8876
            ),
        ],
        _metrics(33, 33, 0, 31, 2, 12, 2),
    )
    return [day1, day2]


def test_format_summary_rows(two_reports):
    text = format_summary(two_reports, load_config(None, environ={}))
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("2024-03-0")}
    # run_date read valid quarantined embedded skipped pairs groups
    assert rows["2024-03-01"] == ["2024-03-01", "120", "110", "10", "105", "5", "7", "1"]
    assert rows["2024-03-02"] == ["2024-03-02", "33", "33", "0", "31", "2", "12", "2"]
    assert "quarantined: supplier_id_not_null=4, title_or_image_present=6" in text


def test_format_summary_lists_the_last_nights_groups_biggest_first(two_reports):
    two_reports[1]["groups"][1]["created_on"] = "2024-03-01"
    two_reports[1]["metrics"]["groups"] = {"details": {"lineage": {"new": 1, "merge": 1}}}
    text = format_summary(two_reports, load_config(None, environ={}))
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups as of"))
    assert lines[start] == "groups as of 2024-03-02, every supplier's whole catalogue (of 2):"
    assert lines[start + 1] == "  0 of 2024-03-01's 1 group ids carried over"
    group_lines = [line.strip() for line in lines[start + 2 :] if line.startswith("  s")]
    assert [line.split()[1].rstrip(":") for line in group_lines] == ["g-big", "g-mid"]  # not day 1's g-small
    assert group_lines[0] == "s3 g-big: 5 listings since 2024-03-01, weakest link 0.888"
    assert "(no title)" in text
    assert "group ids: merge=1, new=1" in text


def test_format_summary_top_limits_groups(two_reports):
    text = format_summary(two_reports, load_config(None, environ={}), top=1)
    assert "g-big" in text and "g-mid" not in text and "g-small" not in text


def _conf_with_reports(tmp_path: Path) -> Path:
    conf = tmp_path / "sspr.toml"
    conf.write_text('[paths]\nreports_dir = "reports"\n')
    return conf


def test_summary_main_missing_report(tmp_path, capsys):
    conf = _conf_with_reports(tmp_path)
    out = io.StringIO()
    assert main(["--config", str(conf), "2024-03-01"], out=out) == 2
    err = capsys.readouterr().err
    assert "no report for 2024-03-01" in err
    assert str(tmp_path / "reports" / "run_date=2024-03-01" / "report.json") in err
    assert out.getvalue() == ""


def test_summary_main_one_of_two_missing(tmp_path, capsys, two_reports):
    conf = _conf_with_reports(tmp_path)
    publish_report(str(tmp_path / "reports"), "2024-03-01", {"report.json": json.dumps(two_reports[0])})
    assert main(["--config", str(conf), "2024-03-01", "2024-03-02"], out=io.StringIO()) == 2
    assert "no report for 2024-03-02" in capsys.readouterr().err


def test_summary_main_reads_published_reports(tmp_path, two_reports):
    conf = _conf_with_reports(tmp_path)
    for report in two_reports:
        publish_report(str(tmp_path / "reports"), report["run_date"], {"report.json": json.dumps(report)})
    out = io.StringIO()
    assert main(["--config", str(conf), "2024-03-01", "2024-03-02"], out=out) == 0
    text = out.getvalue()
    assert "2024-03-01" in text and "2024-03-02" in text
    assert str(tmp_path / "reports") in text
