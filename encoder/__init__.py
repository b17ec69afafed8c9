"""Listing encoder: title + image -> unit vectors m (fused), t (text), i (image) in one space.

Pure PyTorch. No Spark, no IO: callers pass titles and raw image bytes.

Example:
    >>> from encoder import EncoderConfig, build_encoder
    >>> enc = build_encoder(EncoderConfig(device="cpu"))
    >>> out = enc.encode(["apple iphone 12 64gb black"], [None])
    >>> out.m.shape
    (1, 1664)
"""

from encoder.config import ENCODER_KINDS, EncoderConfig
from encoder.image import IMAGE_ERRORS, decode_image
from encoder.model import (
    EncodedListings,
    ListingEncoder,
    ZeroShotEncoder,
    build_encoder,
    resolve_device,
)

__all__ = [
    "ENCODER_KINDS",
    "IMAGE_ERRORS",
    "EncodedListings",
    "EncoderConfig",
    "ListingEncoder",
    "ZeroShotEncoder",
    "build_encoder",
    "decode_image",
    "resolve_device",
]
