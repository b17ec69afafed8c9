"""summary: print what the nightly runs did, from their published reports (no Spark needed).

    python -m jobs.summary --config conf/sspr.toml 2024-03-01 2024-03-02 2024-03-03

For each run date: rows read / validated / quarantined / embedded, pairs, groups and what happened
to group ids; then the biggest groups as of the last date (every supplier's whole catalogue) with
their titles, how many ids carried over from the night before, and where the tables and review
pages live.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from config.command import command_parser, run_command
from config.errors import DedupError


def load_reports(reports_dir: str, run_dates: list[str]) -> list[dict[str, Any]]:
    """Reads ``report.json`` for each run date.

    Raises:
        FileNotFoundError: naming the run date whose report is missing (the report task did not run).
    """
    reports = []
    for day in run_dates:
        path = Path(reports_dir) / f"run_date={day}" / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"no report for {day} at {path}: did the DAG's report task run?")
        reports.append(json.loads(path.read_text()))
    return reports


def _count(report: dict[str, Any], stage: str, key: str) -> int:
    return int((report["metrics"].get(stage) or {}).get(key) or 0)


def format_summary(reports: list[dict[str, Any]], config, top: int = 5) -> str:
    """Renders the summary text.

    Args:
        reports: report dicts, one per run date.
        config: the pipeline config (for locations).
        top: how many of the biggest groups to list.

    Returns:
        Multi-line text.
    """
    header = (
        f"{'run_date':<12}{'read':>7}{'valid':>7}{'quarant.':>9}{'embedded':>9}{'skipped':>8}{'pairs':>7}{'groups':>7}"
    )
    lines = ["", "sspr-dedup nightly summary", header, "-" * len(header)]
    for r in reports:
        lines.append(
            f"{r['run_date']:<12}{_count(r, 'validate', 'rows_in'):>7}{_count(r, 'validate', 'rows_out'):>7}"
            f"{_count(r, 'validate', 'rows_quarantined'):>9}{_count(r, 'embed', 'rows_out'):>9}"
            f"{_count(r, 'embed', 'rows_skipped'):>8}{_count(r, 'pairs', 'rows_out'):>7}{r['groups_total']:>7}"
        )
        rules = (r["metrics"].get("validate") or {}).get("details", {}).get("quarantined_by_rule") or {}
        if rules:
            lines.append(" " * 12 + "quarantined: " + ", ".join(f"{k}={v}" for k, v in sorted(rules.items())))
        events = (r["metrics"].get("groups") or {}).get("details", {}).get("lineage") or {}
        if events:
            lines.append(" " * 12 + "group ids: " + ", ".join(f"{k}={v}" for k, v in sorted(events.items())))
    last = reports[-1]
    lines += ["", f"groups as of {last['run_date']}, every supplier's whole catalogue (of {last['groups_total']}):"]
    if len(reports) > 1:
        before = {g["group_id"] for g in reports[-2]["groups"]}
        now = {g["group_id"] for g in last["groups"]}
        lines.append(f"  {len(before & now)} of {reports[-2]['run_date']}'s {len(before)} group ids carried over")
    for g in sorted(last["groups"], key=lambda g: (-g["size"], g["group_id"]))[:top]:
        since = f" since {g['created_on']}" if g.get("created_on") else ""
        lines.append(
            f"  {g['supplier_id']} {g['group_id']}: {g['size']} listings{since}, "
            f"weakest link {g['weakest_similarity']:.3f}"
        )
        for m in g["members"][:6]:
            title = (m["title"] or "(no title)").replace("\n", " ")
            lines.append(f"      {m['listing_id'][:40]:<40} {title[:70]}")
    p = config.paths
    lines += [
        "",
        (
            f"warehouse tables: database `{config.warehouse.database}` "
            f"({', '.join(sorted({t.split('.')[-1] for r in reports[:1] for t in r['warehouse']['tables']}))})"
        ),
        f"  data under {p.warehouse_dir}, Derby metastore under {p.metastore_dir}",
        f"review pages: {p.reports_dir}/run_date=<date>/review.html; the review app: make review (http://127.0.0.1:8765)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Prints the summary for the given run dates to ``out``; returns the exit code."""
    parser = command_parser("python -m jobs.summary", __doc__)
    parser.add_argument("run_dates", nargs="+", help="run dates (YYYY-MM-DD)")

    def body(args, config) -> int:
        try:
            reports = load_reports(config.paths.reports_dir, args.run_dates)
        except FileNotFoundError as exc:
            raise DedupError(str(exc)) from None
        out.write(format_summary(reports, config))
        return 0

    return run_command("summary", body, argv, parser)


if __name__ == "__main__":
    sys.exit(main())
