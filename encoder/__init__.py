"""Listing encoder: title + image -> unit vectors m (fused), t (text), i (image) in one space.

Pure PyTorch. No Spark, no IO: callers pass titles and raw image bytes.

The config is imported eagerly (it is plain dataclasses); everything that needs torch is imported
on first use, so reading a pipeline config does not pay for a torch import.

Example:
    >>> from encoder import EncoderConfig, build_encoder
    >>> enc = build_encoder(EncoderConfig(device="cpu"))
    >>> out = enc.encode(["apple iphone 12 64gb black"], [None])
    >>> out.m.shape
    (1, 1664)
"""

import importlib

from encoder.config import ENCODER_KINDS, KIND_DIMS, EncoderConfig, LossConfig, vector_dim

_LAZY = {
    "IMAGE_ERRORS": "encoder.image",
    "decode_image": "encoder.image",
    "EncodedListings": "encoder.base",
    "ListingEncoder": "encoder.base",
    "resolve_device": "encoder.base",
    "ZeroShotEncoder": "encoder.zero_shot",
    "HybridEncoder": "encoder.hybrid",
    "build_encoder": "encoder.factory",
    "compute_model_version": "encoder.factory",
    "SsprBatch": "encoder.sspr",
    "SsprEncoder": "encoder.sspr",
    "SsprOutput": "encoder.sspr",
    "load_trainable": "encoder.sspr",
    "save_trainable": "encoder.sspr",
    "trainable_parameters": "encoder.sspr",
    "locality_consistency": "encoder.loss",
    "ppm_hinge": "encoder.loss",
    "self_distinctiveness": "encoder.loss",
    "total_loss": "encoder.loss",
}

__all__ = ["ENCODER_KINDS", "KIND_DIMS", "EncoderConfig", "LossConfig", "vector_dim", *_LAZY]  # noqa: PLE0604


def __getattr__(name: str):
    """Imports the torch-backed parts of the package on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'encoder' has no attribute {name!r}")
