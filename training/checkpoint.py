"""Training checkpoints: trainable tensors, optimizer state, step and RNG states, written atomically.

A resumed run restores all of it and so gives the same weights as an uninterrupted one; the
settings that decide which batch each step sees (``RESUME_KEYS``) must match.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from config.errors import DedupError
from config.sections import TrainConfig
from encoder.sspr import trainable_parameters

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_SUFFIX = ".pt"
# Settings that must match between a checkpoint and a resumed run: they decide which batch
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
    "verifier_share",
    "share_side",
)


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in ``folder``, or None."""
    found = sorted(folder.glob(f"{CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"))
    return found[-1] if found else None


def save_checkpoint(folder: Path, step: int, model, optimizer, options: TrainConfig, extra: dict) -> Path:
    """Writes step-NNNNNNN.pt atomically (temp file + rename); keeps the two newest."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "trainable": {k: v.detach().cpu().clone() for k, v in trainable_parameters(model).items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "options": {k: getattr(options, k) for k in RESUME_KEYS},
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


def restore_checkpoint(path: Path, model, optimizer, options: TrainConfig) -> tuple[int, dict]:
    """Loads a checkpoint into model and optimizer and restores the RNGs; returns (step, extra).

    Raises:
        DedupError: if the checkpoint was written with other ``RESUME_KEYS`` settings.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    differ = {k: (v, getattr(options, k)) for k, v in state["options"].items() if v != getattr(options, k)}
    if differ:
        raise DedupError(
            f"{path} was written with other settings {differ} (checkpoint, now); "
            "resume with the same settings or use another train.checkpoint_dir"
        )
    with torch.no_grad():
        for name, param in trainable_parameters(model).items():
            param.copy_(state["trainable"][name])
    optimizer.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return int(state["step"]), dict(state["extra"])


def step_of(path: Path) -> int:
    """The step number of a checkpoint file name."""
    return int(path.name[len(CHECKPOINT_PREFIX) : -len(CHECKPOINT_SUFFIX)])
