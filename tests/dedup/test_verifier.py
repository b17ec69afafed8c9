"""The verifier's JSON model: exact agreement with scikit-learn, calibration, and its checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dedup.features import FEATURE_NAMES
from dedup.verifier import Verifier, VerifierError, calibrated, fit_platt, load_verifier, save_verifier
from training.fit_verifier import export_trees

ROOT = Path(__file__).resolve().parents[2]


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES)))
    x[rng.random(x.shape) < 0.2] = np.nan  # missing values take the learned side
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 3]) + rng.normal(scale=0.5, size=n)) > 0
    return x, y


def _verifier(x, y, a=1.0, b=0.0) -> Verifier:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=7, random_state=0).fit(x, y)
    trees, baseline = export_trees(model)
    verifier = Verifier(tuple(trees), baseline, a, b, FEATURE_NAMES, "mv", "none", 0.3, 50, {"note": "test"})
    return verifier, model


def test_exported_trees_score_exactly_as_scikit_learn():
    x, y = _data()
    verifier, model = _verifier(x, y)
    np.testing.assert_allclose(verifier.raw_scores(x), model.decision_function(x), rtol=0, atol=1e-9)
    np.testing.assert_allclose(verifier.probabilities(x), model.predict_proba(x)[:, 1], atol=1e-9)


def test_save_and_load_round_trip_byte_identically(tmp_path):
    x, y = _data()
    verifier, _ = _verifier(x, y, a=0.8, b=-0.3)
    first, second = tmp_path / "v1.json", tmp_path / "v2.json"
    save_verifier(verifier, first)
    loaded = load_verifier(first)
    np.testing.assert_array_equal(loaded.probabilities(x), verifier.probabilities(x))
    save_verifier(loaded, second)
    assert first.read_bytes() == second.read_bytes()
    assert loaded.digest and loaded.info == {"note": "test"}


def test_platt_recovers_the_generating_calibration():
    rng = np.random.default_rng(1)
    raw = rng.normal(scale=2.0, size=20000)
    labels = rng.random(raw.size) < calibrated(raw, 1.5, -0.7)
    a, b = fit_platt(raw, labels)
    assert a == pytest.approx(1.5, abs=0.08) and b == pytest.approx(-0.7, abs=0.08)
    with pytest.raises(ValueError, match="both"):
        fit_platt(raw[:5], np.ones(5, dtype=bool))


def test_calibrated_is_a_stable_sigmoid():
    out = calibrated(np.array([-1e4, 0.0, 1e4]), 1.0, 0.0)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_load_refuses_missing_or_foreign_files_with_what_to_do(tmp_path):
    with pytest.raises(VerifierError, match="fit_verifier"):
        load_verifier(tmp_path / "absent.json")
    x, y = _data()
    verifier, _ = _verifier(x, y)
    document = verifier.to_dict()
    document["features"] = document["features"][:-1]
    (tmp_path / "old.json").write_text(json.dumps(document))
    with pytest.raises(VerifierError, match="retrain"):
        load_verifier(tmp_path / "old.json")
    (tmp_path / "junk.json").write_text('{"format": "something else"}')
    with pytest.raises(VerifierError, match="not a"):
        load_verifier(tmp_path / "junk.json")


def test_check_inputs_names_the_mismatch():
    x, y = _data()
    verifier, _ = _verifier(x, y)
    verifier.check_inputs("mv", "none")
    with pytest.raises(VerifierError, match="model_version mv"):
        verifier.check_inputs("other", "none")
    with pytest.raises(VerifierError, match="IDF"):
        verifier.check_inputs("mv", "sha256:x")
    with pytest.raises(VerifierError, match="columns"):
        verifier.probabilities(x[:, :3])


def test_the_shipped_verifier_loads_and_matches_the_shipped_config():
    from config import load_config
    from encoder.factory import compute_model_version
    from encoder.lexical import LexicalVectorizer

    config = load_config(ROOT / "conf" / "sspr.toml", environ={})
    verifier = load_verifier(config.dedup.verifier)
    verifier.check_inputs(
        compute_model_version(config.encoder),
        LexicalVectorizer(config.encoder.lexical_buckets, config.encoder.lexical_idf).idf_digest,
    )
    point = verifier.info["operating_point"]
    # the config's operating point is the one training.fit_verifier chose and recorded
    assert config.dedup.min_similarity == point["min_similarity"] == verifier.neighbour_min_similarity
    assert config.dedup.min_probability == point["min_probability"]
    assert verifier.neighbour_budget == config.dedup.max_results_per_query
    assert str(verifier.model_version) in config.dedup.min_similarity_source
