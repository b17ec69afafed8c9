"""The committed benchmark results belong to the shipped model and config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from config import load_config
from dedup.verifier import load_verifier
from encoder.factory import compute_model_version
from evaluation.grouping import TASK as GROUPING_TASK

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def test_committed_results_are_for_the_shipped_encoder_and_operating_point():
    config = load_config(ROOT / "conf" / "sspr.toml", environ={})
    details = json.loads((RESULTS / "quality_details.json").read_text())
    # a new model or preprocessing must be re-evaluated (make evaluate) before it ships
    assert details["model_version"] == compute_model_version(config.encoder)
    assert details["pipeline_min_similarity"] == config.dedup.min_similarity
    # the config says where its thresholds came from, naming the evaluated model
    assert details["model_version"] in config.dedup.min_similarity_source
    # the committed verified rows are of the shipped verifier at the shipped operating point
    verifier = load_verifier(config.dedup.verifier)
    assert details["verifier"]["digest"] == verifier.digest[:16]
    assert details["verifier"]["min_similarity"] == config.dedup.min_similarity
    assert details["verifier"]["min_probability"] == config.dedup.min_probability
    # the shipped lexical weight is the one the fixed valid_medium rule chose
    assert details["lexical_weight"]["chosen"] == config.encoder.lexical_weight > 0


def test_compared_rows_are_the_pure_trained_and_the_zero_shot_encoder():
    """bench/README.md shows zero-shot, trained and hybrid side by side (issue: eSSPR encoder)."""
    config = load_config(ROOT / "conf" / "sspr.toml", environ={})
    details = json.loads((RESULTS / "quality_details.json").read_text())
    pure = dataclasses.replace(config.encoder, lexical_weight=0.0)
    zero_shot = dataclasses.replace(pure, kind="zero-shot", weights="")
    assert details["compared"]["sspr"]["model_version"] == compute_model_version(pure)
    assert details["compared"]["zero-shot"]["model_version"] == compute_model_version(zero_shot)
    methods = {r["method"] for r in json.loads((RESULTS / "quality.json").read_text())}
    assert {"encoder:m", "sspr:m", "zero-shot:m", "encoder:i", "sspr:i", "zero-shot:i"} <= methods


def test_committed_records_have_the_documented_shape():
    records = json.loads((RESULTS / "quality.json").read_text())
    assert records and all(set(r) == {"dataset", "task", "method", "metric", "value", "n"} for r in records)
    readme = (ROOT / "bench" / "README.md").read_text()
    # the grouping grid has its own tables ("Chaining control", from bench/results/grouping.json)
    tabled = [r for r in records if r["task"] != GROUPING_TASK]
    for dataset, task in {(r["dataset"], r["task"]) for r in tabled}:
        assert f"#### {dataset} · {task} " in readme
    grouping = [r for r in records if r["task"] == GROUPING_TASK]
    if grouping:
        # make evaluate ran the grouping task too: the same records as the committed grouping run
        def key(r):
            return (r["dataset"], r["method"], r["metric"])

        committed = json.loads((RESULTS / "grouping.json").read_text())
        assert sorted(grouping, key=key) == sorted(committed, key=key)
        block = readme[readme.index("<!-- grouping:begin -->") : readme.index("<!-- grouping:end -->")]
        for dataset in {r["dataset"] for r in grouping}:
            assert f"**{dataset}**" in block
