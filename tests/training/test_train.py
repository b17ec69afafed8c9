"""The training data, the hard-negative sampler and the ``train`` command (training/train.py).

Everything runs on tiny data: hand-made title clusters (and a tiny synthetic WDC folder written in the
test's temp dir), plus read-only checks on the real WDC train_medium file when
``../shared/datasets`` is present. Training runs are a few steps of batches of 3–4 text pairs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.datasets import WDC_TRAIN
from training import train as train_job
from training.data import (
    HardNegativeSampler,
    chain_order,
    cluster_vectors,
    grocery_items,
    wdc_items,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"
WDC_PREFIX = "wdcproducts80cc20rnd"

# 8 hand-made clusters of 3 offers. Clusters come in lexically similar couples (two drills,
# two milks, ...), which the sampler should put into the same batch.
CLUSTERS = {
    1: ["Bosch PSB 500 RE impact drill 500W", "Bosch PSB500RE Schlagbohrmaschine", "bosch psb 500 re drill"],
    2: ["Makita HP1630 impact drill 710W", "Makita HP 1630 Schlagbohrmaschine", "makita hp1630k drill"],
    3: ["Arla standard milk 1L", "Arla Standardmjolk 1 liter", "arla milk standard 3%"],
    4: ["Arla medium fat milk 1L", "Arla Mellanmjolk 1 liter", "arla milk medium-fat 1.5%"],
    5: ["Samsung Galaxy S21 128GB phantom grey", "Samsung SM-G991B Galaxy S21", "galaxy s21 5g 128 gb"],
    6: ["Samsung Galaxy S22 256GB black", "Samsung SM-S901B Galaxy S22", "galaxy s22 5g 256 gb"],
    7: ["Canon EF 50mm f/1.8 STM lens", "Canon EF50 1.8 STM objective", "canon 50mm 1.8 stm"],
    8: ["Nikon AF-S 50mm f/1.8G lens", "Nikon Nikkor 50 mm 1.8 G objective", "nikon af-s 50mm 1.8g"],
}


def _offers() -> pd.DataFrame:
    rows = [
        (cluster * 100 + k, title, None, cluster)
        for cluster, titles in CLUSTERS.items()
        for k, title in enumerate(titles)
    ]
    return pd.DataFrame(rows, columns=["id", "title", "brand", "cluster_id"])


def _items() -> pd.DataFrame:
    items, _ = wdc_items(_offers(), reserved_ids=[])
    return items


def _check_batch(sampler: HardNegativeSampler, pairs: list[tuple[int, int]]) -> None:
    clusters = sampler.items["cluster"].to_numpy()
    trigger_clusters = [clusters[t] for t, _ in pairs]
    assert len(set(trigger_clusters)) == len(pairs), f"two pairs of one cluster: {trigger_clusters}"
    for trigger, offer in pairs:
        assert trigger != offer, "a pair is one item twice"
        assert clusters[trigger] == clusters[offer], "the two sides of a pair differ in cluster"


def test_batches_hold_one_pair_per_cluster_and_sides_share_their_cluster():
    sampler = HardNegativeSampler(_items(), batch_size=4, seed=3)
    assert sampler.batches_per_epoch == 2
    for k in range(3 * sampler.batches_per_epoch):  # three epochs
        pairs = sampler.batch(k)
        assert len(pairs) == 4
        _check_batch(sampler, pairs)


def test_sampler_is_a_pure_function_of_seed_and_batch_index():
    a = HardNegativeSampler(_items(), batch_size=4, seed=3)
    b = HardNegativeSampler(_items(), batch_size=4, seed=3)
    c = HardNegativeSampler(_items(), batch_size=4, seed=4)
    stream = [a.batch(k) for k in range(8)]
    assert [b.batch(k) for k in reversed(range(8))] == stream[::-1]  # order of calls is irrelevant
    assert [c.batch(k) for k in range(8)] != stream


def test_batches_group_lexically_similar_clusters():
    """Hard negatives: the sampler's batches are more similar inside than random batches."""
    items = _items()
    sampler = HardNegativeSampler(items, batch_size=2, seed=0, top_k=1)
    names, vectors = cluster_vectors(items)
    index = {name: k for k, name in enumerate(names)}
    clusters = sampler.items["cluster"].to_numpy()

    def within(pairs) -> float:
        rows = [index[clusters[t]] for t, _ in pairs]
        return float(vectors[rows[0]] @ vectors[rows[1]])

    sampled = np.mean([within(sampler.batch(k)) for k in range(4 * sampler.batches_per_epoch)])
    rng = np.random.default_rng(0)
    draws = (rng.choice(8, 2, replace=False) for _ in range(200))
    random = np.mean([float(vectors[a] @ vectors[b]) for a, b in draws])
    assert sampled > random + 0.1, (sampled, random)


def test_chain_order_is_a_permutation_that_follows_nearest_neighbours():
    vectors = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2, 3, 3]] + 0.01  # 4 tight pairs
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = chain_order(vectors, np.random.default_rng(1), top_k=1)
    assert sorted(order.tolist()) == list(range(8))
    partner = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6}
    for position in range(0, 8, 2):  # a greedy chain visits each tight pair back to back
        assert order[position + 1] == partner[order[position]]


def test_wdc_items_exclude_reserved_offers_and_orphaned_singletons():
    offers = _offers()
    reserved = [101, 102, 200]  # cluster 1 keeps one offer only -> dropped as a singleton
    items, counts = wdc_items(offers, reserved)
    used = set(items["item_id"])
    assert not used & {f"wdc:{i}" for i in reserved}
    assert "wdc:1" not in set(items["cluster"])
    assert counts["reserved_excluded"] == 3
    assert counts["singleton_excluded"] == 1
    assert counts["kept"] == len(offers) - 4 == len(items)
    assert items["image"].isna().all()


def test_grocery_items_use_the_train_split_only():
    photos = pd.DataFrame(
        {
            "path": [f"/x/{s}/{k}.jpg" for s in ("train", "val", "test") for k in range(4)],
            "split": [s for s in ("train", "val", "test") for _ in range(4)],
            "fine_id": [28, 28, 29, 29] * 3,
            "title": ["Arla Milk"] * 12,
        }
    )
    items = grocery_items(photos)
    assert len(items) == 4
    assert items["image"].str.contains("/train/").all()
    assert set(items["cluster"]) == {"grocery:28", "grocery:29"}
    assert items["title"].notna().all()


@pytest.mark.skipif(
    not (SHARED / "wdc_products_80cc20rnd").is_dir(),
    reason=f"the shared WDC data is not at {SHARED}",
)
def test_real_train_medium_uses_no_offer_of_valid_medium_or_gs():
    from benchmarks.datasets import WDC_TEST, WDC_TRAIN, WDC_VALID, read_wdc_offers

    offers = read_wdc_offers(SHARED, (WDC_TRAIN,))
    reserved = set(read_wdc_offers(SHARED, (WDC_VALID, *WDC_TEST))["id"])
    items, counts = wdc_items(offers, reserved)
    used = {int(i.split(":")[1]) for i in items["item_id"]}
    assert not used & reserved
    assert counts["reserved_excluded"] == len(set(offers["id"]) & reserved) > 0
    # a handful of real clusters through the sampler: still one pair per cluster per batch
    some = items[items["cluster"].isin(sorted(items["cluster"].unique())[:24])]
    sampler = HardNegativeSampler(some, batch_size=8, seed=0)
    for k in range(2 * sampler.batches_per_epoch):
        _check_batch(sampler, sampler.batch(k))


def test_step_source_interleaves_image_steps_without_gaps():
    sources = ("wdc", "grocery")
    plan = [train_job.step_source(s, sources, image_every=3) for s in range(12)]
    assert [src for src, _ in plan].count("grocery") == 4
    assert [i for src, i in plan if src == "grocery"] == [0, 1, 2, 3]
    assert [i for src, i in plan if src == "wdc"] == list(range(8))
    assert plan[2] == ("grocery", 0)


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_job.main(["--help"])
    assert exit_info.value.code == 0
    assert "--resume" in capsys.readouterr().out


# --- training runs (tiny) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    from encoder.config import EncoderConfig
    from encoder.sspr import SsprEncoder

    torch.manual_seed(0)
    return SsprEncoder(EncoderConfig(kind="sspr", device="cpu", num_threads=1))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(model):
    """Overfit check: the trainable parts can fit one batch of hard pairs."""
    from encoder.loss import total_loss
    from encoder.sspr import trainable_parameters

    items = _items()
    # positives that share few characters, negatives that share many: a clearly non-zero loss
    pairs = [(0, 1), (3, 4), (6, 7), (9, 10)]  # (English, other-language) title of 4 clusters
    initial = {k: v.detach().clone() for k, v in trainable_parameters(model).items()}
    params = list(trainable_parameters(model).values())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.eval()  # no dropout: the loss curve of a fixed batch is deterministic
    losses = []
    try:
        for _ in range(8):
            batch, device = train_job.make_model_batch(model, items, pairs, 224)
            trigger, offer = train_job.split_output(model(batch.to(device)), len(pairs))
            loss, _ = total_loss(trigger, offer)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        with torch.no_grad():
            for name, param in trainable_parameters(model).items():
                param.copy_(initial[name])
    assert losses[0] > 0.01, losses
    assert losses[-1] < 0.5 * losses[0], losses


def _write_wdc_file(folder: Path, split: str, offers: pd.DataFrame) -> None:
    """A pair file in the WDC format: consecutive offers of the frame paired up."""
    rows = []
    records = offers.to_dict("records")
    for left, right in zip(records, records[1:] + records[:1], strict=True):
        row = {"label": int(left["cluster_id"] == right["cluster_id"])}
        for side, offer in (("left", left), ("right", right)):
            row.update(
                {
                    f"id_{side}": offer["id"],
                    f"title_{side}": offer["title"],
                    f"brand_{side}": offer["brand"],
                    f"cluster_id_{side}": offer["cluster_id"],
                    f"price_{side}": None,
                    f"priceCurrency_{side}": None,
                }
            )
        rows.append(row)
    path = folder / f"{WDC_PREFIX}{split}.json.gz"
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def tiny_shared(tmp_path_factory) -> Path:
    """A shared folder with a tiny WDC train_medium; offer 802 also sits in a gs file."""
    root = tmp_path_factory.mktemp("shared")
    folder = root / "wdc_products_80cc20rnd"
    folder.mkdir()
    offers = _offers()
    _write_wdc_file(folder, WDC_TRAIN, offers)
    other = pd.DataFrame(
        {
            "id": [9001, 9002, 9003, 9004],
            "title": ["Bosch drill PSB", "bosch psb drill", "Canon lens 50", "canon 50 lens"],
            "brand": None,
            "cluster_id": [90, 90, 91, 91],
        }
    )
    for split in ("000un_valid_medium", "000un_gs", "100un_gs"):
        _write_wdc_file(folder, split, other)
    _write_wdc_file(folder, "050un_gs", pd.concat([other, offers[offers["id"] == 802]]))
    return root


def _run(shared: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return train_job.main(
        [
            "--config",
            str(REPO / "conf" / "sspr.toml"),
            "--shared",
            str(shared),
            "--out",
            str(out),
            "--checkpoint-dir",
            str(ckpt),
            "--sources",
            "wdc",
            "--batch-size",
            "3",
            "--max-steps",
            "4",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "0",
            "--set",
            "train.keep_best=false",  # whatever conf/sspr.toml's own run did
            "--set",
            "train.verifier_share=0",
            "--lr",
            "5e-3",
            "--warmup-steps",
            "1",
            "--threads",
            "1",
            "--seed",
            "7",
            "--set",
            "loss.ppm_margin=0.6",
            *extra,  # a wide margin: the loss is > 0
        ]
    )


@pytest.fixture(scope="module")
def straight_run(tiny_shared, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("straight")
    assert _run(tiny_shared, folder / "w.safetensors", folder / "ckpt") == 0
    return folder / "w.safetensors"


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_shared, straight_run, tmp_path):
    out = tmp_path / "w.safetensors"
    assert _run(tiny_shared, out, tmp_path / "ckpt", "--stop-after", "2") == 0
    half = out.read_bytes()
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt")) == ["step-0000002.pt"]
    assert _run(tiny_shared, out, tmp_path / "ckpt", "--resume") == 0
    assert half != out.read_bytes()
    assert out.read_bytes() == straight_run.read_bytes()
    record = json.loads(Path(str(out) + ".json").read_text())
    assert record["steps"] == 4
    assert record["last_losses"]["loss"] > 0  # gradients flowed, so the check means something


def test_resume_refuses_a_checkpoint_written_with_other_flags(tiny_shared, tmp_path):
    out = tmp_path / "w.safetensors"
    assert _run(tiny_shared, out, tmp_path / "ckpt", "--stop-after", "1") == 0
    assert _run(tiny_shared, out, tmp_path / "ckpt", "--resume", "--lr", "1e-3") == 2


def test_reading_training_data_imports_no_spark(tiny_shared):
    """training.train is a plain command: reading and sampling the data must not pull in Spark."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from training import train; "
        f"items = train.read_training_items(Path({str(tiny_shared)!r}), ('wdc',)); "
        "print(len(items['wdc']), 'pyspark' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert result.stdout.split() == [str(3 * len(CLUSTERS) - 1), "False"]


def test_keep_best_writes_the_weights_with_the_best_valid_medium_ap(tiny_shared, tmp_path):
    out = tmp_path / "w.safetensors"
    assert _run(tiny_shared, out, tmp_path / "ckpt", "--eval-every", "2", "--set", "train.keep_best=true") == 0
    record = json.loads(Path(str(out) + ".json").read_text())
    history = record["valid_medium"]["history"]
    assert [h["step"] for h in history] == [2, 4]
    best = max(history, key=lambda h: h["valid_medium_ap"])
    assert record["weights_step"] == record["valid_medium"]["best_step"] == best["step"]
    assert out.read_bytes() == (tmp_path / "ckpt" / "best.safetensors").read_bytes()


def test_training_never_reads_a_reserved_offer(tiny_shared, caplog):
    caplog.set_level("INFO", logger="training.train")
    items = train_job.read_training_items(tiny_shared, ("wdc",))["wdc"]
    assert "wdc:802" not in set(items["item_id"])
    assert len(items) == 3 * len(CLUSTERS) - 1
    # the messages, not caplog.text: pytest 9.2 lends its handler to non-propagating loggers and
    # pyspark's PySparkLogger.addHandler then gives it a JSON formatter that escapes the quotes
    assert '"reserved_excluded": 1' in "\n".join(caplog.messages)


def test_output_weights_load_and_change_the_model_version(model, straight_run):
    from encoder.sspr import load_trainable, trainable_parameters

    before_version = model.model_version
    before = {k: v.detach().clone() for k, v in trainable_parameters(model).items()}
    try:
        load_trainable(model, straight_run)
        assert model.model_version != before_version
        changed = [k for k, v in trainable_parameters(model).items() if not torch.equal(v, before[k])]
        assert any("lora_b" in k for k in changed) and any("head" in k for k in changed), changed
    finally:
        with torch.no_grad():
            for name, param in trainable_parameters(model).items():
                param.copy_(before[name])


def test_the_verifier_share_is_a_stable_hash_subset_of_the_products():
    from benchmarks.datasets import in_verifier_share

    products = np.arange(5000)
    half = in_verifier_share(products, 0.5)
    assert 0.45 < half.mean() < 0.55
    assert half.tolist() == in_verifier_share(products[::-1], 0.5)[::-1].tolist()  # row order does not matter
    assert not in_verifier_share(products, 0.0).any()
    smaller = in_verifier_share(products, 0.2)
    assert (smaller <= half).all() and smaller.sum() < half.sum()  # a smaller share is inside a larger one


def test_training_leaves_out_the_verifiers_share_of_clusters(tiny_shared, caplog):
    from benchmarks.datasets import in_verifier_share

    caplog.set_level("INFO", logger="training.train")
    share = 0.5
    items = train_job.read_training_items(tiny_shared, ("wdc",), verifier_share=share)["wdc"]
    clusters = np.array(sorted(CLUSTERS))
    verifiers = set(clusters[in_verifier_share(clusters, share)])
    assert verifiers and verifiers != set(clusters)  # the tiny set has both kinds at 0.5
    trained = {int(c.removeprefix("wdc:")) for c in items["cluster"]}
    assert trained == set(clusters) - verifiers
    assert "wdc:802" not in set(items["item_id"])  # the reserved offer stays out too
    assert "the verifier's share 0.50" in "\n".join(caplog.messages)


def test_the_inside_fold_trains_on_the_share_only(tiny_shared):
    from benchmarks.datasets import in_verifier_share, trained_products
    from config.errors import ConfigError
    from config.loader import load_config

    clusters = np.array(sorted(CLUSTERS))
    inside = in_verifier_share(clusters, 0.5)
    assert trained_products(clusters, 0.5, "inside").tolist() == inside.tolist()
    assert trained_products(clusters, 0.5, "outside").tolist() == (~inside).tolist()
    assert trained_products(clusters, 0.0).all()  # no share: every product is trained on
    items = train_job.read_training_items(tiny_shared, ("wdc",), verifier_share=0.5, share_side="inside")["wdc"]
    assert {int(c.removeprefix("wdc:")) for c in items["cluster"]} == set(clusters[inside])
    with pytest.raises(ConfigError, match="share_side='inside' needs train.verifier_share > 0"):
        load_config(None, {"train.share_side": "inside"}, environ={})
    with pytest.raises(ConfigError, match="train.share_side='middle' must be"):
        load_config(None, {"train.share_side": "middle", "train.verifier_share": "0.5"}, environ={})
