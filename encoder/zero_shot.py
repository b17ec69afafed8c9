"""The zero-shot encoder: pretrained MiniLM and EfficientNet-lite0 joined by weighted concatenation.

``kind="zero-shot"`` joins two pretrained towers and is not trained on listings.

* Text: all-MiniLM-L6-v2, mean-pooled, L2-normalised, 384-d (``encoder.text``).
* Image: EfficientNet-lite0, global-average-pooled, L2-normalised, 1280-d (``encoder.image``).

Fusion (zero-shot)
------------------
The joint space is the concatenation ``[text 384 | image 1280]``, so ``dim = 1664``. With
``t_text`` and ``i_img`` the unit tower outputs and ``w_t`` / ``w_i`` the config weights:

* ``t = [t_text ; 0]`` for a listing with a title, else all zeros;
* ``i = [0 ; i_img]`` for a listing with a decodable image, else all zeros;
* ``m = normalise([w_t * t_text ; w_i * i_img])``, using only the parts the listing has.
  A listing without an image has ``m == t``, and one without a title has ``m == i``.

For two listings that both have a title and an image::

    cos(m_a, m_b) = (w_t^2 * cos_t + w_i^2 * cos_i) / (w_t^2 + w_i^2)

With the default weights (1, 1) this is the mean of the text and the image cosine similarity.
A listing with both parts and one with text only get
``cos(m_a, m_b) = w_t * cos_t / sqrt(w_t^2 + w_i^2)``. That is about ``0.71 * cos_t`` with
default weights, so listings missing a modality score lower on m. The concatenation works
because the text and image parts are orthogonal subspaces.

Cross-modal similarity is meaningless in this version. The two towers were trained separately,
so their spaces are not aligned. The concatenation makes ``t . i = 0`` for every pair, so text
never matches image here. Only the later, jointly trained model can compare a title with an
image.

Model version
-------------
``model_version`` is 16 hex digits of a sha256 over:

* the bytes of every file of both weight packages (hashed once per process);
* the encoder kind;
* the preprocessing settings: text_max_tokens, image_size, the fusion weights, the pooling, the
  image preprocessing and the fusion rule.

Vectors with the same ``model_version`` are comparable. batch_size, device, num_threads and
decode_threads are
left out: they do not change the vectors beyond float noise. max_image_pixels is left out too:
it decides which images are used, not how they are encoded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from encoder.base import (
    EncodedListings,
    check_not_empty,
    check_row_aligned,
    clean_titles,
    given_image_rows,
    resolve_device,
    version_from_settings,
)
from encoder.config import IMAGE_DIM, KIND_DIMS, TEXT_DIM, EncoderConfig
from encoder.image import IMAGE_PREPROCESSING, ImageTower, decode_images
from encoder.text import TEXT_POOLING, TextTower

logger = logging.getLogger(__name__)

# Bump when code changes alter the vectors without changing a config field or a weight file.
_ENCODER_REVISION = "zero-shot/1"
_IMAGE_POOLING = "global-average+l2"
_FUSION = "concat[text|image],weighted,l2;t=[t;0];i=[0;i]"


def zero_shot_settings(config: EncoderConfig) -> dict[str, object]:
    """The settings of a zero-shot encoder that change its vectors (see the module docstring)."""
    return {
        "revision": _ENCODER_REVISION,
        "kind": config.kind,
        "text_max_tokens": int(config.text_max_tokens),
        "image_size": int(config.image_size),
        "text_weight": float(config.text_weight),
        "image_weight": float(config.image_weight),
        "text_pooling": TEXT_POOLING,
        "image_pooling": _IMAGE_POOLING,
        "image_preprocessing": IMAGE_PREPROCESSING,
        "fusion": _FUSION,
    }


class ZeroShotEncoder:
    """Pretrained MiniLM + EfficientNet-lite0 fused by weighted concatenation.

    See the module docstring for the fusion rule and its limits. Build it with
    ``build_encoder``.

    Args:
        config: the encoder settings; ``config.kind`` must be ``"zero-shot"``.
        gpu_addresses: the Spark task's GPU addresses (see ``resolve_device``).

    Raises:
        ValueError: if ``config.kind`` is not ``"zero-shot"`` or the device cannot be used.
    """

    kind = "zero-shot"

    def __init__(self, config: EncoderConfig, gpu_addresses: Sequence[str] = ()) -> None:
        if config.kind != self.kind:
            raise ValueError(f"ZeroShotEncoder needs config.kind='zero-shot', got {config.kind!r}")
        self.config = config
        self.device = resolve_device(config.device, gpu_addresses)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)  # process-wide setting
        started = time.perf_counter()
        self.text_tower = TextTower(config.text_max_tokens, self.device, config.batch_size)
        self.image_tower = ImageTower(config.image_size, self.device, config.batch_size)
        self._model_version: str | None = None
        logger.info(
            "built zero-shot encoder on %s (dim %d, batch %d) in %.1fs",
            self.device,
            self.dim,
            config.batch_size,
            time.perf_counter() - started,
        )

    @property
    def dim(self) -> int:
        """Width of m / t / i: 384 (text) + 1280 (image) = 1664."""
        return KIND_DIMS[self.kind]

    @property
    def model_version(self) -> str:
        """16 hex digits over weight bytes, kind and preprocessing settings."""
        if self._model_version is None:
            self._model_version = version_from_settings(zero_shot_settings(self.config))
        return self._model_version

    def encode(self, titles: Sequence[str | None], images: Sequence[bytes | None]) -> EncodedListings:
        """Encodes listings given as row-aligned titles and raw image bytes.

        Titles are stripped; None, "" and whitespace-only titles count as no text. An image
        that fails to decode counts as no image, and its reason goes to ``image_error``.

        Args:
            titles: one title (or None) per listing.
            images: one raw image file (or None) per listing, same length as ``titles``.

        Returns:
            The m / t / i vectors, flags and image errors, row-aligned with the input.

        Raises:
            ValueError: if the lengths differ, an element has the wrong type, or a listing has
                neither a title nor a decodable image (its row index is named; upstream
                validation should have quarantined it).
        """
        n = check_row_aligned(titles, images)
        text_rows, texts = clean_titles(titles)
        image_rows, image_vectors, image_error = self._encode_images(images)

        has_text = np.zeros(n, dtype=bool)  # [n]
        has_text[text_rows] = True
        has_image = np.zeros(n, dtype=bool)  # [n]
        has_image[image_rows] = True
        check_not_empty(has_text, has_image, image_error)

        text_vectors = self.text_tower.encode_texts(texts).numpy()  # [n_text, 384]

        t = np.zeros((n, self.dim), dtype=np.float32)  # [n, dim]
        t[text_rows, :TEXT_DIM] = text_vectors
        i = np.zeros((n, self.dim), dtype=np.float32)  # [n, dim]
        i[image_rows, TEXT_DIM:] = image_vectors
        m = self._fuse(t, i)  # [n, dim]
        logger.debug(
            "encoded %d listings: %d with text, %d with image, %d image errors",
            n,
            len(text_rows),
            len(image_rows),
            sum(e is not None for e in image_error),
        )
        return EncodedListings(
            m=m,
            t=t,
            i=i,
            has_text=has_text,
            has_image=has_image,
            image_error=image_error,
            model_version=self.model_version,
        )

    def _encode_images(self, images: Sequence[bytes | None]) -> tuple[list[int], np.ndarray, list[str | None]]:
        """Decodes and encodes images chunk by chunk, so decoded pixels never pile up.

        Returns:
            (row indices with a usable image, float32 [n_image, 1280] vectors, error per row).
        """
        errors: list[str | None] = [None] * len(images)
        given = given_image_rows(images)
        rows: list[int] = []
        vectors: list[np.ndarray] = []
        chunk_size = self.config.batch_size
        for start in range(0, len(given), chunk_size):
            pixels: list[torch.Tensor] = []
            chunk = given[start : start + chunk_size]
            decoded = decode_images(
                [images[k] for k in chunk],
                self.config.image_size,
                self.config.max_image_pixels,
                self.config.decode_threads,
            )
            for k, (tensor, reason) in zip(chunk, decoded, strict=True):
                if tensor is None:
                    errors[k] = reason
                else:
                    rows.append(k)
                    pixels.append(tensor)
            if pixels:
                vectors.append(self.image_tower.encode_images(pixels).numpy())  # [b, 1280]
        stacked = np.concatenate(vectors) if vectors else np.zeros((0, IMAGE_DIM), dtype=np.float32)
        return rows, stacked, errors

    def _fuse(self, t: np.ndarray, i: np.ndarray) -> np.ndarray:
        """m = normalise(w_t * t + w_i * i); t and i live in disjoint coordinates."""
        m = self.config.text_weight * t + self.config.image_weight * i  # [n, dim]
        norms = np.linalg.norm(m, axis=1, keepdims=True)  # [n, 1]
        return (m / np.maximum(norms, 1e-12)).astype(np.float32)
