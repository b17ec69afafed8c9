"""training.fit_verifier: the fixed rules, on small synthetic pools (the rules do not care which
encoder made the vectors), and the shop-pool draw."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.datasets import shop_pools
from dedup.features import parse_listings
from dedup.metrics import best_f1_threshold
from training.fit_verifier import RANDOM, LabelledPool, candidate_threshold, fit_verifier


def test_candidate_threshold_is_the_highest_that_keeps_the_recall():
    sims = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.99])
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    threshold = candidate_threshold(sims, labels, 0.9)
    kept = (sims[labels == 1] >= threshold).mean()
    assert kept >= 0.9
    assert (sims[labels == 1] >= np.nextafter(np.float32(threshold), np.float32(1))).mean() < 0.9
    assert candidate_threshold(sims, labels, 1.0) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        candidate_threshold(sims, np.zeros_like(labels), 0.9)


def test_shop_pools_draw_whole_classes_deterministically():
    classes = np.repeat(np.arange(10), 6)
    pools = shop_pools(classes, pools=3, skus=4, per_sku=3, seed=0)
    assert len(pools) == 3
    for rows in pools:
        assert len(rows) == 12 and len(set(rows.tolist())) == 12
        counts = np.bincount(classes[rows])
        assert sorted(c for c in counts if c) == [3, 3, 3, 3]
    again = shop_pools(classes, pools=3, skus=4, per_sku=3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(pools, again, strict=True))


def _pool(seed: int, products: int = 40, copies: int = 3) -> LabelledPool:
    """Listings of ``products`` products, ``copies`` noisy copies each; all pairs labelled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(products, 16))
    product = np.repeat(np.arange(products), copies)
    m = centres[product] + rng.normal(scale=0.6, size=(len(product), 16))
    m = (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)
    titles = [f"item {p} model X{p}00 {'extra' if k % 2 else ''}" for k, p in enumerate(product)]
    lexical = np.zeros((len(product), 8), dtype=np.float32)
    left, right = np.triu_indices(len(product), k=1)
    vectors = {"m": m, "t": m, "i": np.zeros_like(m)}
    return LabelledPool(parse_listings(titles), vectors, lexical, left, right, product[left] == product[right])


def test_fit_verifier_applies_the_rules_and_is_deterministic():
    random = _pool(3)
    random.kind = RANDOM
    train, valid = [_pool(0), _pool(1), random], [_pool(2), _pool(4)]
    verifier, summary = fit_verifier(train, valid, "mv", "none", budget=10, candidate_recall=0.95)
    # rule 1 on the valid pair file (the first valid pool)
    assert summary["candidate_recall_valid"] >= 0.95
    assert verifier.neighbour_min_similarity == summary["min_similarity"]
    assert verifier.neighbour_budget == 10 and verifier.model_version == "mv"
    # rule 5: every weight was tried, the chosen one has the best valid F1 (ties to the smaller)
    sweep = summary["weight_sweep_valid_f1"]
    assert set(sweep) == {"0", "0.1", "0.3", "1"}
    best = max(sweep.values())
    assert summary["random_catalogue_weight"] == min(float(w) for w, f1 in sweep.items() if f1 == best)
    # rule 4: the operating point is the best-F1 probability threshold on all valid candidates
    threshold = summary["min_similarity"]
    candidates = [pool.candidates(threshold) for pool in valid]
    features = np.concatenate([pool.features(threshold, 10) for pool in candidates])
    labels = np.concatenate([pool.labels for pool in candidates])
    choice = best_f1_threshold(verifier.probabilities(features), labels)
    assert summary["valid_f1"] == pytest.approx(choice.scores.f1, abs=1e-6) == best
    assert summary["min_probability"] == pytest.approx(choice.threshold, abs=1e-6)
    # the model codes make these synthetic duplicates easy: the verifier must find them
    assert summary["valid_f1"] > 0.9
    again, _ = fit_verifier(train, valid, "mv", "none", budget=10, candidate_recall=0.95)
    assert again.to_dict() == verifier.to_dict()


def test_the_encoder_saw_every_training_offer_outside_the_verifiers_share():
    import pandas as pd

    from benchmarks.datasets import in_verifier_share
    from training.fit_verifier import encoder_seen_offers

    offers = pd.DataFrame({"id": np.arange(600), "cluster_id": np.arange(600) // 3})
    seen = encoder_seen_offers(offers, 0.5)
    verifiers = set(offers["id"][in_verifier_share(offers["cluster_id"], 0.5)])
    assert seen and verifiers
    assert seen | verifiers == set(offers["id"]) and not seen & verifiers
    # whole clusters go one way: a pair of one product is never split between the two
    by_cluster = offers.assign(seen=offers["id"].isin(seen)).groupby("cluster_id")["seen"].nunique()
    assert (by_cluster == 1).all()


def test_the_verifier_share_must_be_the_one_the_encoder_was_trained_with(tmp_path):
    import json

    from config.errors import DedupError
    from config.loader import load_config
    from training.fit_verifier import encoder_verifier_share

    weights = tmp_path / "sspr.safetensors"
    weights.write_bytes(b"")

    def config(share: str):
        return load_config(
            None, {"encoder.kind": "sspr", "encoder.weights": str(weights), "train.verifier_share": share}, environ={}
        )

    assert encoder_verifier_share(config("0.5")) == 0.5  # no run record: the config's value
    (tmp_path / "sspr.safetensors.json").write_text(json.dumps({"options": {"verifier_share": 0.5}}))
    assert encoder_verifier_share(config("0.5")) == 0.5
    with pytest.raises(
        DedupError, match=r"trained with train.verifier_share=0.5 but the config has 0.*set train.verifier_share = 0.5"
    ):
        encoder_verifier_share(config("0"))
    (tmp_path / "sspr.safetensors.json").write_text(json.dumps({"options": {}}))  # a record from before the key
    assert encoder_verifier_share(config("0")) == 0.0


def test_cross_fitting_takes_two_folds_of_one_share_and_a_served_encoder_trained_on_everything(tmp_path):
    import json

    from config.errors import DedupError
    from config.loader import load_config
    from training.fit_verifier import cross_fit_folds

    def weights(name: str, **options) -> str:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(b"")
        (tmp_path / f"{name}.safetensors.json").write_text(json.dumps({"options": options}))
        return str(path)

    served = weights("served", verifier_share=0.0)
    outside = weights("outside", verifier_share=0.5, share_side="outside")
    inside = weights("inside", verifier_share=0.5, share_side="inside")
    config = load_config(None, {"encoder.kind": "sspr", "encoder.weights": served}, environ={})
    folds = cross_fit_folds(config, f"{outside}, {inside}")
    assert [(f.weights, share, side) for f, share, side in folds] == [
        (outside, 0.5, "outside"),
        (inside, 0.5, "inside"),
    ]
    assert folds[0][0].lora_targets == config.encoder.lora_targets  # the served layout, other weights

    with pytest.raises(DedupError, match="two weights files"):
        cross_fit_folds(config, outside)
    with pytest.raises(DedupError, match="the inside fold needs a share > 0 and share_side='inside'"):
        cross_fit_folds(config, f"{outside},{outside}")
    other = weights("other", verifier_share=0.3, share_side="inside")
    with pytest.raises(DedupError, match="different shares"):
        cross_fit_folds(config, f"{outside},{other}")
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(b"")
    with pytest.raises(DedupError, match="run record"):
        cross_fit_folds(config, f"{outside},{bare}")
    held_out = load_config(None, {"encoder.kind": "sspr", "encoder.weights": outside}, environ={})
    with pytest.raises(DedupError, match="must have trained on every product"):
        cross_fit_folds(held_out, f"{outside},{inside}")
