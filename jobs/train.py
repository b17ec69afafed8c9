"""train: fits the eSSPR encoder's trainable parts on labelled product clusters.

What trains: only the small trainable part of ``kind="sspr"`` (``encoder.sspr``: LoRA adapters,
patch embedding, head); MiniLM and the EfficientNet CNN stay frozen. Loss: ``encoder.loss.
total_loss`` (PPM m->m, t->m, i->m, self-distinctiveness, locality consistency) with in-batch
negatives, so batches are filled with *similar* clusters by ``encoder.train_data.
HardNegativeSampler``.

Data (from ``--shared``, the shared datasets folder):

* ``wdc``: WDC Products ``000un_train_medium`` offers with their ``cluster_id``, text only. Offers
  that also appear in ``000un_valid_medium`` or any gs file are excluded (logged): valid_medium is
  reserved for choosing the threshold and weights, the gs files for testing. The other
  ``valid_*`` files are never read (they share offers with valid_medium), nor the Leipzig sets
  (they measure transfer).
* ``grocery``: GroceryStore train-split photos with the constructed titles of the evaluation,
  image + text; same fine class = same product. Every ``--image-every``-th step is a grocery
  step (when both sources are on), because image steps cost far more than text steps.

Optionally (``--eval-every``) the average precision of the fused-vector cosine on WDC
valid_medium's labelled pairs is logged, to watch for the model specialising to the training
clusters; with ``--keep-best`` the weights with the best such AP are the ones written to
``--out`` (valid_medium is the file for choosing weights).

Seeded (python, numpy, torch); logs loss, loss parts and pairs/s per step; writes a checkpoint
(trainable tensors, optimizer state, step, RNG states) atomically every ``--checkpoint-every``
steps and at the end; ``--resume`` continues from the latest checkpoint and gives the same
weights as an uninterrupted run. Writes the weights (``encoder.sspr.save_trainable``) to
``--out`` and a record of the run (arguments, steps, last losses, sha256) to ``<out>.json``.

Produce the shipped weights (at most 27 minutes of training on 2 CPU cores, plus start-up)::

    python jobs/train.py --shared ../shared/datasets --out encoder/weights/sspr.safetensors \\
        --checkpoint-dir var/train --seed 0 --threads 2 --max-steps 300 --max-minutes 27 \\
        --eval-every 100 --keep-best

``--max-minutes`` guarantees the time limit; the lr schedule is over ``--max-steps``, so pick
``--max-steps`` from the pairs/s the log shows on the machine (see the run record).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = ("wdc", "grocery")
WDC_TRAIN = "000un_train_medium"
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_SUFFIX = ".pt"
# Arguments that must match between a checkpoint and a resumed run: they decide which batch
# each step sees and how the optimizer steps.
RESUME_KEYS = (
    "sources",
    "batch_size",
    "image_batch_size",
    "image_every",
    "seed",
    "lr",
    "weight_decay",
    "warmup_steps",
    "max_steps",
    "top_k",
    "init_weights",
)


@dataclass(frozen=True)
class TrainOptions:
    """The resolved training options (the flags of ``main``)."""

    shared: str
    out: str
    checkpoint_dir: str
    resume: bool
    max_steps: int
    max_minutes: float
    stop_after: int
    batch_size: int
    image_batch_size: int
    image_every: int
    lr: float
    weight_decay: float
    warmup_steps: int
    seed: int
    sources: tuple[str, ...]
    top_k: int
    checkpoint_every: int
    eval_every: int
    keep_best: bool
    threads: int
    init_weights: str
    config: str | None
    loss: tuple[tuple[str, str], ...]
    argv: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    """The command line of the train command."""
    parser = argparse.ArgumentParser(
        prog="train",
        description="Train the eSSPR encoder (kind='sspr': LoRA adapters, patch embedding and "
        "head; the pretrained towers stay frozen) on labelled product clusters: WDC "
        f"{WDC_TRAIN} (text) and GroceryStore train photos (image + constructed title). Every "
        "pair of two offers of one cluster is a positive; the other pairs of the batch are the "
        "negatives, and batches are filled with lexically similar clusters (hard negatives). "
        "Offers of WDC valid_medium and the gs files are never trained on.",
        epilog="Shipped weights: python jobs/train.py --shared ../shared/datasets "
        "--out encoder/weights/sspr.safetensors --checkpoint-dir var/train --seed 0 "
        "--threads 2 --max-steps 300 --max-minutes 27 --eval-every 100 --keep-best",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--shared", default="../shared/datasets",
                        help="the shared datasets folder (wdc_products_80cc20rnd/, "
                        "grocery_store_packages/)")
    parser.add_argument("--out", default="encoder/weights/sspr.safetensors",
                        help="weights file to write (safetensors; point encoder.weights at it); "
                        "a run record is written next to it as <out>.json")
    parser.add_argument("--checkpoint-dir", default="var/train",
                        help="folder for step-NNNNNNN.pt checkpoints (created)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --checkpoint-dir (a fresh "
                        "start if there is none); the flags in RESUME_KEYS must match it")
    parser.add_argument("--max-steps", type=int, default=2000,
                        help="optimizer steps in all; also the length of the cosine lr decay")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="stop (checkpoint, write --out) after this many minutes of this "
                        "process; 0 = no time limit")
    parser.add_argument("--stop-after", type=int, default=0,
                        help="stop this process after N steps (checkpoint, write --out) without "
                        "changing the schedule; 0 = run to --max-steps. For split runs and tests")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="pairs per text (WDC) batch, each from a different cluster")
    parser.add_argument("--image-batch-size", type=int, default=16,
                        help="pairs per image (GroceryStore) batch; at most 31 (the SKU count)")
    parser.add_argument("--image-every", type=int, default=4,
                        help="with both sources on, every N-th step is an image step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--warmup-steps", type=int, default=20,
                        help="linear lr warm-up steps, then cosine decay to 10%% at --max-steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds python, numpy, torch and "
                        "the batch sampler")
    parser.add_argument("--sources", default="wdc,grocery",
                        help=f"comma-separated training sources out of {','.join(SOURCES)}")
    parser.add_argument("--top-k", type=int, default=3,
                        help="hard-negative chain: next cluster drawn from the k most similar")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="write a checkpoint every N steps (and always at the end)")
    parser.add_argument("--eval-every", type=int, default=100,
                        help="every N steps log the AP of m-cosine on WDC valid_medium pairs; "
                        "0 = off")
    parser.add_argument("--keep-best", action="store_true",
                        help="write the weights with the best valid_medium AP to --out instead "
                        "of the last ones (needs --eval-every > 0)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads; 0 = torch's default (all cores)")
    parser.add_argument("--init-weights", default="",
                        help="start from this weights file instead of the seeded init")
    parser.add_argument("--config", default=None,
                        help="pipeline TOML: its [encoder] table gives text_max_tokens, "
                        "image_size, device (kind is forced to 'sspr'); an optional [loss] "
                        "table gives LossConfig fields")
    parser.add_argument("--loss", action="append", default=[], metavar="FIELD=VALUE",
                        type=lambda kv: tuple(kv.split("=", 1)),
                        help="override a LossConfig field, e.g. --loss ppm_margin=0.3")
    return parser


def parse_options(argv: list[str] | None) -> TrainOptions:
    """Parses and checks the flags; raises ValueError with every problem at once."""
    args = build_parser().parse_args(argv)
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    problems = []
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        problems.append(f"--sources {args.sources!r}: use a comma list of {list(SOURCES)}")
    for name in ("max_steps", "batch_size", "image_batch_size", "image_every",
                 "checkpoint_every", "top_k"):
        if getattr(args, name) < (2 if "batch" in name else 1):
            problems.append(f"--{name.replace('_', '-')}={getattr(args, name)} is too small")
    if (args.lr <= 0 or args.max_minutes < 0 or args.eval_every < 0 or args.threads < 0
            or args.stop_after < 0):
        problems.append("--lr must be > 0; --max-minutes, --stop-after, --eval-every, "
                        "--threads >= 0")
    if args.keep_best and args.eval_every == 0:
        problems.append("--keep-best needs --eval-every > 0")
    if any(len(kv) != 2 for kv in args.loss):
        problems.append("--loss takes FIELD=VALUE")
    if problems:
        raise ValueError("; ".join(problems))
    return TrainOptions(
        shared=args.shared, out=args.out, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
        max_steps=args.max_steps, max_minutes=args.max_minutes, stop_after=args.stop_after,
        batch_size=args.batch_size,
        image_batch_size=args.image_batch_size, image_every=args.image_every, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, seed=args.seed,
        sources=sources, top_k=args.top_k, checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, keep_best=args.keep_best, threads=args.threads,
        init_weights=args.init_weights, config=args.config, loss=tuple(args.loss),
        argv=tuple(sys.argv[1:] if argv is None else argv),
    )


def load_configs(options: TrainOptions):
    """The EncoderConfig (kind 'sspr') and LossConfig of a run.

    ``[encoder]`` of the TOML goes through ``jobs.config.load_config`` (same types, env vars and
    checks as every stage); ``[loss]`` is not a pipeline section, so it is read here.
    """
    from encoder.config import LossConfig
    from jobs.config import load_config

    encoder_table: dict = {}
    loss_table: dict = {}
    if options.config is not None:
        data = tomllib.loads(Path(options.config).read_text())
        encoder_table = dict(data.get("encoder", {}))
        loss_table = dict(data.get("loss", {}))
    encoder_table.update(kind="sspr", weights=options.init_weights)
    if options.threads:
        encoder_table["num_threads"] = options.threads
    pipeline = load_config(None, {f"encoder.{k}": str(v) for k, v in encoder_table.items()})
    loss_table.update(dict(options.loss))
    known = {f.name: f.type for f in fields(LossConfig)}
    unknown = sorted(set(loss_table) - set(known))
    if unknown:
        raise ValueError(f"unknown loss fields {unknown}; known: {sorted(known)}")
    loss = LossConfig(**{
        k: (int(v) if k == "locality_top_k" else float(v)) for k, v in loss_table.items()
    })
    return pipeline.encoder, loss


def read_wdc_train(shared: Path):
    """Reads the WDC train_medium offers and the ids reserved for validation and testing.

    Args:
        shared: the shared datasets folder.

    Returns:
        ``(offers, reserved)``: the ``000un_train_medium`` offers (``id, title, cluster_id``) and
        a Series of the offer ids of ``000un_valid_medium`` and the gs files, which nothing may
        train or fit on.

    Raises:
        FileNotFoundError: if the WDC folder is missing.
    """
    from evaluation.datasets import WDC_FOLDER, WDC_TEST, WDC_VALID, read_wdc_offers

    if not (shared / WDC_FOLDER).is_dir():
        raise FileNotFoundError(f"{shared / WDC_FOLDER} is missing; pass --shared")
    return read_wdc_offers(shared, (WDC_TRAIN,)), read_wdc_offers(shared, (WDC_VALID, *WDC_TEST))["id"]


def read_training_items(shared: Path, sources: tuple[str, ...]) -> dict:
    """Reads each source's items (``encoder.train_data`` format); logs what was excluded.

    Raises:
        FileNotFoundError: if a source's dataset folder is missing.
    """
    from encoder import train_data
    from evaluation.datasets import GROCERY_FOLDER, WDC_TEST, WDC_VALID, read_grocery

    items = {}
    if "wdc" in sources:
        offers, reserved = read_wdc_train(shared)
        items["wdc"], counts = train_data.wdc_items(offers, reserved)
        log.info("wdc %s: %s (reserved = offers of %s)", WDC_TRAIN, json.dumps(counts),
                 ", ".join((WDC_VALID, *WDC_TEST)))
    if "grocery" in sources:
        if not (shared / GROCERY_FOLDER).is_dir():
            raise FileNotFoundError(f"{shared / GROCERY_FOLDER} is missing; pass --shared")
        photos, _catalog = read_grocery(shared)
        items["grocery"] = train_data.grocery_items(photos)
        log.info("grocery train: %d photos in %d SKUs", len(items["grocery"]),
                 items["grocery"]["cluster"].nunique())
    return items


def step_source(step: int, sources: tuple[str, ...], image_every: int) -> tuple[str, int]:
    """Which source step ``step`` (0-based) uses, and that source's own batch index."""
    if len(sources) == 1:
        return sources[0], step
    images = (step + 1) // image_every  # image steps among steps 0..step
    if (step + 1) % image_every == 0:
        return "grocery", images - 1
    return "wdc", step - images


def learning_rate(step: int, options: TrainOptions) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr`` at ``max_steps``."""
    import math

    if step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    decay_steps = max(1, options.max_steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / decay_steps)
    return options.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_model_batch(model, items, pairs, image_size: int):
    """One model batch of the B triggers followed by their B offers."""
    import torch

    from encoder.image import decode_image

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
    trigger = {"m": out.m[:n], "t": out.t[:n], "i": out.i[:n],
               "has_text": out.has_text[:n], "has_image": out.has_image[:n]}
    offer = {"m": out.m[n:]}
    return trigger, offer


class ValidMediumProbe:
    """AP of the fused-vector cosine over WDC valid_medium's labelled pairs (text only)."""

    def __init__(self, shared: Path) -> None:
        from evaluation.datasets import WDC_VALID, read_wdc_offers, read_wdc_pairs

        self.offers = read_wdc_offers(shared, (WDC_VALID,))
        self.pairs = read_wdc_pairs(shared, WDC_VALID)
        index = {int(k): n for n, k in enumerate(self.offers["id"])}
        self.left = self.pairs["id_left"].map(index).to_numpy()
        self.right = self.pairs["id_right"].map(index).to_numpy()

    def __call__(self, model) -> float:
        import numpy as np
        from sklearn.metrics import average_precision_score

        titles = [t if t.strip() else None for t in self.offers["title"]]
        keep = [k for k, t in enumerate(titles) if t is not None]
        out = model.encode([titles[k] for k in keep], [None] * len(keep))
        m = np.zeros((len(titles), out.m.shape[1]), dtype=np.float32)
        m[keep] = out.m
        similarity = (m[self.left] * m[self.right]).sum(axis=1)
        return float(average_precision_score(self.pairs["label"].to_numpy(), similarity))


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in ``folder``, or None."""
    found = sorted(folder.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"))
    return found[-1] if found else None


def save_checkpoint(folder: Path, step: int, model, optimizer, options: TrainOptions,
                    extra: dict) -> Path:
    """Writes step-NNNNNNN.pt atomically (temp file + rename); keeps the two newest."""
    import numpy as np
    import torch

    from encoder.sspr import trainable_parameters

    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "trainable": {k: v.detach().cpu().clone() for k, v in trainable_parameters(model).items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()},
        "options": {k: _plain(getattr(options, k)) for k in RESUME_KEYS},
        "extra": extra,
    }
    target = folder / f"{CHECKPOINT_PREFIX}{step:07d}{CHECKPOINT_SUFFIX}"
    partial = target.with_name(target.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, target)
    for old in sorted(folder.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"))[:-2]:
        old.unlink()
    log.info("checkpoint %s", target)
    return target


def restore_checkpoint(path: Path, model, optimizer, options: TrainOptions) -> tuple[int, dict]:
    """Loads a checkpoint into model and optimizer and restores the RNGs; returns (step, extra).

    Raises:
        ValueError: if the checkpoint was written with other RESUME_KEYS flags.
    """
    import numpy as np
    import torch

    from encoder.sspr import trainable_parameters

    state = torch.load(path, map_location="cpu", weights_only=False)
    differ = {k: (v, _plain(getattr(options, k))) for k, v in state["options"].items()
              if v != _plain(getattr(options, k))}
    if differ:
        raise ValueError(f"{path} was written with other flags {differ} (checkpoint, now); "
                         "resume with the same flags or use another --checkpoint-dir")
    with torch.no_grad():
        for name, param in trainable_parameters(model).items():
            param.copy_(state["trainable"][name])
    optimizer.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"]), dict(state["extra"])


def train(options: TrainOptions) -> dict:
    """Runs the training and writes ``--out``; returns the run record."""
    import numpy as np
    import torch

    from encoder.loss import total_loss
    from encoder.sspr import SsprEncoder, save_trainable, trainable_parameters
    from encoder.train_data import HardNegativeSampler

    started = time.monotonic()
    random.seed(options.seed)
    np.random.seed(options.seed)
    torch.manual_seed(options.seed)
    encoder_config, loss_config = load_configs(options)
    shared = Path(options.shared)
    items = read_training_items(shared, options.sources)
    samplers = {
        source: HardNegativeSampler(
            frame,
            options.image_batch_size if source == "grocery" else options.batch_size,
            seed=options.seed + SOURCES.index(source),
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
    if options.resume:
        found = latest_checkpoint(folder)
        if found is None:
            log.info("--resume: no checkpoint in %s, starting at step 0", folder)
        else:
            step, extra = restore_checkpoint(found, model, optimizer, options)
            log.info("resumed from %s at step %d", found, step)
    best_path = folder / "best.safetensors"
    model.train()
    last_parts: dict[str, float] = {}
    first_step = step
    while step < options.max_steps:
        if options.stop_after and step - first_step >= options.stop_after:
            log.info("--stop-after %d reached at step %d", options.stop_after, step)
            break
        if options.max_minutes and time.monotonic() - started > options.max_minutes * 60:
            log.info("--max-minutes %.1f reached at step %d", options.max_minutes, step)
            break
        tick = time.perf_counter()
        source, index = step_source(step, options.sources, options.image_every)
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
        log.info("step %d/%d %s loss %.4f [%s] %.1f pairs/s lr %.2e", step, options.max_steps,
                 source, last_parts["loss"],
                 " ".join(f"{k}={v:.4f}" for k, v in last_parts.items() if k != "loss"),
                 len(pairs) / seconds, learning_rate(step - 1, options))
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
    if latest_checkpoint(folder) is None or _step_of(latest_checkpoint(folder)) != step:
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
        "command": "python jobs/train.py " + " ".join(options.argv),
        "options": {k: _plain(v) for k, v in asdict(options).items() if k != "argv"},
        "steps": step,
        "weights_step": written_step,
        "last_losses": last_parts,
        "valid_medium": {"best_ap": extra["best_ap"], "best_step": extra["best_step"],
                         "history": extra["history"]},
        "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
        "minutes": round((time.monotonic() - started) / 60, 2),
    }
    Path(str(out_path) + ".json").write_text(json.dumps(record, indent=2, sort_keys=True))
    log.info("wrote %s (step %d, sha256 %s)", out_path, written_step, record["sha256"][:16])
    return record


def main(argv: list[str] | None = None) -> int:
    """Command line; returns 0 on success, 2 on a known problem (message logged)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        options = parse_options(argv)
    except ValueError as exc:
        log.error("train: %s", exc)
        return 2
    try:
        train(options)
    except (ValueError, FileNotFoundError) as exc:
        log.error("train failed: %s", exc)
        return 2
    return 0


def _step_of(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):-len(CHECKPOINT_SUFFIX)])


def _plain(value):
    """Tuples to lists, so options compare equal after a checkpoint round trip."""
    return list(value) if isinstance(value, tuple) else value


if __name__ == "__main__":
    sys.exit(main())
