"""The committed benchmark results belong to the shipped model and config."""

from __future__ import annotations

import json
from pathlib import Path

from encoder.model import compute_model_version
from jobs.config import load_config

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def test_committed_results_are_for_the_shipped_encoder_and_threshold():
    config = load_config(ROOT / "conf" / "sspr.toml", environ={})
    details = json.loads((RESULTS / "quality_details.json").read_text())
    # a new model or preprocessing must be re-evaluated (make evaluate) before it ships
    assert details["model_version"] == compute_model_version(config.encoder)
    assert details["pipeline_min_similarity"] == config.dedup.min_similarity
    # the config says where its threshold came from, naming the evaluated model
    assert details["model_version"] in config.dedup.min_similarity_source
    calibrated = details["calibrated_min_similarity"]
    if calibrated is not None:
        assert config.dedup.min_similarity == calibrated


def test_committed_records_have_the_documented_shape():
    records = json.loads((RESULTS / "quality.json").read_text())
    assert records and all(
        set(r) == {"dataset", "task", "method", "metric", "value", "n"} for r in records
    )
    readme = (ROOT / "bench" / "README.md").read_text()
    for dataset, task in {(r["dataset"], r["task"]) for r in records}:
        assert f"#### {dataset} · {task} " in readme


def test_trained_results_are_for_the_shipped_weights():
    config = load_config(ROOT / "conf" / "sspr-trained.toml", environ={})
    details = json.loads((RESULTS / "quality_sspr_details.json").read_text())
    assert config.encoder.kind == "sspr" and Path(config.encoder.weights).is_file()
    # retrained weights must be re-evaluated before they are committed
    assert details["model_version"] == compute_model_version(config.encoder)
    assert details["pipeline_min_similarity"] == config.dedup.min_similarity
    assert details["model_version"] in config.dedup.min_similarity_source
