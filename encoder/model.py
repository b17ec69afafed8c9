"""The listing encoder: title + image -> three unit vectors (m, t, i) in one space.

Jobs build an encoder only through ``build_encoder(config)`` and use only the
``ListingEncoder`` interface:

* ``dim``
* ``model_version``
* ``encode(titles, images) -> EncodedListings``

The default kind is zero-shot (``kind="zero-shot"``): it joins two pretrained towers and is not
trained on listings.

* Text: all-MiniLM-L6-v2, mean-pooled, L2-normalised, 384-d (``encoder.text``).
* Image: EfficientNet-lite0, global-average-pooled, L2-normalised, 1280-d (``encoder.image``).

``kind="sspr"`` is the eSSPR single-stream transformer behind the same interface; it lives in
``encoder.sspr`` (its own docstring describes it) and is registered here. Both kinds share the
input checks (``clean_titles``, ``given_image_rows``, ``check_not_empty``) and the version hash
(``version_from_settings``).

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

Vectors with the same ``model_version`` are comparable. batch_size, device and num_threads are
left out: they do not change the vectors beyond float noise. max_image_pixels is left out too:
it decides which images are used, not how they are encoded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from encoder.config import EncoderConfig
from encoder.image import (
    IMAGE_DIM,
    IMAGE_PREPROCESSING,
    ImageTower,
    decode_image,
    efficientnet_weights_path,
)
from encoder.text import TEXT_DIM, TEXT_POOLING, TextTower, minilm_model_dir

logger = logging.getLogger(__name__)

# Bump when code changes alter the vectors without changing a config field or a weight file.
_ENCODER_REVISION = "zero-shot/1"
_IMAGE_POOLING = "global-average+l2"
_FUSION = "concat[text|image],weighted,l2;t=[t;0];i=[0;i]"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class EncodedListings:
    """The vectors of a batch of listings, row-aligned with the encoder's input.

    Attributes:
        m: float32 [n, dim], the fused image+text vector; unit norm in every row.
        t: float32 [n, dim], the text-only vector; unit norm where ``has_text``, else zeros.
        i: float32 [n, dim], the image-only vector; unit norm where ``has_image``, else zeros.
        has_text: bool [n], the title was non-empty after stripping.
        has_image: bool [n], image bytes were given and decoded.
        image_error: per row, the reason (see ``encoder.image.IMAGE_ERRORS``) when image bytes
            were given but could not be decoded, else None.
        model_version: the ``model_version`` of the encoder that made these vectors.
    """

    m: np.ndarray  # float32 [n, dim], unit norm always
    t: np.ndarray  # float32 [n, dim], unit norm where has_text else all zeros
    i: np.ndarray  # float32 [n, dim], unit norm where has_image else all zeros
    has_text: np.ndarray  # bool [n]
    has_image: np.ndarray  # bool [n]  (False when no image given OR it failed to decode)
    image_error: list[str | None]  # reason when image bytes were given but could not be decoded
    model_version: str


@runtime_checkable
class ListingEncoder(Protocol):
    """What jobs may rely on, whatever the encoder kind."""

    config: EncoderConfig

    @property
    def dim(self) -> int:
        """Width of the m / t / i vectors."""
        ...

    @property
    def model_version(self) -> str:
        """16 hex digits; equal versions mean comparable vectors."""
        ...

    def encode(
        self, titles: Sequence[str | None], images: Sequence[bytes | None]
    ) -> EncodedListings:
        """Encodes row-aligned titles and image bytes."""
        ...


def resolve_device(config_device: str, gpu_addresses: Sequence[str] = ()) -> torch.device:
    """Turns the configured device and Spark's GPU assignment into a torch device.

    Rules:

    * ``"cpu"`` gives the CPU.
    * ``"auto"`` gives the task's first GPU when Spark assigned GPUs and CUDA is available, else
      ``cuda`` when CUDA is available, else the CPU.
    * ``"cuda"`` requires CUDA. It picks the task's first GPU if Spark gave one.
    * ``"cuda:N"`` requires CUDA and GPU N.

    A Spark GPU address is a physical GPU index. If ``CUDA_VISIBLE_DEVICES`` is set and lists
    the address, the address is mapped to its position in that list.

    Args:
        config_device: ``EncoderConfig.device``.
        gpu_addresses: ``TaskContext.get().resources()["gpu"].addresses`` in a Spark task;
            empty outside Spark or without GPU scheduling.

    Returns:
        The torch device to run on.

    Raises:
        ValueError: for an unknown device string, a CUDA device without CUDA, or a GPU index
            that this process cannot see.
    """
    if config_device == "cpu":
        return torch.device("cpu")
    if config_device not in ("auto", "cuda") and not (
        isinstance(config_device, str) and config_device.startswith("cuda:")
    ):
        raise ValueError(
            f"device={config_device!r} is invalid; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    cuda = torch.cuda.is_available()
    if config_device == "auto":
        if not cuda:
            return torch.device("cpu")
        if gpu_addresses:
            return _device_for_address(str(gpu_addresses[0]))
        return torch.device("cuda")
    if not cuda:
        raise ValueError(
            f"device={config_device!r} but CUDA is not available in this process; set "
            "encoder.device='cpu' (or 'auto' to use a GPU only where there is one)"
        )
    if config_device == "cuda":
        if gpu_addresses:
            return _device_for_address(str(gpu_addresses[0]))
        return torch.device("cuda")
    index_text = config_device.partition(":")[2]
    if not index_text.isdigit():
        raise ValueError(f"device={config_device!r} is invalid; use 'cuda:N' with N a GPU index")
    index = int(index_text)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"device={config_device!r} but this process sees {count} GPU(s); use an index below "
            f"{count}, or device='auto' / 'cuda' to follow Spark's assignment"
        )
    return torch.device("cuda", index)


def _device_for_address(address: str) -> torch.device:
    """Maps a Spark GPU address (a physical index) to a visible CUDA device."""
    address = address.strip()
    visible_env = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    visible = [v.strip() for v in visible_env.split(",") if v.strip()]
    if address in visible:
        index = visible.index(address)
    elif address.isdigit():
        index = int(address)
    else:
        raise ValueError(
            f"Spark GPU address {address!r} is not an integer index; fix the GPU discovery "
            "script or set encoder.device='cuda:N'"
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"Spark assigned GPU {address!r} but this process sees {count} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); make the "
            "discovery script report indices as seen by the executor, or set encoder.device"
        )
    return torch.device("cuda", index)


@functools.lru_cache(maxsize=None)
def _files_digest(root: str) -> str:
    """Returns a sha256 over every file under ``root`` (a file or a folder) and its relative name.

    Cached per process, since the weight files do not change while a job runs.
    """
    base = Path(root)
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no weight files under {root}; reinstall the weight package")
    digest = hashlib.sha256()
    for path in files:
        name = path.name if path == base else path.relative_to(base).as_posix()
        digest.update(name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def weights_digest() -> str:
    """Returns a sha256 over the files of both weight packages (MiniLM folder, EfficientNet file).

    Returns:
        64 hex digits, computed once per process.
    """
    return hashlib.sha256(
        (
            "text:" + _files_digest(str(minilm_model_dir()))
            + ";image:" + _files_digest(efficientnet_weights_path())
        ).encode()
    ).hexdigest()


def version_from_settings(settings: Mapping[str, object]) -> str:
    """Returns the model version for an encoder's vector-changing settings.

    Both encoder kinds hash through here, so a version always covers the base weight packages
    (``weights_digest``) plus whatever the kind adds (its revision, preprocessing settings and,
    for ``"sspr"``, the trained weights).

    Args:
        settings: JSON-serialisable values that change the vectors; must not use the key
            ``"weights"``, which is filled with ``weights_digest()`` here.

    Returns:
        16 hex digits of a sha256 over the settings (sorted-key JSON) and the base weights.
    """
    assert "weights" not in settings, "the 'weights' key is reserved for weights_digest()"
    blob = json.dumps(
        {**settings, "weights": weights_digest()}, sort_keys=True, separators=(",", ":")
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def compute_model_version(config: EncoderConfig) -> str:
    """Returns the model version that an encoder built from ``config`` reports.

    Args:
        config: the encoder config. Only the fields that change the vectors are used.

    Returns:
        16 hex digits of a sha256 over weights, kind and preprocessing settings.
    """
    if config.kind == "sspr":
        from encoder.sspr import version_settings  # lazy: encoder.sspr imports this module

        base = version_from_settings(version_settings(config))
    else:
        base = version_from_settings(_zero_shot_settings(config))
    if config.lexical_weight > 0:
        from encoder.hybrid import hybrid_version
        from encoder.lexical import LexicalVectorizer

        digest = LexicalVectorizer(config.lexical_buckets, config.lexical_idf).idf_digest
        return hybrid_version(config, base, digest)
    return base


def _zero_shot_settings(config: EncoderConfig) -> dict[str, object]:
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


def check_row_aligned(titles: Sequence[object], images: Sequence[object]) -> int:
    """Checks that titles and images are row-aligned.

    Args:
        titles: one entry per listing.
        images: one entry (image bytes, pixels or None) per listing.

    Returns:
        The number of listings.

    Raises:
        ValueError: if the lengths differ.
    """
    n = len(titles)
    if len(images) != n:
        raise ValueError(
            f"got {n} titles but {len(images)} images; pass one entry (or None) per listing"
        )
    return n


def clean_titles(titles: Sequence[str | None]) -> tuple[list[int], list[str]]:
    """Strips titles and keeps the non-empty ones.

    Args:
        titles: one title (or None) per listing.

    Returns:
        (row indices with text, their stripped titles).

    Raises:
        ValueError: if a title is neither a str nor None (its row is named).
    """
    rows: list[int] = []
    texts: list[str] = []
    for k, title in enumerate(titles):
        if title is None:
            continue
        if not isinstance(title, str):
            raise ValueError(
                f"title at row {k} is {type(title).__name__}, expected str or None; "
                "convert missing values (e.g. NaN) to None"
            )
        stripped = title.strip()
        if stripped:
            rows.append(k)
            texts.append(stripped)
    return rows, texts


def given_image_rows(images: Sequence[bytes | None]) -> list[int]:
    """Returns the rows that carry image bytes (undecoded).

    Raises:
        ValueError: if an image is neither bytes-like nor None (its row is named).
    """
    given: list[int] = []
    for k, data in enumerate(images):
        if data is None:
            continue
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(
                f"image at row {k} is {type(data).__name__}, expected bytes or None; "
                "pass raw file bytes"
            )
        given.append(k)
    return given


def check_not_empty(
    has_text: np.ndarray, has_image: np.ndarray, image_error: Sequence[str | None]
) -> None:
    """Raises ValueError naming the rows that have neither a title nor a usable image."""
    empty = np.flatnonzero(~has_text & ~has_image)
    if empty.size:
        details = ", ".join(
            f"row {k} ({'image ' + image_error[k] if image_error[k] else 'no image'})"
            for k in empty[:10]
        )
        more = f" and {empty.size - 10} more" if empty.size > 10 else ""
        raise ValueError(
            f"{empty.size} listing(s) have neither a title nor a usable image: "
            f"{details}{more}; quarantine such rows in validation before encoding"
        )


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
        return TEXT_DIM + IMAGE_DIM

    @property
    def model_version(self) -> str:
        """16 hex digits over weight bytes, kind and preprocessing settings."""
        if self._model_version is None:
            self._model_version = version_from_settings(_zero_shot_settings(self.config))
        return self._model_version

    def encode(
        self, titles: Sequence[str | None], images: Sequence[bytes | None]
    ) -> EncodedListings:
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

    def _encode_images(
        self, images: Sequence[bytes | None]
    ) -> tuple[list[int], np.ndarray, list[str | None]]:
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
            for k in given[start : start + chunk_size]:
                tensor, reason = decode_image(
                    images[k], self.config.image_size, self.config.max_image_pixels
                )
                if tensor is None:
                    errors[k] = reason
                else:
                    rows.append(k)
                    pixels.append(tensor)
            if pixels:
                vectors.append(self.image_tower.encode_images(pixels).numpy())  # [b, 1280]
        stacked = (
            np.concatenate(vectors) if vectors else np.zeros((0, IMAGE_DIM), dtype=np.float32)
        )
        return rows, stacked, errors

    def _fuse(self, t: np.ndarray, i: np.ndarray) -> np.ndarray:
        """m = normalise(w_t * t + w_i * i); t and i live in disjoint coordinates."""
        m = self.config.text_weight * t + self.config.image_weight * i  # [n, dim]
        norms = np.linalg.norm(m, axis=1, keepdims=True)  # [n, 1]
        return (m / np.maximum(norms, 1e-12)).astype(np.float32)


def _build_sspr(config: EncoderConfig, gpu_addresses: Sequence[str] = ()) -> ListingEncoder:
    """Builds the eSSPR single-stream encoder (imported here: encoder.sspr imports this module)."""
    from encoder.sspr import SsprEncoder

    return SsprEncoder(config, gpu_addresses)


_ENCODERS: dict[str, Callable[..., ListingEncoder]] = {
    "zero-shot": ZeroShotEncoder,
    "sspr": _build_sspr,
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
        from encoder.hybrid import HybridEncoder  # lazy: encoder.hybrid imports this module

        encoder = HybridEncoder(encoder, config)
    return encoder
