"""decode_image on bad and unusual inputs, and the EfficientNet-lite0 tower's shapes.

Every input file is generated with PIL (or by hand for crafted headers), so these tests need no
data set.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from encoder.image import IMAGE_DIM, IMAGE_ERRORS, ImageTower, decode_image

SIZE = 64  # small output size keeps these tests fast; the tower tests use 224


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is a few bytes (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _rgb_jpeg(width: int = 300, height: int = 200, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    rng = np.random.default_rng(0)
    noise = rng.integers(-20, 20, (height, width, 3))
    arr = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
    return _save(Image.fromarray(arr, "RGB"), "JPEG", quality=90)


def _assert_ok(result: tuple[torch.Tensor | None, str | None], size: int = SIZE) -> torch.Tensor:
    tensor, reason = result
    assert reason is None, f"expected a decoded image, got reason {reason!r}"
    assert tensor is not None
    assert tensor.shape == (3, size, size)
    assert tensor.dtype == torch.float32
    assert float(tensor.min()) >= -1.0 and float(tensor.max()) <= 1.0
    return tensor


def _assert_rejected(result: tuple[torch.Tensor | None, str | None], reason: str) -> None:
    tensor, got = result
    assert tensor is None
    assert got == reason
    assert got in IMAGE_ERRORS


def _pixel(tensor: torch.Tensor, y: int, x: int) -> np.ndarray:
    """Returns the 0..255 RGB value of one output pixel."""
    return ((tensor[:, y, x].numpy() + 1.0) * 127.5).round()


# --- genuinely broken input -> (None, reason), never an exception ---


def test_zero_bytes_is_empty_bytes() -> None:
    _assert_rejected(decode_image(b"", SIZE), "empty_bytes")


def test_corrupt_bytes_are_undecodable() -> None:
    _assert_rejected(decode_image(b"this is not an image" * 20, SIZE), "undecodable")
    _assert_rejected(decode_image(b"\xff\xd8\xff" + b"\x00" * 500, SIZE), "undecodable")


def test_truncated_jpeg_is_truncated() -> None:
    data = _rgb_jpeg()
    _assert_rejected(decode_image(data[: len(data) // 2], SIZE), "truncated")


def test_truncated_png_is_truncated() -> None:
    data = _save(Image.new("RGB", (300, 200), (1, 2, 3)), "PNG")
    _assert_rejected(decode_image(data[: len(data) // 2], SIZE), "truncated")


def test_huge_dimensions_are_image_too_large_without_decoding() -> None:
    # 20000 x 20000 = 400 MP: beyond PIL's own DecompressionBombError limit.
    _assert_rejected(decode_image(_png_header_only(20_000, 20_000), SIZE), "image_too_large")
    # 8000 x 6000 = 48 MP: below PIL's limit, above our default 40 MP.
    _assert_rejected(decode_image(_png_header_only(8_000, 6_000), SIZE), "image_too_large")


def test_pil_bomb_warning_as_error_is_image_too_large() -> None:
    # 10000 x 10000 = 100 MP: PIL warns (above ~89 MP); with warnings as errors it raises.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        result = decode_image(_png_header_only(10_000, 10_000), SIZE, max_pixels=200_000_000)
    _assert_rejected(result, "image_too_large")


def test_max_pixels_parameter_sets_the_limit() -> None:
    data = _save(Image.new("RGB", (100, 100), (9, 9, 9)), "PNG")
    _assert_rejected(decode_image(data, SIZE, max_pixels=9_999), "image_too_large")
    _assert_ok(decode_image(data, SIZE, max_pixels=10_000))


def test_mutated_files_never_raise() -> None:
    rng = random.Random(1234)
    originals = [
        _rgb_jpeg(120, 90),
        _save(Image.new("RGBA", (80, 60), (10, 200, 30, 128)), "PNG"),
        _save(Image.new("P", (40, 40), 3), "GIF"),
    ]
    outcomes = set()
    for trial in range(90):
        data = bytearray(originals[trial % len(originals)])
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if trial % 4 == 0:
            data = data[: rng.randrange(1, len(data))]
        tensor, reason = decode_image(bytes(data), SIZE)
        assert (tensor is None) != (reason is None)
        if reason is not None:
            assert reason in IMAGE_ERRORS
        else:
            _assert_ok((tensor, reason))
        outcomes.add(reason)
    assert len(outcomes) > 1, "the mutations should break at least some files"


# --- odd but valid input -> RGB ---


def test_rgb_jpeg_keeps_its_colour_and_is_resized() -> None:
    tensor = _assert_ok(decode_image(_rgb_jpeg(color=(200, 30, 30)), SIZE))
    mean = ((tensor.mean(dim=(1, 2)).numpy() + 1.0) * 127.5).round()
    np.testing.assert_allclose(mean, [200, 30, 30], atol=6)


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    data = _save(Image.new("CMYK", (50, 50), (0, 255, 255, 0)), "JPEG")  # pure red in CMYK
    tensor = _assert_ok(decode_image(data, SIZE))
    np.testing.assert_allclose(_pixel(tensor, 10, 10), [255, 0, 0], atol=12)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    arr = np.full((40, 40), 32_768, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    data = _save(img, "PNG")
    tensor = _assert_ok(decode_image(data, SIZE))
    # PIL's own convert("RGB") would clip this to white (255); scaling gives ~128.
    np.testing.assert_allclose(_pixel(tensor, 5, 5), [128, 128, 128], atol=2)


def test_rgba_png_is_composited_onto_white() -> None:
    arr = np.zeros((40, 80, 4), dtype=np.uint8)
    arr[:, :40] = (255, 0, 0, 255)  # left: opaque red
    arr[:, 40:] = (0, 0, 255, 0)  # right: fully transparent blue
    tensor = _assert_ok(decode_image(_save(Image.fromarray(arr, "RGBA"), "PNG"), SIZE))
    np.testing.assert_allclose(_pixel(tensor, 32, 4), [255, 0, 0], atol=2)
    np.testing.assert_allclose(_pixel(tensor, 32, 60), [255, 255, 255], atol=2)


def test_palette_with_transparency_and_la_are_composited_onto_white() -> None:
    pal = Image.new("P", (30, 30), 1)
    pal.putpalette([0, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 6))
    data = _save(pal, "PNG", transparency=1)
    tensor = _assert_ok(decode_image(data, SIZE))
    np.testing.assert_allclose(_pixel(tensor, 10, 10), [255, 255, 255], atol=2)

    la = Image.new("LA", (30, 30), (0, 0))  # black but fully transparent
    tensor = _assert_ok(decode_image(_save(la, "PNG"), SIZE))
    np.testing.assert_allclose(_pixel(tensor, 10, 10), [255, 255, 255], atol=2)


def test_animated_gif_uses_the_first_frame() -> None:
    red = Image.new("RGB", (40, 40), (255, 0, 0)).convert("P")
    blue = Image.new("RGB", (40, 40), (0, 0, 255)).convert("P")
    data = _save(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    tensor = _assert_ok(decode_image(data, SIZE))
    pixel = _pixel(tensor, 20, 20)
    assert pixel[0] > 200 and pixel[2] < 60, f"expected the red first frame, got {pixel}"


def test_grayscale_gives_three_equal_channels() -> None:
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # horizontal ramp
    for fmt in ("PNG", "JPEG"):
        tensor = _assert_ok(decode_image(_save(Image.fromarray(arr, "L"), fmt), SIZE))
        torch.testing.assert_close(tensor[0], tensor[1])
        torch.testing.assert_close(tensor[1], tensor[2])
        assert float(tensor[0, :, -1].mean()) > float(tensor[0, :, 0].mean()) + 1.5


def test_exif_orientation_is_applied() -> None:
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red
    arr[:, 40:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    tensor = _assert_ok(decode_image(_save(img, "PNG", exif=exif), SIZE))
    assert _pixel(tensor, 4, 32)[0] > 200, "after rotating clockwise the red half is on top"
    assert _pixel(tensor, SIZE - 4, 32)[2] > 200, "and the blue half at the bottom"


def test_large_jpeg_uses_draft_and_still_gives_requested_size() -> None:
    tensor = _assert_ok(decode_image(_rgb_jpeg(2000, 1500), 224), size=224)
    assert tensor.shape == (3, 224, 224)


def test_argument_errors_raise_value_error() -> None:
    with pytest.raises(ValueError, match="image_size"):
        decode_image(_rgb_jpeg(), 0)
    with pytest.raises(ValueError, match="bytes"):
        decode_image("not bytes", SIZE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(_rgb_jpeg(), SIZE, max_pixels=0)


# --- the EfficientNet-lite0 tower ---


@pytest.fixture(scope="module")
def tower() -> ImageTower:
    return ImageTower(image_size=224, device="cpu", batch_size=4)


def test_feature_map_and_pooled_vectors(tower: ImageTower) -> None:
    colors = [(200, 30, 30), (30, 30, 200)]
    pixels = torch.stack([_assert_ok(decode_image(_rgb_jpeg(color=c), 224), 224) for c in colors])  # [2, 3, 224, 224]
    with torch.inference_mode():
        fmap = tower.feature_map(pixels)
        pooled = tower(pixels)
    assert fmap.shape == (2, IMAGE_DIM, 7, 7)
    assert pooled.shape == (2, IMAGE_DIM)
    expected = torch.nn.functional.normalize(fmap.mean(dim=(2, 3)), dim=1)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(2))


def test_encode_images_batches_match_single_pass(tower: ImageTower) -> None:
    images = [_assert_ok(decode_image(_rgb_jpeg(color=(20 * k, 100, 200 - 20 * k)), 224), 224) for k in range(6)]
    batched = tower.encode_images(images)  # batch_size 4 -> chunks of 4 and 2
    with torch.inference_mode():
        single = torch.cat([tower(img.unsqueeze(0)) for img in images])
    assert batched.shape == (6, IMAGE_DIM) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_encode_images_rejects_wrong_size(tower: ImageTower) -> None:
    with pytest.raises(ValueError, match="decode_image"):
        tower.encode_images([torch.zeros(3, 64, 64)])


def test_decode_images_on_threads_gives_each_image_its_own_result_in_order() -> None:
    from encoder.image import decode_images

    images = [_rgb_jpeg(color=(10 * k, 200 - 10 * k, 30)) for k in range(6)]
    images[2] = b"not an image"
    images[4] = b""
    alone = [decode_image(data, SIZE) for data in images]
    for threads in (1, 3, 8):
        together = decode_images(images, SIZE, threads=threads)
        assert [reason for _, reason in together] == [reason for _, reason in alone]
        for (got, _), (want, _) in zip(together, alone, strict=True):
            assert (got is None and want is None) or torch.equal(got, want)
    assert [r for _, r in alone] == [None, None, "undecodable", None, "empty_bytes", None]
    assert decode_images([], SIZE, threads=4) == []
