"""Writes the evaluation results: ``quality.json``, run details and the markdown tables.

``bench/README.md`` keeps hand-written text; only the part between the markers
``<!-- quality:begin -->`` and ``<!-- quality:end -->`` is regenerated.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"

_HIGHER_IS_BETTER = ("f1", "precision", "recall", "mrr")


def sort_records(records: list[dict]) -> list[dict]:
    """Returns the records in a stable order (dataset, task, metric, method)."""
    return sorted(records, key=lambda r: (r["dataset"], r["task"], r["metric"], r["method"]))


def write_json(path: Path, payload: object) -> None:
    """Writes JSON (indented, sorted keys, trailing newline) atomically.

    Args:
        path: the file to write; its folder is created.
        payload: anything ``json.dumps`` accepts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    partial.replace(path)


def _format(metric: str, value: float) -> str:
    """Formats a metric value for the table (thresholds with 3 decimals, scores with 3)."""
    return f"{value:.3f}"


def render_tables(records: list[dict], methods: list[str]) -> str:
    """Renders one markdown table per (dataset, task): metrics as rows, methods as columns.

    The best score of a row among the methods is bold where higher is better, unless all
    methods score the same (thresholds are not compared).

    Args:
        records: the metric records.
        methods: the column order.

    Returns:
        Markdown text.
    """
    blocks: list[str] = []
    keys = sorted({(r["dataset"], r["task"]) for r in records})
    for dataset, task in keys:
        rows = [r for r in records if (r["dataset"], r["task"]) == (dataset, task)]
        present = [m for m in methods if any(r["method"] == m for r in rows)]
        metrics = sorted({r["metric"] for r in rows}, key=_metric_order)
        n_values = sorted({r["n"] for r in rows})
        lines = [
            f"#### {dataset} · {task} (n = {', '.join(str(n) for n in n_values)})",
            "",
            "| metric | " + " | ".join(present) + " |",
            "|---|" + "---:|" * len(present),
        ]
        for metric in metrics:
            values = {r["method"]: r["value"] for r in rows if r["metric"] == metric}
            comparable = metric.split("@")[0].split("_")[0] in _HIGHER_IS_BETTER or metric in (
                "best_f1",
                "oracle_f1",
                "oracle_f1_pairs",
                "oracle_f1_groups",
                "recall_at_target",
            )
            top = max(values.values()) if comparable and values else None
            top = top if top and len(set(values.values())) > 1 else None  # no bold for a tie
            cells = []
            for method in present:
                if method not in values:
                    cells.append("–")
                    continue
                text = _format(metric, values[method])
                cells.append(f"**{text}**" if top is not None and values[method] == top else text)
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _metric_order(metric: str) -> tuple[int, str]:
    """Orders metrics: retrieval first (MRR, R@1, R@5, ...), then the rest alphabetically."""
    if metric == "mrr":
        return (0, "")
    if metric.startswith("recall@") and metric[7:].isdigit():
        return (1, metric[7:].zfill(4))
    return (2, metric)


def update_readme(path: Path, generated: str, begin: str = BEGIN, end: str = END) -> None:
    """Replaces the generated part of ``bench/README.md`` (between the markers).

    Args:
        path: the README; created with just the markers when missing.
        generated: the new markdown for between the markers.
        begin, end: the markers (default: the quality tables'; ``bench/encode_throughput.py``
            passes its own).

    Raises:
        ValueError: if the file exists but lacks the markers.
    """
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise ValueError(f"{path} lacks the markers {begin} / {end}; add them where tables go")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{generated}\n{end}{tail}")
