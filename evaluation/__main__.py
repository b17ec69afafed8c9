"""``python -m evaluation``: measure match quality on the real benchmarks (``make evaluate``).

Runs every task of ``evaluation.tasks`` with every method, then writes

* ``bench/results/quality.json`` — the list of ``{dataset, task, method, metric, value, n}``;
* ``bench/results/quality_details.json`` — model_version, encoder config, thresholds, the
  calibration of each method (threshold, precision, recall, bootstrap interval), the files each
  dataset used and per-task timings;
* the tables in ``bench/README.md`` (between its markers).

    python -m evaluation --config conf/sspr.toml [--compare LABEL=CONFIG[,section.key=value...]]

Exit codes: 0 done, 2 bad arguments or missing datasets (the message says which), 1 a crash.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from benchmarks.datasets import GROCERY_FOLDER, LEIPZIG_MAPPINGS, WDC_FOLDER
from config import ConfigError, load_config
from config.command import add_shortcut, command_parser, run_command
from config.errors import DedupError
from evaluation.grouping import TASK as GROUPING_TASK
from evaluation.grouping import evaluate_grouping
from evaluation.methods import (
    EFFICIENTNET,
    MINILM,
    TFIDF,
    NeuralMethods,
    VectorCache,
    encoder_method,
)
from evaluation.report import render_tables, sort_records, update_readme, write_json
from evaluation.tasks import FILES_USED, Run
from evaluation.tasks import TASKS as SIMILARITY_TASKS
from evaluation.verified import METHODS as VERIFIED_METHODS
from evaluation.verified import evaluate_verified

logger = logging.getLogger("evaluation")

ROOT = Path(__file__).resolve().parents[1]
TASKS = {**SIMILARITY_TASKS, "verified": evaluate_verified, "grouping": evaluate_grouping}
"""Task groups in run order; ``verified`` scores the config's verified pipeline (``dedup.verifier``)."""
METHOD_ORDER = [TFIDF, MINILM, EFFICIENTNET, *(encoder_method(v) for v in ("m", "t", "i")), *VERIFIED_METHODS]
REQUIRED = [WDC_FOLDER, GROCERY_FOLDER, *sorted({f for f, *_ in LEIPZIG_MAPPINGS.values()})]


def build_parser():
    """The command line (see ``--help``): the shared flags plus the evaluation's own."""
    parser = command_parser(
        "python -m evaluation",
        "Measure duplicate-matching quality on the real labelled benchmarks (WDC Products, "
        "Leipzig Abt-Buy / Amazon-Google, GroceryStore) for the config's encoder and the "
        "baselines (character TF-IDF, zero-shot MiniLM, zero-shot EfficientNet), in one run. "
        "Thresholds are chosen on WDC valid_medium only and judged on the other sets.",
    )
    add_shortcut(
        parser,
        "--shared",
        "paths.datasets_dir",
        "the shared datasets folder (conf/sspr.toml: ../shared/datasets beside the checkout)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "quality.json",
        help="where to write the metric records",
    )
    parser.add_argument(
        "--readme",
        default=str(ROOT / "bench" / "README.md"),
        help="markdown file whose generated tables are replaced ('' = none)",
    )
    parser.add_argument(
        "--cache",
        default=str(ROOT / "bench" / "cache"),
        help="vector cache folder, keyed by model_version ('' = no cache)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=CONFIG[,section.key=value...]",
        help="also score the encoder of another pipeline config (with optional "
        "overrides), as methods LABEL:m / LABEL:t / LABEL:i; repeatable. E.g. "
        "the pure trained model: --compare "
        "'sspr=conf/sspr.toml,encoder.lexical_weight=0'",
    )
    parser.add_argument(
        "--target-precision", type=float, default=0.9, help="precision target of the calibrated threshold (default 0.9)"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the threshold's interval (default 1000)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="fast subset: about this many records / pairs per dataset"
    )
    parser.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help=f"comma-separated task groups to run, in order (default all: "
        f"{','.join(TASKS)}); leipzig needs wdc's thresholds",
    )
    return parser


def portable(settings: dict) -> dict:
    """Returns encoder settings with file paths inside the checkout made relative to it.

    So the details file a run writes is the same in every clone.
    """
    out = {}
    for key, value in settings.items():
        if isinstance(value, str) and value.startswith(str(ROOT) + "/"):
            value = str(Path(value).relative_to(ROOT))
        out[key] = value
    return out


def parse_compare(item: str) -> tuple[str, str, dict[str, str]]:
    """Splits a ``--compare`` value ``LABEL=CONFIG[,section.key=value...]``.

    Returns:
        ``(label, config path, {section.key: value})``.

    Raises:
        ConfigError: when the value does not have that shape.
    """
    label, sep, rest = item.partition("=")
    path, *pairs = rest.split(",")
    overrides = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or "." not in key:
            raise ConfigError(f"--compare {item!r}: override {pair!r} is not section.key=value")
        overrides[key.strip()] = value.strip()
    if not sep or not label.strip() or not path.strip():
        raise ConfigError(f"--compare {item!r}: use LABEL=CONFIG[,section.key=value...]")
    return label.strip(), path.strip(), overrides


def main(argv: list[str] | None = None) -> int:
    """Runs the evaluation and writes its outputs.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit code: 0 on success, 2 on a usage or data problem, 1 on a crash.
    """
    return run_command("evaluation", evaluate, argv, build_parser(), logger)


def evaluate(args, config) -> int:
    """The command's body: checks the inputs, runs every task, writes the outputs."""
    shared = Path(config.paths.datasets_dir)
    missing = [name for name in REQUIRED if not (shared / name).is_dir()]
    if missing:
        raise DedupError(
            f"datasets {missing} not found under {shared}; pass --shared with the shared datasets "
            "folder (it holds the real benchmarks; see its README.md)"
        )
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or ("leipzig" in tasks and "wdc" not in tasks):
        raise DedupError(f"--tasks {args.tasks!r}: use some of {list(TASKS)}; leipzig needs wdc")
    compared = {}
    for item in args.compare:
        label, path, overrides = parse_compare(item)
        if label == "encoder" or ":" in label or label in compared:
            raise ConfigError(f"--compare {item!r}: the label must be new, not 'encoder', and without ':'")
        compared[label] = load_config(Path(path), overrides)

    cache = VectorCache(Path(args.cache) if args.cache else None)
    run = Run(
        shared=shared,
        methods=NeuralMethods(config.encoder, cache),
        target_precision=args.target_precision,
        limit=args.limit,
        n_bootstrap=args.bootstrap,
        pipeline_threshold=config.dedup.min_similarity,
        dedup=config.dedup,
        compare={label: NeuralMethods(other.encoder, cache) for label, other in compared.items()},
    )
    started = time.perf_counter()
    for name in tasks:
        with run.timed(name):
            TASKS[name](run)
    records = sort_records(run.records)
    write_json(args.out, records)
    details = {
        **run.details,
        "model_version": run.methods.model_version,
        "encoder": portable(config.encoder.__dict__),
        "compared": {
            label: {
                "option": item,
                "model_version": run.compare[label].model_version,
                "encoder": portable(compared[label].encoder.__dict__),
            }
            for label, item in zip(compared, args.compare, strict=True)
        },
        "target_precision": args.target_precision,
        "limit": args.limit,
        "thresholds": run.thresholds,
        "files_used": FILES_USED,
        "pipeline_min_similarity": config.dedup.min_similarity,
        "calibrated_min_similarity": run.thresholds.get(encoder_method("m"), {}).get(f"wdc-p{args.target_precision:g}"),
    }
    write_json(args.out.with_name(args.out.stem + "_details.json"), details)
    if args.readme:
        order = METHOD_ORDER + [encoder_method(v, label) for label in compared for v in "mti"]
        # the grouping grid has its own table (bench/README.md "Chaining control")
        tabled = [r for r in records if r["task"] != GROUPING_TASK]
        update_readme(Path(args.readme), render_tables(tabled, order))
    logger.info("wrote %d records to %s in %.1fs", len(records), args.out, time.perf_counter() - started)
    if details["calibrated_min_similarity"] is None:
        logger.warning(
            "encoder:m reaches no threshold with precision %.2f on WDC valid_medium; keep "
            "dedup.min_similarity (%s) and say so in its min_similarity_source",
            args.target_precision,
            config.dedup.min_similarity,
        )
    else:
        logger.info(
            "calibrated dedup.min_similarity for encoder:m (precision %.2f on WDC valid_medium): "
            "%.4f; the config has %s",
            args.target_precision,
            details["calibrated_min_similarity"],
            config.dedup.min_similarity,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
