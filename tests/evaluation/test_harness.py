"""The evaluation harness on a fast subset of the real benchmarks (the full run is a benchmark).

One subset run (real encoder, real data, ~100 records per dataset) is shared by the tests; the
checks recompute numbers independently and check every task × method is reported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from benchmarks.datasets import read_leipzig_matching
from config import load_config
from evaluation.__main__ import main
from evaluation.report import BEGIN, END, render_tables, update_readme
from evaluation.tasks import group_labels, threshold_pairs

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets"
LIMIT = 100
# the shipped config (hybrid) plus, compared in the same run, its pure neural model as "pure"
TEXT = ["tfidf-char3-5", "minilm (zero-shot)", "encoder:m", "encoder:t", "pure:m", "pure:t"]
IMAGE = ["efficientnet-lite0 (zero-shot)", "encoder:i", "pure:i"]
VERIFIED = ["candidates", "verifier"]  # the verified pipeline (task "verified") beside them
EXPECTED = {
    ("wdc:valid_medium", "pair-classification"): TEXT + VERIFIED,
    **{(f"wdc:{s}", "pair-classification"): TEXT + VERIFIED for s in ("000un_gs", "050un_gs", "100un_gs")},
    **{(f"wdc:{s}", "retrieval"): TEXT for s in ("000un_gs", "050un_gs", "100un_gs")},
    ("leipzig:abt_buy", "retrieval left->right"): TEXT,
    ("leipzig:abt_buy", "cross-pairs"): TEXT + VERIFIED,
    ("leipzig:amazon_google", "retrieval left->right"): TEXT,
    ("leipzig:amazon_google", "cross-pairs"): TEXT + VERIFIED,
    ("leipzig:google_within_supplier", "duplicate-groups"): TEXT + VERIFIED,
    ("grocery:shop-pools", "pair-classification (constructed titles)"): ["encoder:i", *VERIFIED],
    ("grocery:images", "photo->photo"): IMAGE,
    ("grocery:images", "photo->catalog"): IMAGE,
    ("grocery:multimodal", "photo->photo (constructed titles)"): [
        "tfidf-char3-5",
        "minilm (zero-shot)",
        "efficientnet-lite0 (zero-shot)",
        "encoder:t",
        "encoder:i",
        "encoder:m",
        "pure:t",
        "pure:i",
        "pure:m",
    ],
}
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"real benchmarks not found at {SHARED} (a user's clone has no ../shared; CI has it)",
)


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory):
    """Runs ``python -m evaluation --limit 100`` once; returns its output folder."""
    if not SHARED.is_dir():
        pytest.skip(f"real benchmarks not found at {SHARED}")
    out = tmp_path_factory.mktemp("evaluation")
    args = [
        "--config",
        str(ROOT / "conf" / "sspr.toml"),
        "--shared",
        str(SHARED),
        "--limit",
        str(LIMIT),
        "--out",
        str(out / "quality.json"),
        "--readme",
        str(out / "README.md"),
        "--cache",
        str(out / "cache"),
        "--bootstrap",
        "50",
        "--target-precision",
        "0.6",
        "--compare",
        "pure=" + str(ROOT / "conf" / "sspr.toml") + ",encoder.lexical_weight=0",
    ]
    (out / "README.md").write_text(f"# notes kept\n\n{BEGIN}\nSTALE-TABLE\n{END}\ntail kept\n")
    assert main(args) == 0
    return out, args


def _records(out: Path) -> list[dict]:
    return json.loads((out / "quality.json").read_text())


@needs_shared
@pytest.mark.slow
def test_every_task_and_method_is_reported(subset_run):
    out, _ = subset_run
    records = _records(out)
    assert all(set(r) == {"dataset", "task", "method", "metric", "value", "n"} for r in records)
    for key, methods in EXPECTED.items():
        found = {r["method"] for r in records if (r["dataset"], r["task"]) == key}
        assert found == set(methods), key
    for r in records:
        if r["metric"].split("@")[0].split("_")[0] in ("mrr", "recall", "precision", "f1"):
            assert 0.0 <= r["value"] <= 1.0, r
    metrics = {r["metric"] for r in records if r["dataset"] == "leipzig:google_within_supplier"}
    assert {"f1_pairs@wdc-valid-f1", "f1_groups@wdc-valid-f1", "oracle_f1_groups"} <= metrics
    pipeline = {r["method"] for r in records if r["metric"] in ("f1_groups@pipeline", "f1@pipeline")}
    assert pipeline == {"encoder:m", *VERIFIED}


@needs_shared
@pytest.mark.slow
def test_verified_rows_are_the_pipeline_at_its_operating_point(subset_run):
    out, _ = subset_run
    records = _records(out)
    details = json.loads((out / "quality_details.json").read_text())
    verifier = details["verifier"]
    assert verifier["min_probability"] == details["verifier"]["info"]["operating_point"]["min_probability"]

    def value(dataset, task, method, metric):
        (hit,) = [
            r["value"]
            for r in records
            if (r["dataset"], r["task"], r["method"], r["metric"]) == (dataset, task, method, metric)
        ]
        return hit

    for dataset, task in (("wdc:100un_gs", "pair-classification"), ("leipzig:abt_buy", "cross-pairs")):
        # the verifier only removes candidates: recall can only drop, and never below zero
        assert value(dataset, task, "verifier", "recall@pipeline") <= value(
            dataset, task, "candidates", "recall@pipeline"
        )
        assert value(dataset, task, "candidates", "candidate_recall") == value(
            dataset, task, "candidates", "recall@pipeline"
        )
        # the oracle is the best over thresholds, so at least the operating point's F1
        assert value(dataset, task, "verifier", "oracle_f1") >= value(dataset, task, "verifier", "f1@pipeline") - 1e-9
    # "candidates" at the pipeline threshold is the encoder's m at the same threshold (same pairs)
    assert value("wdc:100un_gs", "pair-classification", "candidates", "f1@pipeline") == pytest.approx(
        value("wdc:100un_gs", "pair-classification", "encoder:m", "f1@pipeline"), abs=1e-6
    )


@needs_shared
@pytest.mark.slow
def test_lexical_weight_sweep_and_the_compared_pure_model(subset_run):
    out, _ = subset_run
    records = _records(out)
    details = json.loads((out / "quality_details.json").read_text())
    sweep = {r["metric"]: r["value"] for r in records if r["task"] == "lexical-weight sweep"}
    mrr = {float(k.split("=")[1]): v for k, v in sweep.items() if k.startswith("mrr@w=")}
    assert sorted(mrr) == [round(0.1 * k, 1) for k in range(10)]
    assert len([k for k in sweep if k.startswith("best_f1@w=")]) == 10
    # the rule: highest valid MRR, ties to the smaller weight, recomputed from the records
    best = max(mrr.values())
    assert details["lexical_weight"]["chosen"] == min(w for w, v in mrr.items() if v == best)
    configured = load_config(ROOT / "conf" / "sspr.toml", environ={}).encoder.lexical_weight
    assert details["lexical_weight"]["configured"] == configured
    # the hybrid's i carries no lexical part: its image retrieval is the pure model's
    grocery = [r for r in records if r["dataset"] == "grocery:images"]
    for metric in ("mrr", "recall@1"):
        values = {r["method"]: r["value"] for r in grocery if r["metric"] == metric and r["task"] == "photo->photo"}
        assert values["encoder:i"] == values["pure:i"]
    # ... while the text views differ (the lexical part is there)
    wdc = {
        r["method"]: r["value"]
        for r in records
        if (r["dataset"], r["task"], r["metric"]) == ("wdc:100un_gs", "retrieval", "mrr")
    }
    assert wdc["encoder:t"] != wdc["pure:t"]
    assert details["compared"]["pure"]["model_version"] != details["model_version"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a=conf/x.toml", ("a", "conf/x.toml", {})),
        (
            "a=conf/x.toml,encoder.kind=zero-shot,encoder.weights=",
            ("a", "conf/x.toml", {"encoder.kind": "zero-shot", "encoder.weights": ""}),
        ),
    ],
)
def test_parse_compare(value, expected):
    from evaluation.__main__ import parse_compare

    assert parse_compare(value) == expected


@pytest.mark.parametrize("value", ["conf/x.toml", "a=", "=conf/x.toml", "a=conf/x.toml,kind"])
def test_parse_compare_rejects(value):
    from config import ConfigError
    from evaluation.__main__ import parse_compare

    with pytest.raises(ConfigError, match="--compare"):
        parse_compare(value)


@needs_shared
@pytest.mark.slow
def test_tfidf_retrieval_matches_an_independent_computation(subset_run):
    out, _ = subset_run
    task = read_leipzig_matching(SHARED, "abt_buy", LIMIT)
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
    matrix = vectorizer.fit_transform(task.left["title"].tolist() + task.right["title"].tolist())
    left, right = matrix[: len(task.left)], matrix[len(task.left) :]
    matches = task.matches.groupby("left_id")["right_id"].agg(set)
    reciprocal = []
    for k, left_id in enumerate(task.left["id"]):
        if left_id not in matches.index:
            continue
        sims = (left[k] @ right.T).toarray().ravel()
        good = task.right["id"].isin(matches[left_id]).to_numpy()
        best = sims[good].max()
        reciprocal.append(1 / (1 + np.count_nonzero((sims >= best) & ~good)))
    (record,) = [
        r
        for r in _records(out)
        if (r["dataset"], r["task"], r["method"], r["metric"])
        == ("leipzig:abt_buy", "retrieval left->right", "tfidf-char3-5", "mrr")
    ]
    assert record["n"] == len(reciprocal)
    assert record["value"] == pytest.approx(np.mean(reciprocal), abs=1e-6)


@needs_shared
@pytest.mark.slow
def test_details_readme_and_cached_rerun(subset_run, caplog):
    out, args = subset_run
    details = json.loads((out / "quality_details.json").read_text())
    assert set(details["thresholds"]) == set(TEXT)
    calibration = details["calibration"]["encoder:m"]
    assert calibration["precision"] >= 0.6
    assert calibration["ci_low"] <= calibration["threshold"] <= calibration["ci_high"]
    assert details["calibrated_min_similarity"] == calibration["threshold"]
    assert "constructed" in details["files_used"]["grocery:multimodal"]
    # paths inside the checkout are written relative to it, so every clone writes the same file
    assert details["encoder"]["weights"] == "encoder/weights/sspr.safetensors"
    assert details["compared"]["pure"]["encoder"]["lexical_idf"] == "encoder/weights/lexical-idf.npy"
    readme = (out / "README.md").read_text()
    assert readme.startswith("# notes kept") and readme.rstrip().endswith("tail kept")
    assert "STALE-TABLE" not in readme and "| mrr |" in readme

    first = (out / "quality.json").read_text()
    with caplog.at_level(logging.INFO, logger="evaluation.methods"):
        assert main(args) == 0
    logged = "\n".join(caplog.messages)  # messages, not caplog.text: a library may swap the handler's formatter
    assert "from the cache" in logged and "embedded" not in logged
    assert (out / "quality.json").read_text() == first


def test_missing_datasets_exit_2_with_a_message(tmp_path, caplog):
    assert (
        main(
            ["--config", str(ROOT / "conf" / "sspr.toml"), "--shared", str(tmp_path), "--out", str(tmp_path / "q.json")]
        )
        == 2
    )
    logged = "\n".join(caplog.messages)
    assert "not found under" in logged and "--shared" in logged
    assert not (tmp_path / "q.json").exists()


def test_render_tables_bolds_the_best_score_but_not_thresholds():
    records = [
        {"dataset": "d", "task": "t", "method": "a", "metric": "mrr", "value": 0.5, "n": 3},
        {"dataset": "d", "task": "t", "method": "b", "metric": "mrr", "value": 0.7, "n": 3},
        {"dataset": "d", "task": "t", "method": "a", "metric": "threshold", "value": 0.9, "n": 3},
        {"dataset": "d", "task": "t", "method": "b", "metric": "threshold", "value": 0.8, "n": 3},
    ]
    text = render_tables(records, ["b", "a"])
    assert "| metric | b | a |" in text
    assert "| mrr | **0.700** | 0.500 |" in text
    assert "| threshold | 0.800 | 0.900 |" in text


def test_update_readme_refuses_a_file_without_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# hand-written only\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(path, "table")
    assert path.read_text() == "# hand-written only\n"


def test_group_labels_put_connected_ids_together_and_keep_singletons():
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    labels = group_labels(ids, np.array(["a", "b"]), np.array(["b", "c"]), np.array([0.9, 0.8]))
    assert labels[0] == labels[1] == labels[2]
    assert labels[3] == "d" and labels[4] == "e"
    assert ids.tolist() == ["a", "b", "c", "d", "e"]  # the input is not modified
    assert group_labels(ids, np.array([]), np.array([]), np.array([])).tolist() == ids.tolist()


def test_threshold_pairs_agree_between_dense_and_sparse_vectors():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(30, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array([f"id{k:02d}" for k in range(30)], dtype=object)
    dense = threshold_pairs(ids, vectors, 0.5)
    sparse = threshold_pairs(ids, sp.csr_matrix(vectors.astype(np.float64)), 0.5)
    assert set(zip(dense[0], dense[1], strict=True)) == set(zip(sparse[0], sparse[1], strict=True))
    expected = {(ids[i], ids[j]) for i in range(30) for j in range(i + 1, 30) if float(vectors[i] @ vectors[j]) >= 0.5}
    assert set(zip(sparse[0], sparse[1], strict=True)) == expected
    assert all(a < b for a, b in zip(dense[0], dense[1], strict=True))
