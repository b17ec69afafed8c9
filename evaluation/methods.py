"""The methods compared by the evaluation harness, and the on-disk cache of their vectors.

Every method turns records into L2-normalised row vectors, so that the similarity of two
records is the inner product of their rows:

* ``tfidf-char3-5`` — TF-IDF over character 3–5-grams of the title (scikit-learn,
  ``analyzer="char_wb"``, sublinear tf), fitted on the records being compared (no labels).
  Returns a sparse matrix.
* ``minilm (zero-shot)`` — the pretrained text model, mean-pooled (``encoder.text.TextTower``).
* ``efficientnet-lite0 (zero-shot)`` — the pretrained image model, pooled
  (``encoder.image.ImageTower``).
* ``encoder:m`` / ``encoder:t`` / ``encoder:i`` — the project's current encoder
  (``encoder.build_encoder``), as the pipeline would run it; ``<label>:m`` etc. for the other
  encoders a run compares (``--compare LABEL=CONFIG``).

A hybrid encoder (``encoder.hybrid``) is evaluated from its neural part's cached vectors plus
the lexical vectors of the titles (``HybridEncoder.join``, the code the pipeline runs), so a
hybrid and its pure model share one cache entry.

Neural vectors are cached under ``<cache>/<method key>/<name>-<input digest>.npz``; the method
key contains the ``model_version`` (or the weights digest for a baseline), so a new model never
reads an old model's vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from encoder.config import EncoderConfig

logger = logging.getLogger(__name__)

TFIDF = "tfidf-char3-5"
MINILM = "minilm (zero-shot)"
EFFICIENTNET = "efficientnet-lite0 (zero-shot)"
ENCODER_VIEWS = ("m", "t", "i")


def encoder_method(view: str, label: str = "encoder") -> str:
    """Returns the method name of one view of an encoder, e.g. ``encoder:m``.

    Args:
        view: ``m``, ``t`` or ``i``.
        label: ``encoder`` for the project's encoder, else a compared encoder's label.
    """
    return f"{label}:{view}"


def tfidf_vectors(texts: Sequence[str]) -> sp.csr_matrix:
    """Embeds texts as TF-IDF vectors of character 3–5-grams.

    The vocabulary and IDF are fitted on ``texts`` themselves (unsupervised; no labels).

    Args:
        texts: the titles to embed.

    Returns:
        A sparse float64 [n, vocabulary] matrix with L2-normalised rows.
    """
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True, sublinear_tf=True, norm="l2")
    return vectorizer.fit_transform(list(texts)).tocsr()


class VectorCache:
    """Stores method vectors as ``.npz`` files keyed by method key, name and input digest.

    Args:
        root: the cache folder (created on first write); None disables caching.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        # arrays already fetched in this run: a second task asking for the same vectors (the
        # lexical-weight sweep and the WDC task share the neural WDC vectors) reads no file and,
        # with caching off, computes nothing again
        self._memory: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}

    def fetch(
        self,
        method_key: str,
        name: str,
        inputs: Sequence[str],
        compute: Callable[[], dict[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Returns cached arrays for these inputs, computing and storing them when missing.

        Args:
            method_key: identifies the model (includes its version / weights digest).
            name: a readable name of the record set, e.g. ``wdc-offers``.
            inputs: the per-record inputs (titles or image paths) the vectors depend on.
            compute: makes the arrays when they are not cached.

        Returns:
            The arrays by name (e.g. ``{"m": ..., "t": ...}``), row-aligned with ``inputs``.
        """
        digest = hashlib.sha256(json.dumps(list(inputs)).encode()).hexdigest()[:16]
        memory_key = (method_key, name, digest)
        if memory_key in self._memory:
            return self._memory[memory_key]
        path = None if self.root is None else self.root / method_key / f"{name}-{digest}.npz"
        if path is not None and path.exists():
            with np.load(path) as stored:
                logger.info("%s / %s: %d vectors from the cache", method_key, name, len(inputs))
                arrays = {key: stored[key] for key in stored.files}
            self._memory[memory_key] = arrays
            return arrays
        started = time.perf_counter()
        arrays = compute()
        elapsed = time.perf_counter() - started
        logger.info(
            "%s / %s: embedded %d records in %.1fs (%.0f/s)",
            method_key,
            name,
            len(inputs),
            elapsed,
            len(inputs) / max(elapsed, 1e-9),
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp.npz")
            np.savez(partial, **arrays)
            partial.replace(path)  # atomic: a killed run never leaves a truncated cache file
        self._memory[memory_key] = arrays
        return arrays


class NeuralMethods:
    """The pretrained baselines and the project's encoder, built lazily, with a vector cache.

    Args:
        encoder_config: the encoder the pipeline runs (``config`` ``encoder`` section).
        cache: where vectors are cached.
    """

    def __init__(self, encoder_config: EncoderConfig, cache: VectorCache) -> None:
        self.encoder_config = encoder_config
        self.cache = cache
        self._encoder = None
        self._text_tower = None
        self._image_tower = None

    @property
    def encoder(self):
        """The project's encoder (``encoder.build_encoder``), built on first use."""
        if self._encoder is None:
            from encoder.factory import build_encoder

            self._encoder = build_encoder(self.encoder_config)
        return self._encoder

    @property
    def model_version(self) -> str:
        """The project encoder's model_version."""
        return self.encoder.model_version

    def _baseline_key(self, name: str) -> str:
        """Cache key of a pretrained baseline: its name and the weights digest."""
        from encoder.base import weights_digest

        return f"{name.split()[0]}-{weights_digest()[:16]}"

    def minilm(self, name: str, texts: Sequence[str]) -> np.ndarray:
        """Embeds texts with mean-pooled MiniLM.

        Args:
            name: a readable name of the record set (for the cache and logs).
            texts: the titles.

        Returns:
            float32 [n, 384], unit rows.
        """

        def compute() -> dict[str, np.ndarray]:
            if self._text_tower is None:
                import torch

                from encoder.text import TextTower

                self._text_tower = TextTower(
                    self.encoder_config.text_max_tokens,
                    torch.device("cpu"),
                    self.encoder_config.batch_size,
                )
            return {"v": self._text_tower.encode_texts(list(texts)).numpy()}

        return self.cache.fetch(self._baseline_key(MINILM), name, texts, compute)["v"]

    def efficientnet(self, name: str, paths: Sequence[str]) -> np.ndarray:
        """Embeds image files with pooled EfficientNet-lite0.

        Args:
            name: a readable name of the record set (for the cache and logs).
            paths: image file paths.

        Returns:
            float32 [n, 1280], unit rows.

        Raises:
            ValueError: if an image cannot be decoded (the benchmark images all can).
        """

        def compute() -> dict[str, np.ndarray]:
            import torch

            from encoder.image import ImageTower, decode_image

            if self._image_tower is None:
                self._image_tower = ImageTower(
                    self.encoder_config.image_size,
                    torch.device("cpu"),
                    self.encoder_config.batch_size,
                )
            chunks = []
            size = self.encoder_config.batch_size
            for start in range(0, len(paths), size):
                pixels = []
                for path in paths[start : start + size]:
                    tensor, reason = decode_image(
                        Path(path).read_bytes(),
                        self.encoder_config.image_size,
                        self.encoder_config.max_image_pixels,
                    )
                    if tensor is None:
                        raise ValueError(f"{path}: image cannot be decoded ({reason})")
                    pixels.append(tensor)
                chunks.append(self._image_tower.encode_images(pixels).numpy())
            return {"v": np.concatenate(chunks)}

        return self.cache.fetch(self._baseline_key(EFFICIENTNET), name, paths, compute)["v"]

    def encode(
        self,
        name: str,
        titles: Sequence[str | None],
        paths: Sequence[str | None],
        views: Sequence[str] = ENCODER_VIEWS,
    ) -> dict[str, np.ndarray]:
        """Embeds records (title and/or image file) with the project's encoder.

        Args:
            name: a readable name of the record set (for the cache and logs).
            titles: one title (or None) per record.
            paths: one image path (or None) per record.
            views: which of ``m``, ``t``, ``i`` to return.

        Returns:
            ``{view: float32 [n, dim]}`` for the requested views.
        """
        from encoder.hybrid import HybridEncoder

        encoder = self.encoder
        if not isinstance(encoder, HybridEncoder):
            return self.encode_neural(name, titles, paths, views)
        # the neural part from its own cache entry, then the pipeline's join
        wanted = tuple(v for v in ENCODER_VIEWS if v in views or v == "t")
        arrays = self.encode_neural(name, titles, paths, wanted)
        n = len(titles)
        zeros = np.zeros((n, encoder.base.dim), dtype=np.float32)
        image = arrays.get("i", zeros)
        from encoder.base import EncodedListings

        base = EncodedListings(
            m=arrays.get("m", zeros),
            t=arrays["t"],
            i=image,
            has_text=np.abs(arrays["t"]).sum(axis=1) > 0,
            has_image=np.abs(image).sum(axis=1) > 0,
            image_error=[None] * n,
            model_version=encoder.base.model_version,
        )
        joined = encoder.join(base, titles)
        return {view: getattr(joined, view) for view in views}

    def encode_neural(
        self, name: str, titles: Sequence[str | None], paths: Sequence[str | None], views: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Embeds records with the neural part of the project's encoder (itself, if not hybrid).

        Args and returns as ``encode``; vectors are cached under the neural model_version.
        """
        from encoder.hybrid import HybridEncoder

        encoder = self.encoder
        neural = encoder.base if isinstance(encoder, HybridEncoder) else encoder
        inputs = [f"{t}\x00{p}" for t, p in zip(titles, paths, strict=True)]

        def compute() -> dict[str, np.ndarray]:
            size = 256
            out: dict[str, list[np.ndarray]] = {v: [] for v in views}
            for start in range(0, len(inputs), size):
                images = [None if p is None else Path(p).read_bytes() for p in paths[start : start + size]]
                encoded = neural.encode(list(titles[start : start + size]), images)
                for view in views:
                    out[view].append(getattr(encoded, view))
            return {v: np.concatenate(parts) for v, parts in out.items()}

        key = f"encoder-{neural.model_version}"
        return self.cache.fetch(key, f"{name}-{''.join(views)}", inputs, compute)
