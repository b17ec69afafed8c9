"""The eSSPR single-stream encoder (kind="sspr"), on the real MiniLM and EfficientNet weights.

The model is untrained here, so these tests check structure and semantics that hold for any
weights: shapes and norms, what each attention mask lets through, the weights file and the
model version, and where gradients go. Images are small synthetic JPEGs made from fixed seeds.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from encoder import EncodedListings, EncoderConfig, ListingEncoder, build_encoder
from encoder.config import LossConfig
from encoder.factory import compute_model_version
from encoder.loss import total_loss
from encoder.sspr import (
    SSPR_DIM,
    SsprEncoder,
    load_trainable,
    save_trainable,
    trainable_parameters,
)

DIM = 256
TRAINABLE_COUNT = (
    # LoRA A and B (rank 8) on every linear layer of 6 blocks: query, key, value and the
    # attention's output projection (384 -> 384), the feed-forward's 384 -> 1536 and 1536 -> 384
    6 * (4 * (8 * 384 + 384 * 8) + 2 * (8 * 384 + 1536 * 8))
    + 1280 * 384
    + 384  # patch projection
    + 49 * 384
    + 384  # image position and segment embeddings
    + 2 * 384  # image LayerNorm
    + 384 * 256  # head
)


def _jpeg(color: tuple[int, int, int], seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, (size[1], size[0], 3))
    arr = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


RED = _jpeg((200, 30, 30), 1)
BLUE = _jpeg((30, 30, 200), 2)
GREEN = _jpeg((30, 200, 30), 3, size=(640, 480))
GREY = _jpeg((120, 120, 120), 4)


@pytest.fixture(scope="module")
def config() -> EncoderConfig:
    return EncoderConfig(kind="sspr", device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def encoder(config: EncoderConfig) -> SsprEncoder:
    enc = build_encoder(config)
    assert isinstance(enc, SsprEncoder)
    return enc


@pytest.fixture(scope="module")
def mixed() -> tuple[list[str | None], list[bytes | None]]:
    """Six listings: both parts, text only, image only, broken image, blank title, long title."""
    titles: list[str | None] = [
        "apple iphone 12 64gb black",
        "  Samsung Galaxy S21 Ultra 5G 256GB Phantom Black unlocked smartphone  ",
        None,
        "garden hose 50ft",
        "   ",
        "Bosch cordless drill 18V with two batteries, charger and carrying case " * 3,
    ]
    images: list[bytes | None] = [RED, None, BLUE, b"not an image at all", GREEN, GREY]
    return titles, images


@pytest.fixture(scope="module")
def encoded(encoder: SsprEncoder, mixed: tuple[list, list]) -> EncodedListings:
    return encoder.encode(*mixed)


# --- interface, shapes, norms ---


def test_build_encoder_makes_an_sspr_listing_encoder(encoder: SsprEncoder) -> None:
    assert isinstance(encoder, ListingEncoder)
    assert encoder.config.kind == "sspr"
    assert encoder.dim == SSPR_DIM == DIM
    assert not encoder.training  # built in eval mode


def test_shapes_flags_and_unit_norms(encoder: SsprEncoder, encoded: EncodedListings) -> None:
    for name in ("m", "t", "i"):
        arr = getattr(encoded, name)
        assert arr.shape == (6, DIM), name
        assert arr.dtype == np.float32, name
    assert encoded.has_text.tolist() == [True, True, False, True, False, True]
    assert encoded.has_image.tolist() == [True, False, True, False, True, True]
    assert encoded.image_error == [None, None, None, "undecodable", None, None]
    assert encoded.model_version == encoder.model_version
    np.testing.assert_allclose(np.linalg.norm(encoded.m, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(encoded.t[encoded.has_text], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(encoded.i[encoded.has_image], axis=1), 1.0, atol=1e-5)
    assert not encoded.t[~encoded.has_text].any()
    assert not encoded.i[~encoded.has_image].any()


def test_empty_input(encoder: SsprEncoder) -> None:
    out = encoder.encode([], [])
    assert out.m.shape == out.t.shape == out.i.shape == (0, DIM)
    assert out.has_text.shape == out.has_image.shape == (0,)
    assert out.image_error == []


def test_input_errors_name_the_row(encoder: SsprEncoder) -> None:
    with pytest.raises(ValueError, match=r"row 1 \(no image\).*row 2 \(image undecodable\)"):
        encoder.encode(["ok title", "  ", None], [None, None, b"\x00\x01garbage"])
    with pytest.raises(ValueError, match="2 titles but 1 images"):
        encoder.encode(["a", "b"], [None])
    with pytest.raises(ValueError, match="row 0 is str"):
        encoder.encode(["a"], ["/path/to/img.jpg"])  # type: ignore[list-item]


# --- masking semantics ---


def test_missing_modality_makes_m_equal_to_the_other_view_exactly(
    encoded: EncodedListings,
) -> None:
    text_only = encoded.has_text & ~encoded.has_image  # rows 1 and 3 (3: broken image)
    image_only = ~encoded.has_text & encoded.has_image  # rows 2 and 4 (4: blank title)
    assert text_only.sum() == 2 and image_only.sum() == 2
    np.testing.assert_array_equal(encoded.m[text_only], encoded.t[text_only])
    np.testing.assert_array_equal(encoded.m[image_only], encoded.i[image_only])
    both = encoded.has_text & encoded.has_image
    # with both parts, m is its own view (a fused vector, not a copy of t or i)
    assert (np.abs(encoded.m[both] - encoded.t[both]).max(axis=1) > 1e-3).all()
    assert (np.abs(encoded.m[both] - encoded.i[both]).max(axis=1) > 1e-3).all()


def test_t_does_not_see_the_image(encoder: SsprEncoder) -> None:
    titles = ["red ceramic mug 350ml", "garden hose 50ft", "usb c cable 2m braided"]
    a = encoder.encode(titles, [RED, BLUE, GREY])
    b = encoder.encode(titles, [GREEN, RED, BLUE])  # same batch layout, other images
    np.testing.assert_array_equal(a.t, b.t)
    assert (np.abs(a.i - b.i).max(axis=1) > 1e-3).all()
    assert (np.abs(a.m - b.m).max(axis=1) > 1e-3).all()
    # and the same listing without an image has the same t (another batch layout: float noise)
    c = encoder.encode(titles, [None, None, None])
    np.testing.assert_allclose(c.t, a.t, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(c.m, c.t)


def test_i_does_not_see_the_title(encoder: SsprEncoder) -> None:
    images = [RED, BLUE, GREEN]
    a = encoder.encode(["red ceramic mug 350ml", "garden hose 50ft", "usb c cable"], images)
    b = encoder.encode(["wireless mouse", "oak dining table 6 seats", "tea"], images)
    np.testing.assert_allclose(a.i, b.i, atol=1e-6, rtol=0)
    assert (np.abs(a.t - b.t).max(axis=1) > 1e-3).all()
    assert (np.abs(a.m - b.m).max(axis=1) > 1e-3).all()
    # masking the title is the same as having none: i == m of the listing without a title
    c = encoder.encode([None, "", "  "], images)
    np.testing.assert_allclose(c.m, a.i, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(c.m, c.i)


def test_untrained_t_is_the_minilm_sentence_vector_through_the_head(
    encoder: SsprEncoder,
) -> None:
    # LoRA B starts at zero, so t = normalise(head(mean-pooled MiniLM of [CLS] title [SEP])):
    # an oracle for the text tokens, the t mask and the pooling (image tokens masked out).
    titles = ["apple iphone 12 64gb black", "Garden hose, 50 ft, green (PVC)", "tea"]
    got = encoder.encode(titles, [RED, None, BLUE]).t
    tokens = encoder.text_tower.tokenizer(titles, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        sentence = encoder.text_tower(tokens["input_ids"], tokens["attention_mask"])  # [3, 384]
        expected = F.normalize(encoder.head(sentence), dim=1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


# --- determinism, batching ---


def test_deterministic_and_independent_of_batch_size(
    encoder: SsprEncoder,
    config: EncoderConfig,
    mixed: tuple[list, list],
    encoded: EncodedListings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    again = encoder.encode(*mixed)
    for name in ("m", "t", "i"):
        np.testing.assert_array_equal(getattr(again, name), getattr(encoded, name), err_msg=name)
    # batch_size 2 splits the six listings into three chunks (sorted by title length)
    monkeypatch.setattr(encoder, "config", dataclasses.replace(config, batch_size=2))
    small = encoder.encode(*mixed)
    for name in ("m", "t", "i"):
        np.testing.assert_allclose(getattr(small, name), getattr(encoded, name), atol=1e-5, rtol=0, err_msg=name)
    assert small.image_error == encoded.image_error


# --- trainable parts, weights file, model version ---


def test_trainable_parameters_are_only_the_new_parts(encoder: SsprEncoder) -> None:
    trainable = trainable_parameters(encoder)
    assert sum(p.numel() for p in trainable.values()) == TRAINABLE_COUNT == 941_952
    requires_grad = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert set(trainable) == requires_grad
    for name in trainable:
        assert name.endswith((".lora_a", ".lora_b")) or name.startswith(("patch_embedding.", "head.")), name
    lora = [n for n in trainable if "lora_" in n]
    assert len(lora) == 6 * 6 * 2
    frozen = [n for n, p in encoder.named_parameters() if not p.requires_grad]
    assert any(n.startswith("image_tower.") for n in frozen)
    assert any(n.endswith("attention.self.query.base.weight") for n in frozen)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, config: EncoderConfig) -> tuple:
    """An encoder whose trainable tensors were moved off the init (as if trained), saved."""
    model = build_encoder(config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    path = tmp_path_factory.mktemp("sspr") / "sspr.safetensors"
    save_trainable(model, path)
    return model, path


def test_weights_file_round_trip_is_bit_exact(
    trained: tuple,
    encoder: SsprEncoder,
    config: EncoderConfig,
    mixed: tuple[list, list],
    encoded: EncodedListings,
) -> None:
    model, path = trained
    assert path.stat().st_size < 10 * 1024 * 1024
    assert path.stat().st_size > TRAINABLE_COUNT * 4  # float32, every tensor stored
    loaded = build_encoder(dataclasses.replace(config, weights=str(path)))
    before = model.encode(*mixed)
    after = loaded.encode(*mixed)
    for name in ("m", "t", "i"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)
        # and the saved weights are not the init's
        assert np.abs(getattr(after, name) - getattr(encoded, name)).max() > 1e-3, name
    assert loaded.model_version != encoder.model_version
    assert after.model_version == loaded.model_version
    assert compute_model_version(loaded.config) == loaded.model_version
    # saving the loaded weights again gives the same bytes
    again = path.with_name("again.safetensors")
    save_trainable(loaded, again)
    assert again.read_bytes() == path.read_bytes()


def test_second_build_is_identical_and_load_trainable_updates_it(
    trained: tuple,
    encoder: SsprEncoder,
    config: EncoderConfig,
    mixed: tuple[list, list],
    encoded: EncodedListings,
) -> None:
    _, path = trained
    fresh = build_encoder(config)
    # a second build from "" has the same seeded init, hence the same vectors and version
    for name, param in trainable_parameters(fresh).items():
        assert torch.equal(param, trainable_parameters(encoder)[name]), name
    titles, images = mixed
    np.testing.assert_array_equal(fresh.encode(titles, images).m, encoded.m)
    fresh_version = fresh.model_version
    assert fresh_version == encoder.model_version
    load_trainable(fresh, path)
    assert fresh.model_version != fresh_version
    assert fresh.model_version == compute_model_version(dataclasses.replace(config, weights=str(path)))
    np.testing.assert_array_equal(fresh.encode(titles, images).m, trained[0].encode(*mixed).m)


def test_load_trainable_refuses_foreign_files(trained: tuple, encoder: SsprEncoder, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    _, path = trained
    with pytest.raises(ValueError, match="cannot be read"):
        load_trainable(encoder, tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_trainable(encoder, junk)
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    metadata = json.loads(path.read_bytes()[8 : 8 + header_size])["__metadata__"]
    tensors = {n: p.detach().clone() for n, p in trainable_parameters(encoder).items()}
    other = tmp_path / "other.safetensors"
    save_file(tensors, other, metadata={"architecture": "something else"})
    with pytest.raises(ValueError, match="saved for architecture"):
        load_trainable(encoder, other)
    tensors["patch_embedding.position"] = torch.zeros(64, 384)  # as if image_size were 256
    wrong = tmp_path / "wrong.safetensors"
    save_file(tensors, wrong, metadata=metadata)
    with pytest.raises(ValueError, match=r"wrong shapes \['patch_embedding.position"):
        load_trainable(encoder, wrong)
    # a failed load leaves the version alone
    assert encoder.model_version == compute_model_version(encoder.config)


def test_model_version(encoder: SsprEncoder, config: EncoderConfig) -> None:
    version = encoder.model_version
    assert len(version) == 16
    int(version, 16)
    assert compute_model_version(config) == version
    assert compute_model_version(EncoderConfig(device="cpu")) != version  # zero-shot
    for change in ({"text_max_tokens": 32}, {"image_size": 256}):
        assert compute_model_version(dataclasses.replace(config, **change)) != version, change
    for same in (
        {"batch_size": 7},
        {"num_threads": 1},
        {"device": "auto"},
        {"text_weight": 2.0},  # zero-shot fusion weights do not touch the sspr vectors
    ):
        assert compute_model_version(dataclasses.replace(config, **same)) == version, same


# --- training forward and gradients ---


def test_forward_gradients_reach_only_the_trainable_parts(trained: tuple) -> None:
    model, _ = trained
    model.zero_grad(set_to_none=True)
    titles = ["red mug", "garden hose 50ft", None, "usb cable"]
    pixels = [
        _decoded(RED, model.config.image_size),
        None,
        _decoded(BLUE, model.config.image_size),
        _decoded(GREY, model.config.image_size),
    ]
    batch = model.make_batch(titles, pixels)
    running_mean = model.image_tower.net._bn1.running_mean.clone()
    model.train()
    try:
        assert not model.image_tower.training  # the frozen CNN's BatchNorm stays in eval
        out = model(batch)
        generator = torch.Generator().manual_seed(3)
        probe = torch.randn(3, DIM, generator=generator)
        (out.m @ probe[0] + out.t @ probe[1] + out.i @ probe[2]).sum().backward()
    finally:
        model.eval()
    torch.testing.assert_close(model.image_tower.net._bn1.running_mean, running_mean)
    for name, param in trainable_parameters(model).items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
    model.zero_grad(set_to_none=True)


def test_t_gradients_do_not_reach_the_image_parts(trained: tuple) -> None:
    model, _ = trained
    model.zero_grad(set_to_none=True)
    pixels = [_decoded(RED, model.config.image_size), _decoded(BLUE, model.config.image_size)]
    out = model(model.make_batch(["red mug", "blue mug"], pixels))
    out.t.sum().backward()
    patch_grads = [p.grad for n, p in trainable_parameters(model).items() if n.startswith("patch_embedding.")]
    assert all(g is None or not g.any() for g in patch_grads)
    assert model.head.weight.grad is not None and model.head.weight.grad.any()
    model.zero_grad(set_to_none=True)


def test_forward_output_feeds_the_loss(trained: tuple) -> None:
    model, _ = trained
    size = model.config.image_size
    trigger = model.make_batch(
        ["red ceramic mug", "garden hose", None], [_decoded(RED, size), None, _decoded(BLUE, size)]
    )
    offer = model.make_batch(
        ["mug red ceramic 350ml", "hose for garden 50ft", "blue thing"],
        [_decoded(GREEN, size), _decoded(GREY, size), _decoded(BLUE, size)],
    )
    model.train()
    try:
        loss, parts = total_loss(model(trigger), model(offer), LossConfig(locality_top_k=2))
        loss.backward()
    finally:
        model.eval()
    assert torch.isfinite(loss) and loss.item() > 0, parts
    assert model.head.weight.grad is not None and model.head.weight.grad.any()
    model.zero_grad(set_to_none=True)


def test_forward_matches_encode(trained: tuple, mixed: tuple[list, list]) -> None:
    model, _ = trained
    from encoder.image import decode_image

    titles, images = mixed
    pixels = [None if data is None else decode_image(data, model.config.image_size)[0] for data in images]
    with torch.no_grad():
        out = model(model.make_batch(titles, pixels))
    encoded = model.encode(titles, images)
    np.testing.assert_array_equal(out.has_text.numpy(), encoded.has_text)
    np.testing.assert_array_equal(out.has_image.numpy(), encoded.has_image)
    for name in ("m", "t", "i"):
        np.testing.assert_allclose(getattr(out, name).numpy(), getattr(encoded, name), atol=1e-5, rtol=0, err_msg=name)


def _one_full_pass(model: SsprEncoder, batch) -> dict[str, torch.Tensor]:
    """The naive reference: every view over the whole [text | image cells] sequence, masked."""
    n, cells = batch.has_text.shape[0], (model.config.image_size // 32) ** 2
    text = model.text_tower.model.embeddings(input_ids=batch.input_ids)
    image = text.new_zeros((n, cells, text.shape[2]))
    rows = torch.nonzero(batch.has_image).flatten()
    if rows.numel():
        image = image.index_copy(0, rows, model.patch_embedding(model.image_tower.feature_map(batch.pixels)))
    sequence = torch.cat([text, image], dim=1)
    text_mask = batch.attention_mask.bool() & batch.has_text[:, None]
    text_mask[:, 0] = True
    cls_only = torch.zeros_like(text_mask)
    cls_only[:, 0] = True
    image_mask = batch.has_image[:, None].expand(n, cells)
    masks = {
        "t": torch.cat([text_mask, torch.zeros_like(image_mask)], dim=1),
        "i": torch.cat([cls_only, image_mask], dim=1),
        "m": torch.cat([text_mask, image_mask], dim=1),
    }
    return {v: model._fuse(sequence, mask) for v, mask in masks.items()}


def test_each_view_run_on_its_own_positions_equals_the_full_masked_sequence(
    trained: tuple, mixed: tuple[list, list]
) -> None:
    """forward runs t on the text positions only and i on [CLS] + image cells (no padding of
    the other modality); the vectors must equal one pass over the whole masked sequence."""
    model, _ = trained
    from encoder.image import decode_image

    titles, images = mixed
    pixels = [None if data is None else decode_image(data, model.config.image_size)[0] for data in images]
    batch = model.make_batch(titles, pixels)
    with torch.no_grad():
        out = model(batch)
        reference = _one_full_pass(model, batch)
    checks = {"t": out.has_text, "i": out.has_image, "m": out.has_text & out.has_image}
    for view, rows in checks.items():
        assert bool(rows.any()), f"the batch has no {view} rows; the check proves nothing"
        np.testing.assert_allclose(
            getattr(out, view)[rows].numpy(), reference[view][rows].numpy(), atol=2e-6, rtol=0, err_msg=view
        )
    # a text-only batch runs without any image position at all and gives the same t
    text_only = model.make_batch([t for t in titles if t and t.strip()], [None] * 4)
    with torch.no_grad():
        alone = model(text_only)
        full = _one_full_pass(model, text_only)
    np.testing.assert_allclose(alone.t.numpy(), full["t"].numpy(), atol=2e-6, rtol=0)


def test_forward_refuses_an_empty_listing(encoder: SsprEncoder) -> None:
    batch = encoder.make_batch(["title", None], [None, None])
    with pytest.raises(ValueError, match=r"rows \[1\] have neither a title nor an image"):
        encoder(batch)


def _decoded(data: bytes, size: int) -> torch.Tensor:
    from encoder.image import decode_image

    tensor, reason = decode_image(data, size)
    assert tensor is not None, reason
    return tensor


# --- config ---


def test_config_accepts_the_sspr_fields() -> None:
    cfg = EncoderConfig(kind="sspr", weights="models/sspr.safetensors")
    assert cfg.weights == "models/sspr.safetensors"
    assert EncoderConfig(kind="sspr").weights == ""
    with pytest.raises(ValueError, match=r"encoder.weights='x.safetensors' is only used by kind='sspr'"):
        EncoderConfig(kind="zero-shot", weights="x.safetensors")
    with pytest.raises(ValueError, match="encoder.weights=3 must be a path string"):
        EncoderConfig(kind="sspr", weights=3)  # type: ignore[arg-type]


def test_missing_weights_file_fails_the_build(tmp_path: Path) -> None:
    cfg = EncoderConfig(kind="sspr", device="cpu", weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="cannot be read"):
        build_encoder(cfg)
    with pytest.raises(ValueError, match="cannot be read"):
        compute_model_version(cfg)


def test_decoding_images_on_threads_gives_the_same_vectors(
    config: EncoderConfig, encoded: EncodedListings, mixed: tuple[list, list]
) -> None:
    threaded = build_encoder(dataclasses.replace(config, decode_threads=3))
    assert threaded.model_version == encoded.model_version  # a speed setting, not a vector setting
    again = threaded.encode(*mixed)
    assert again.image_error == encoded.image_error and again.has_image.tolist() == encoded.has_image.tolist()
    for view in ("m", "t", "i"):
        np.testing.assert_array_equal(getattr(again, view), getattr(encoded, view))


def test_lora_targets_choose_the_adapted_layers_and_are_part_of_the_architecture(
    config: EncoderConfig, encoder: SsprEncoder, trained: tuple, tmp_path: Path
) -> None:
    from encoder.config import LORA_LAYERS

    every = dataclasses.replace(config, lora_targets="output, query,key,value,intermediate,attention_output")
    assert compute_model_version(every) == compute_model_version(config)  # the default: every layer
    model = build_encoder(every)
    lora = [n for n in trainable_parameters(model) if "lora_" in n]
    assert len(lora) == 6 * len(LORA_LAYERS) * 2  # 6 blocks x 6 layers x (A, B)
    assert any(n.endswith("intermediate.dense.lora_a") for n in lora)
    assert any(n.endswith("attention.output.dense.lora_b") for n in lora)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.endswith("output.dense.base.weight") for n in frozen)
    # another layout (the first shipped weights': query and value only) is another model, and
    # weights files do not load across layouts
    attention = dataclasses.replace(config, lora_targets="value,query")
    narrow = build_encoder(attention)
    adapted = [n for n in trainable_parameters(narrow) if "lora_" in n]
    assert len(adapted) == 6 * 2 * 2 and not any("intermediate" in n for n in adapted)
    assert compute_model_version(attention) != compute_model_version(config)
    path = tmp_path / "attention.safetensors"
    save_trainable(narrow, path)
    with pytest.raises(ValueError, match="encoder.lora_targets"):
        load_trainable(encoder, path)
    _, default_layout = trained
    with pytest.raises(ValueError, match="saved for architecture"):
        load_trainable(narrow, default_layout)
    # the order written does not matter
    swapped = dataclasses.replace(config, lora_targets="query,value")
    assert compute_model_version(swapped) == compute_model_version(attention)


@pytest.mark.parametrize("targets", ["", "query,query", "query,ffn", " , "])
def test_lora_targets_must_name_distinct_known_layers(targets: str) -> None:
    with pytest.raises(ValueError, match="encoder.lora_targets"):
        EncoderConfig(kind="sspr", lora_targets=targets)


def test_autocast_runs_the_forward_in_reduced_precision_under_its_own_model_version(
    config: EncoderConfig, encoded: EncodedListings, mixed: tuple[list, list]
) -> None:
    # the GPU path's torch.autocast, run on the CPU here (CPU autocast takes bfloat16 too)
    half = build_encoder(dataclasses.replace(config, autocast="bf16"))
    assert half.model_version != encoded.model_version  # the vectors move beyond float noise
    again = half.encode(*mixed)
    assert again.has_text.tolist() == encoded.has_text.tolist()
    assert again.has_image.tolist() == encoded.has_image.tolist()
    for view in ("m", "t", "i"):
        full, reduced = getattr(encoded, view), getattr(again, view)
        present = np.linalg.norm(full, axis=1) > 0
        assert (np.linalg.norm(reduced, axis=1) > 0).tolist() == present.tolist()
        np.testing.assert_allclose(np.linalg.norm(reduced[present], axis=1), 1.0, atol=1e-5)  # float32 unit rows
        cosine = (full[present] * reduced[present]).sum(axis=1)
        assert cosine.min() > 0.99, view  # the same vectors up to bfloat16 rounding
        assert not np.array_equal(full, reduced)  # the forward really ran in bfloat16


def test_autocast_must_be_a_known_precision_of_the_sspr_encoder() -> None:
    with pytest.raises(ValueError, match="encoder.autocast"):
        EncoderConfig(kind="sspr", autocast="int8")
    with pytest.raises(ValueError, match="only used by kind='sspr'"):
        EncoderConfig(kind="zero-shot", autocast="bf16")


def test_encoding_uses_the_merged_adapters_and_follows_their_updates() -> None:
    from encoder.sspr import LoraLinear

    generator = torch.Generator().manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(6, 5), rank=2, alpha=4.0, generator=generator)
    with torch.no_grad():
        layer.lora_b.normal_(generator=generator)
    x = torch.randn(3, 6, generator=generator)
    with torch.no_grad():
        expected = layer(x)  # base + scaled B A x: the training path
    with torch.inference_mode():
        merged = layer(x)
    assert layer._merged is not None  # encoding ran the one merged matrix
    torch.testing.assert_close(merged, expected, atol=1e-6, rtol=0)
    # an optimiser step (or load_trainable) changes A / B in place: the next encode follows it
    with torch.no_grad():
        layer.lora_b.add_(1.0)
        layer.lora_a.mul_(0.5)
        expected = layer(x)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
