"""train: fits the eSSPR encoder's trainable parts on labelled product clusters.

What trains: only the small trainable part of ``kind="sspr"`` (``encoder.sspr``: LoRA adapters,
patch embedding, head); MiniLM and the EfficientNet CNN stay frozen. Loss: ``encoder.loss.
total_loss`` (PPM m->m, t->m, i->m, self-distinctiveness, locality consistency) with in-batch
negatives, so batches are filled with *similar* clusters by ``training.data.HardNegativeSampler``.

Data (``paths.datasets_dir``, the shared datasets folder):

* ``wdc``: WDC Products ``000un_train_medium`` offers with their ``cluster_id``, text only. Offers
  that also appear in ``000un_valid_medium`` or any gs file are excluded (logged): valid_medium is
  reserved for choosing the threshold and weights, the gs files for testing. No other WDC file is
  read, nor the Leipzig sets (they measure transfer).
* ``grocery``: GroceryStore train-split photos with the constructed titles of the evaluation,
  image + text; same fine class = same product. Every ``train.image_every``-th step is a grocery
  step (when both sources are on), because image steps cost far more than text steps.
* ``train.verifier_share``: that share of the products of both sources (WDC clusters, GroceryStore
  SKUs; a stable hash, ``benchmarks.datasets.in_verifier_share``) is left out for the pair
  verifier (``training.fit_verifier`` trains on them only), so the verifier never learns from
  pairs the encoder memorised.

Settings: ``[train]`` (every key is also a flag: ``train.max_steps`` is ``--max-steps``), ``[loss]``
and ``[encoder]`` (text_max_tokens, image_size, device; kind is always ``sspr``). Seeded; logs loss,
loss parts and pairs/s per step; checkpoints (``training.checkpoint``) every
``train.checkpoint_every`` steps; ``--resume`` gives the same weights as an uninterrupted run.
Writes the weights to ``train.out`` and a record of the run to ``<out>.json``. With
``train.eval_every`` the AP of the fused-vector cosine on WDC valid_medium is logged, and with
``train.keep_best`` the best such weights are the ones written.

The shipped weights (``[train]`` of conf/sspr.toml: LoRA on every linear layer, 1,000 steps on
every training product, the best valid_medium AP kept; about 40 minutes on 2 cores)::

    python -m training.train --config conf/sspr.toml

and the pair verifier's two cross-fitting encoders (``make folds``) are the same run with
``--set train.verifier_share=0.5 --set train.share_side=outside`` (and ``inside``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score

from benchmarks.datasets import (
    GROCERY_FOLDER,
    WDC_TEST,
    WDC_TRAIN,
    WDC_VALID,
    read_grocery,
    read_wdc_offers,
    read_wdc_pairs,
    read_wdc_train,
    trained_products,
)
from config.command import add_shortcut, command_parser, run_command
from config.errors import DedupError
from config.sections import TRAIN_SOURCES, PipelineConfig, TrainConfig
from encoder.config import EncoderConfig
from encoder.image import decode_image
from encoder.loss import total_loss
from encoder.sspr import SsprEncoder, save_trainable, trainable_parameters
from training.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint, step_of
from training.data import HardNegativeSampler, grocery_items, wdc_items

log = logging.getLogger(__name__)


def training_encoder(config: PipelineConfig) -> EncoderConfig:
    """The model a run trains: ``[encoder]`` as kind ``sspr`` from ``train.init_weights``.

    The lexical part is not trained, so it is off; ``train.threads`` (when set) sets the torch
    threads.
    """
    return dataclasses.replace(
        config.encoder,
        kind="sspr",
        weights=config.train.init_weights,
        lexical_weight=0.0,
        lexical_idf="",
        num_threads=config.train.threads or config.encoder.num_threads,
    )


def read_training_items(
    shared: Path, sources: tuple[str, ...], verifier_share: float = 0.0, share_side: str = "outside"
) -> dict:
    """Reads each source's items (``encoder.train_data`` format); logs what was excluded.

    Products in the pair verifier's share (``train.verifier_share``: WDC clusters, GroceryStore
    SKUs, ``benchmarks.datasets.in_verifier_share``) are left out, like the reserved offers; with
    ``share_side="inside"`` the products outside it are left out instead.

    Raises:
        FileNotFoundError: if a source's dataset folder is missing.
    """
    items = {}
    if "wdc" in sources:
        offers, reserved = read_wdc_train(shared)
        verifiers = offers["id"][~trained_products(offers["cluster_id"], verifier_share, share_side)]
        items["wdc"], counts = wdc_items(offers, pd.concat([reserved, verifiers]))
        log.info(
            "wdc %s: %s (reserved = offers of %s, and %d offers %s the verifier's share %.2f of clusters)",
            WDC_TRAIN,
            json.dumps(counts),
            ", ".join((WDC_VALID, *WDC_TEST)),
            len(verifiers),
            "outside" if share_side == "inside" else "in",
            verifier_share,
        )
    if "grocery" in sources:
        if not (shared / GROCERY_FOLDER).is_dir():
            raise FileNotFoundError(f"{shared / GROCERY_FOLDER} is missing; pass --shared")
        photos, _catalog = read_grocery(shared)
        photos = photos[trained_products(photos["fine_id"], verifier_share, share_side)]
        items["grocery"] = grocery_items(photos)
        log.info(
            "grocery train: %d photos in %d SKUs (the SKUs %s the verifier's share %.2f left out)",
            len(items["grocery"]),
            items["grocery"]["cluster"].nunique(),
            "outside" if share_side == "inside" else "in",
            verifier_share,
        )
    return items


def step_source(step: int, sources: tuple[str, ...], image_every: int) -> tuple[str, int]:
    """Which source step ``step`` (0-based) uses, and that source's own batch index."""
    if len(sources) == 1:
        return sources[0], step
    images = (step + 1) // image_every  # image steps among steps 0..step
    if (step + 1) % image_every == 0:
        return "grocery", images - 1
    return "wdc", step - images


def learning_rate(step: int, options: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr`` at ``max_steps``."""
    if step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    decay_steps = max(1, options.max_steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / decay_steps)
    return options.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_model_batch(model, items, pairs, image_size: int):
    """One model batch of the B triggers followed by their B offers."""
    rows = [t for t, _ in pairs] + [o for _, o in pairs]
    titles = items["title"].to_numpy()[rows].tolist()
    pixels = []
    for path in items["image"].to_numpy()[rows]:
        if path is None:
            pixels.append(None)
            continue
        tensor, reason = decode_image(Path(path).read_bytes(), image_size)
        if tensor is None:
            raise ValueError(f"training image {path} cannot be decoded ({reason})")
        pixels.append(tensor)
    batch = model.make_batch(titles, pixels)
    return batch, torch.device(model.device)


def split_output(out, n: int):
    """Trigger side (m, t, i, masks) and offer side (m) of a make_model_batch output."""
    trigger = {
        "m": out.m[:n],
        "t": out.t[:n],
        "i": out.i[:n],
        "has_text": out.has_text[:n],
        "has_image": out.has_image[:n],
    }
    offer = {"m": out.m[n:]}
    return trigger, offer


class ValidMediumProbe:
    """AP of the fused-vector cosine over WDC valid_medium's labelled pairs (text only)."""

    def __init__(self, shared: Path) -> None:
        self.offers = read_wdc_offers(shared, (WDC_VALID,))
        self.pairs = read_wdc_pairs(shared, WDC_VALID)
        index = {int(k): n for n, k in enumerate(self.offers["id"])}
        self.left = self.pairs["id_left"].map(index).to_numpy()
        self.right = self.pairs["id_right"].map(index).to_numpy()

    def __call__(self, model) -> float:
        titles = [t if t.strip() else None for t in self.offers["title"]]
        keep = [k for k, t in enumerate(titles) if t is not None]
        out = model.encode([titles[k] for k in keep], [None] * len(keep))
        m = np.zeros((len(titles), out.m.shape[1]), dtype=np.float32)
        m[keep] = out.m
        similarity = (m[self.left] * m[self.right]).sum(axis=1)
        return float(average_precision_score(self.pairs["label"].to_numpy(), similarity))


def train(config: PipelineConfig, resume: bool = False, argv: tuple[str, ...] = ()) -> dict:
    """Runs the training and writes ``train.out``.

    Args:
        config: ``[train]`` and ``[loss]`` drive the run, ``[encoder]`` the model's settings,
            ``paths.datasets_dir`` the data.
        resume: continue from the latest checkpoint in ``train.checkpoint_dir``.
        argv: the command line, for the run record.

    Returns:
        The run record (also written to ``<out>.json``).
    """
    options = config.train
    sources = options.source_list()
    started = time.monotonic()
    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    encoder_config, loss_config = training_encoder(config), config.loss
    shared = Path(config.paths.datasets_dir)
    items = read_training_items(shared, sources, options.verifier_share, options.share_side)
    samplers = {
        source: HardNegativeSampler(
            frame,
            options.image_batch_size if source == "grocery" else options.batch_size,
            seed=options.seed + TRAIN_SOURCES.index(source),
            top_k=options.top_k,
        )
        for source, frame in items.items()
    }
    probe = ValidMediumProbe(shared) if options.eval_every else None
    model = SsprEncoder(encoder_config)
    params = list(trainable_parameters(model).values())
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)

    folder = Path(options.checkpoint_dir)
    step, extra = 0, {"best_ap": None, "best_step": None, "history": []}
    if resume:
        found = latest_checkpoint(folder)
        if found is None:
            log.info("resume: no checkpoint in %s, starting at step 0", folder)
        else:
            step, extra = restore_checkpoint(found, model, optimizer, options)
            log.info("resumed from %s at step %d", found, step)
    best_path = folder / "best.safetensors"
    model.train()
    last_parts: dict[str, float] = {}
    first_step = step
    while step < options.max_steps:
        if options.stop_after and step - first_step >= options.stop_after:
            log.info("train.stop_after %d reached at step %d", options.stop_after, step)
            break
        if options.max_minutes and time.monotonic() - started > options.max_minutes * 60:
            log.info("train.max_minutes %.1f reached at step %d", options.max_minutes, step)
            break
        tick = time.perf_counter()
        source, index = step_source(step, sources, options.image_every)
        sampler = samplers[source]
        pairs = sampler.batch(index)
        batch, device = make_model_batch(model, sampler.items, pairs, encoder_config.image_size)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, options)
        out = model(batch.to(device))
        trigger, offer = split_output(out, len(pairs))
        loss, parts = total_loss(trigger, offer, loss_config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        seconds = time.perf_counter() - tick
        last_parts = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        log.info(
            "step %d/%d %s loss %.4f [%s] %.1f pairs/s lr %.2e",
            step,
            options.max_steps,
            source,
            last_parts["loss"],
            " ".join(f"{k}={v:.4f}" for k, v in last_parts.items() if k != "loss"),
            len(pairs) / seconds,
            learning_rate(step - 1, options),
        )
        if probe is not None and step % options.eval_every == 0:
            ap = probe(model)
            model.train()
            extra["history"].append({"step": step, "valid_medium_ap": ap})
            log.info("step %d valid_medium AP(m) %.4f (best %s)", step, ap, extra["best_ap"])
            if extra["best_ap"] is None or ap > extra["best_ap"]:
                extra.update(best_ap=ap, best_step=step)
                folder.mkdir(parents=True, exist_ok=True)
                save_trainable(model, best_path)
        if step % options.checkpoint_every == 0:
            save_checkpoint(folder, step, model, optimizer, options, extra)
    if latest_checkpoint(folder) is None or step_of(latest_checkpoint(folder)) != step:
        save_checkpoint(folder, step, model, optimizer, options, extra)

    out_path = Path(options.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if options.keep_best and extra["best_step"] is not None and best_path.is_file():
        out_path.write_bytes(best_path.read_bytes())
        written_step = extra["best_step"]
    else:
        save_trainable(model, out_path)
        written_step = step
    record = {
        "command": "python -m training.train " + " ".join(argv),
        "options": {
            **asdict(options),
            "datasets_dir": config.paths.datasets_dir,
            "resume": resume,
            "loss": asdict(loss_config),
        },
        "steps": step,
        "weights_step": written_step,
        "last_losses": last_parts,
        "valid_medium": {"best_ap": extra["best_ap"], "best_step": extra["best_step"], "history": extra["history"]},
        "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
        "minutes": round((time.monotonic() - started) / 60, 2),
    }
    Path(str(out_path) + ".json").write_text(json.dumps(record, indent=2, sort_keys=True))
    log.info("wrote %s (step %d, sha256 %s)", out_path, written_step, record["sha256"][:16])
    return record


def build_parser() -> argparse.ArgumentParser:
    """The command line: the shared flags, ``--shared``, ``--resume`` and one flag per ``[train]`` key."""
    parser = command_parser("python -m training.train", __doc__)
    add_shortcut(parser, "--shared", "paths.datasets_dir", "the shared datasets folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in train.checkpoint_dir (a fresh "
        "start if there is none); the RESUME_KEYS settings must match it",
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        add_shortcut(
            parser, flag, f"train.{field.name}", f"default {field.default!r}", switch=field.type in (bool, "bool")
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the train command; returns 0 on success, 2 on a known problem, 1 on a crash."""
    args_list = tuple(sys.argv[1:] if argv is None else argv)

    def body(args, config) -> int:
        try:
            train(config, resume=args.resume, argv=args_list)
        except FileNotFoundError as exc:
            raise DedupError(str(exc)) from None
        return 0

    return run_command("train", body, argv, build_parser(), log)


if __name__ == "__main__":
    sys.exit(main())
