"""The hybrid encoder: a neural encoder's vectors joined with the title's lexical vector.

``build_encoder`` returns a ``HybridEncoder`` when ``EncoderConfig.lexical_weight`` is above 0.
It wraps the encoder of ``config.kind`` (zero-shot or sspr) and appends the hashed character
n-gram TF-IDF vector of the title (``encoder.lexical``), weighted so that::

    cos(m_a, m_b) = (1 - w) * cos(neural m_a, neural m_b) + w * cos(h_a, h_b)

for two listings with titles (the same for ``t``). ``i``, and ``m`` of a listing without a
title, are the neural vector followed by zeros. ``dim`` is the neural width plus
``lexical_buckets``. Everything downstream (faiss range search, output checks, grouping) sees
ordinary unit vectors of one space; the hybrid needs no other code path.

``model_version`` hashes the neural encoder's version, the lexical scheme, the weight, the bucket
count and the IDF file's bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from encoder.base import EncodedListings, ListingEncoder, version_from_settings
from encoder.config import EncoderConfig
from encoder.lexical import LEXICAL_SCHEME, LexicalVectorizer, combine


def hybrid_version(config: EncoderConfig, base_version: str, idf_digest: str) -> str:
    """The ``model_version`` of a hybrid encoder.

    Args:
        config: the encoder config (``lexical_weight`` > 0).
        base_version: the wrapped neural encoder's ``model_version``.
        idf_digest: ``LexicalVectorizer.idf_digest``.

    Returns:
        16 hex digits (``version_from_settings``) over the neural version, the lexical scheme,
        the weight, the bucket count and the IDF digest.
    """
    return version_from_settings(
        {
            "hybrid": base_version,
            "lexical_scheme": LEXICAL_SCHEME,
            "lexical_weight": float(config.lexical_weight),
            "lexical_buckets": int(config.lexical_buckets),
            "lexical_idf": idf_digest,
        }
    )


class HybridEncoder:
    """``ListingEncoder`` that joins a neural encoder's vectors with lexical title vectors.

    Args:
        base: the neural encoder (built from the same config).
        config: the encoder config; ``lexical_weight`` > 0.

    Raises:
        ValueError: if the IDF file cannot be used (see ``LexicalVectorizer``).
    """

    def __init__(self, base: ListingEncoder, config: EncoderConfig) -> None:
        self.base = base
        self.config = config
        self.lexical = LexicalVectorizer(config.lexical_buckets, config.lexical_idf)
        self._model_version: str | None = None

    @property
    def dim(self) -> int:
        """The neural width plus ``lexical_buckets``."""
        return self.base.dim + self.lexical.buckets

    @property
    def model_version(self) -> str:
        """16 hex digits over the neural version and the lexical settings (``hybrid_version``)."""
        if self._model_version is None:
            self._model_version = hybrid_version(self.config, self.base.model_version, self.lexical.idf_digest)
        return self._model_version

    def join(self, base: EncodedListings, titles: Sequence[str | None]) -> EncodedListings:
        """Joins neural vectors made by ``self.base`` with the titles' lexical vectors.

        The evaluation uses this to reuse cached neural vectors; ``encode`` uses it too.

        Args:
            base: the neural encoder's output for ``titles``.
            titles: the same titles, row-aligned.

        Returns:
            The hybrid vectors (float32 [n, dim]), with ``base``'s flags and image errors.
        """
        lexical = self.lexical.transform(titles, base.has_text)
        joined = join_lexical(base, lexical, float(self.config.lexical_weight))
        return replace(joined, model_version=self.model_version)

    def encode(self, titles: Sequence[str | None], images: Sequence[bytes | None]) -> EncodedListings:
        """Encodes listings like the neural encoder, then appends the lexical part.

        Args:
            titles: one title (or None) per listing.
            images: one raw image file (or None) per listing.

        Returns:
            float32 [n, dim] m / t / i vectors, flags and image errors (``EncodedListings``).

        Raises:
            ValueError: as the neural encoder's ``encode``.
        """
        return self.join(self.base.encode(titles, images), titles)


def join_lexical(base: EncodedListings, lexical: np.ndarray, weight: float) -> EncodedListings:
    """The hybrid of neural vectors and lexical title vectors (the module docstring's formula).

    The pairs stage uses it on stored neural vectors (``schemas.vectors``) with lexical vectors
    computed from the catalogue's titles; ``HybridEncoder.join`` on an encoder's output.

    Args:
        base: neural vectors and flags (``model_version`` is kept).
        lexical: float32 [n, buckets] ``LexicalVectorizer.transform`` of the titles with
            ``base.has_text``.
        weight: the lexical weight ``w`` in [0, 1).

    Returns:
        float32 [n, d + buckets] m / t / i; ``i`` gets zeros (it carries no text).
    """
    no_text = np.zeros_like(lexical)
    return EncodedListings(
        m=combine(base.m, lexical, weight),
        t=combine(base.t, lexical, weight),
        i=combine(base.i, no_text, weight),
        has_text=base.has_text,
        has_image=base.has_image,
        image_error=base.image_error,
        model_version=base.model_version,
    )
