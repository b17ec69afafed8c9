"""Builds encoders: the one constructor jobs use, and the version an encoder would report.

``build_encoder(config)`` makes the kind ``config.kind`` names (``encoder.zero_shot``,
``encoder.sspr``) and wraps it in ``encoder.hybrid.HybridEncoder`` when
``config.lexical_weight`` > 0. ``compute_model_version(config)`` gives the same ``model_version``
without building the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from encoder.base import ListingEncoder, version_from_settings
from encoder.config import EncoderConfig
from encoder.hybrid import HybridEncoder, hybrid_version
from encoder.lexical import LexicalVectorizer
from encoder.sspr import SsprEncoder, version_settings
from encoder.zero_shot import ZeroShotEncoder, zero_shot_settings

_ENCODERS: dict[str, Callable[..., ListingEncoder]] = {
    "zero-shot": ZeroShotEncoder,
    "sspr": SsprEncoder,
}
_SETTINGS: dict[str, Callable[[EncoderConfig], dict[str, object]]] = {
    "zero-shot": zero_shot_settings,
    "sspr": version_settings,
}


def build_encoder(config: EncoderConfig, gpu_addresses: Sequence[str] = ()) -> ListingEncoder:
    """Builds the encoder that ``config.kind`` names. This is the only constructor jobs use.

    Args:
        config: the encoder settings.
        gpu_addresses: the Spark task's GPU addresses, from
            ``TaskContext.get().resources()["gpu"].addresses``; empty outside Spark.

    Returns:
        A ready encoder in eval mode (``ZeroShotEncoder`` for ``kind="zero-shot"``,
        ``encoder.sspr.SsprEncoder`` for ``kind="sspr"``), wrapped in
        ``encoder.hybrid.HybridEncoder`` when ``config.lexical_weight`` > 0.

    Raises:
        ValueError: for an unknown kind (the message lists the known ones) or an unusable
            device.
    """
    factory = _ENCODERS.get(config.kind)
    if factory is None:
        raise ValueError(f"unknown encoder kind {config.kind!r}; known kinds: {sorted(_ENCODERS)}")
    encoder = factory(config, gpu_addresses)
    if config.lexical_weight > 0:
        encoder = HybridEncoder(encoder, config)
    return encoder


def compute_model_version(config: EncoderConfig) -> str:
    """Returns the model version that an encoder built from ``config`` reports.

    Args:
        config: the encoder config. Only the fields that change the vectors are used.

    Returns:
        16 hex digits of a sha256 over weights, kind and preprocessing settings.
    """
    base = version_from_settings(_SETTINGS[config.kind](config))
    if config.lexical_weight > 0:
        digest = LexicalVectorizer(config.lexical_buckets, config.lexical_idf).idf_digest
        return hybrid_version(config, base, digest)
    return base
