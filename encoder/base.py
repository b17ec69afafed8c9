"""What every encoder kind shares: the output type, the interface, input checks, device and version.

* ``EncodedListings``: the m / t / i vectors of a batch and what each row had.
* ``ListingEncoder``: the interface jobs rely on (``dim``, ``model_version``, ``encode``).
* ``check_row_aligned``, ``clean_titles``, ``given_image_rows``, ``check_not_empty``: input checks.
* ``resolve_device``: the configured device and Spark's GPU assignment -> a torch device.
* ``version_from_settings``: the ``model_version`` hash, always covering the base weight packages.

One module per kind builds on this (``zero_shot``, ``sspr``, ``hybrid``); ``encoder.factory``
builds them. Nothing here imports a kind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from encoder.config import EncoderConfig
from encoder.image import efficientnet_weights_path
from encoder.text import minilm_model_dir

logger = logging.getLogger(__name__)

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

    def encode(self, titles: Sequence[str | None], images: Sequence[bytes | None]) -> EncodedListings:
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
        raise ValueError(f"device={config_device!r} is invalid; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
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


@functools.cache
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
            "text:" + _files_digest(str(minilm_model_dir())) + ";image:" + _files_digest(efficientnet_weights_path())
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
    blob = json.dumps({**settings, "weights": weights_digest()}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
        raise ValueError(f"got {n} titles but {len(images)} images; pass one entry (or None) per listing")
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
            raise ValueError(f"image at row {k} is {type(data).__name__}, expected bytes or None; pass raw file bytes")
        given.append(k)
    return given


def check_not_empty(has_text: np.ndarray, has_image: np.ndarray, image_error: Sequence[str | None]) -> None:
    """Raises ValueError naming the rows that have neither a title nor a usable image."""
    empty = np.flatnonzero(~has_text & ~has_image)
    if empty.size:
        details = ", ".join(
            f"row {k} ({'image ' + image_error[k] if image_error[k] else 'no image'})" for k in empty[:10]
        )
        more = f" and {empty.size - 10} more" if empty.size > 10 else ""
        raise ValueError(
            f"{empty.size} listing(s) have neither a title nor a usable image: "
            f"{details}{more}; quarantine such rows in validation before encoding"
        )
