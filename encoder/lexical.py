"""The lexical part of the hybrid encoder: hashed character n-gram TF-IDF vectors of the title.

Why: model codes, capacities and sizes ("WD40EZRZ", "64gb", "1/2-inch") decide product identity,
and a character n-gram TF-IDF catches them better than a sentence model (bench/README.md: TF-IDF
beats zero-shot MiniLM on every text benchmark). The hybrid encoder (``HybridEncoder``) appends
this vector to the neural one, so the inner product of two hybrid vectors is a weighted sum of
the neural and the lexical similarity, in one vector space that faiss can search::

    m_hybrid = [sqrt(1 - w) * m ; sqrt(w) * h]      (the listing has a title)
    cos(m_hybrid_a, m_hybrid_b) = (1 - w) * cos(m_a, m_b) + w * cos(h_a, h_b)

with ``w = EncoderConfig.lexical_weight``. ``t`` is built the same way from the neural ``t``.
``i`` and the ``m`` of a listing without a title carry no lexical part: ``[v ; 0]``, still unit
norm. A pair of which only one side has a title therefore scores ``sqrt(1 - w) * cos`` on m.

The lexical vector ``h`` (``LexicalVectorizer``), like scikit-learn's ``TfidfVectorizer(
analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)`` but without a fitted vocabulary:

1. NFKC-normalise and lowercase the title (fullwidth "ＡＢＣ" = "abc");
2. every whitespace-separated word, padded with one space each side, gives its character 3-,
   4- and 5-grams (a word shorter than n gives itself, padded, once);
3. each n-gram is hashed (crc32 of its UTF-8 bytes) to one of ``lexical_buckets`` columns;
4. tf is ``1 + log(count)`` per column, times the column's IDF; the row is L2-normalised.
   A title with no n-gram at all gets a zero vector, so its hybrid vector falls back to
   ``[v ; 0]`` like a listing without a title.

The IDF table is fitted on training titles only (``fit_idf``; ``python -m training.fit_lexical``
writes ``encoder/weights/lexical-idf.npy``) with scikit-learn's smooth formula
``log((1 + N) / (1 + df)) + 1``. No IDF file (``lexical_idf = ""``) means IDF 1 everywhere.

Pure numpy; no torch needed.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

NGRAM_RANGE = (3, 5)
LEXICAL_SCHEME = "char_wb3-5;nfkc;lower;crc32-buckets;tf=1+log;idf=smooth;l2"
"""Describes the vectorizer; part of the hybrid model_version (bump on any change)."""


def title_ngrams(title: str) -> list[str]:
    """Returns the character 3–5-grams of a title (``char_wb``: within padded words).

    Args:
        title: one title.

    Returns:
        The n-grams in order, with repeats.
    """
    text = unicodedata.normalize("NFKC", title).lower()
    grams: list[str] = []
    low, high = NGRAM_RANGE
    for word in text.split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if size < n:
                if n == low:
                    grams.append(padded)
                break
            grams.extend(padded[k : k + n] for k in range(size - n + 1))
    return grams


def bucket_counts(title: str, buckets: int) -> Counter:
    """Returns ``{column: count}`` of a title's hashed n-grams."""
    return Counter(zlib.crc32(gram.encode("utf-8")) % buckets for gram in title_ngrams(title))


def fit_idf(titles: Iterable[str], buckets: int) -> np.ndarray:
    """Fits the IDF of each hash column on a corpus of titles (smooth IDF, as scikit-learn).

    Args:
        titles: training titles (never evaluation or test data).
        buckets: the number of hash columns.

    Returns:
        float32 [buckets]: ``log((1 + N) / (1 + df)) + 1``.

    Raises:
        ValueError: if ``buckets`` < 1 or there are no titles.
    """
    if buckets < 1:
        raise ValueError(f"buckets={buckets} must be >= 1")
    df = np.zeros(buckets, dtype=np.int64)
    n = 0
    for title in titles:
        n += 1
        columns = list(bucket_counts(title, buckets))
        df[columns] += 1
    if n == 0:
        raise ValueError("fit_idf needs at least one title")
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def save_idf(idf: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Writes an IDF table as ``.npy``, atomically (same array -> same bytes)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(idf, dtype=np.float32), allow_pickle=False)
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, target)


class LexicalVectorizer:
    """Hashed character n-gram TF-IDF vectors of titles (see the module docstring).

    Args:
        buckets: the vector width (hash columns).
        idf_path: an ``.npy`` table from ``save_idf`` with ``buckets`` entries, or "" for IDF 1.

    Raises:
        ValueError: if the IDF file cannot be read or has the wrong shape; the message says what
            to do.
    """

    def __init__(self, buckets: int, idf_path: str = "") -> None:
        self.buckets = int(buckets)
        if idf_path:
            try:
                data = Path(idf_path).read_bytes()
                idf = np.load(io.BytesIO(data), allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"encoder.lexical_idf={idf_path!r} cannot be read ({exc}); write it with "
                    "`python -m training.fit_lexical`, or set '' for IDF 1"
                ) from exc
            if idf.shape != (self.buckets,):
                raise ValueError(
                    f"encoder.lexical_idf={idf_path!r} has shape {idf.shape}, but "
                    f"encoder.lexical_buckets={self.buckets}; refit it with "
                    f"`python -m training.fit_lexical --buckets {self.buckets}`"
                )
            self.idf = idf.astype(np.float32)
            self.idf_digest = "sha256:" + hashlib.sha256(data).hexdigest()
        else:
            self.idf = np.ones(self.buckets, dtype=np.float32)
            self.idf_digest = "none"

    def transform(self, titles: Sequence[str | None], has_text: Sequence[bool] | None = None) -> np.ndarray:
        """Embeds titles.

        Args:
            titles: one title (or None) per row.
            has_text: optional, per row: False gives a zero row whatever the title (the neural
                encoder's ``has_text``, so both parts agree on which listings have text).

        Returns:
            float32 [n, buckets]; unit rows, or zero rows for None / n-gram-free / masked titles.
        """
        out = np.zeros((len(titles), self.buckets), dtype=np.float32)
        for row, title in enumerate(titles):
            if not title or (has_text is not None and not has_text[row]):
                continue
            counts = bucket_counts(title, self.buckets)
            if not counts:
                continue
            columns = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter((1.0 + math.log(c) for c in counts.values()), dtype=np.float64, count=len(counts))
            values = tf * self.idf[columns]
            out[row, columns] = values / np.linalg.norm(values)
        return out


def combine(neural: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """Joins neural and lexical vectors into hybrid vectors (see the module docstring).

    Args:
        neural: float32 [n, d] unit rows (or zero rows for a view the listing lacks).
        lexical: float32 [n, b] unit rows, or zero rows where the listing has no lexical part
            (no title, or the view carries no text).
        weight: the lexical weight ``w`` in [0, 1).

    Returns:
        float32 [n, d + b]: ``[sqrt(1 - w) * v ; sqrt(w) * h]`` where ``h`` is non-zero and
        ``v`` is non-zero, else ``[v ; 0]``. Rows stay unit (or zero).
    """
    has_lexical = (np.abs(lexical).sum(axis=1) > 0) & (np.abs(neural).sum(axis=1) > 0)
    scale_v = np.where(has_lexical, math.sqrt(1.0 - weight), 1.0).astype(np.float32)[:, None]
    scale_h = np.where(has_lexical, math.sqrt(weight), 0.0).astype(np.float32)[:, None]
    return np.concatenate([neural * scale_v, lexical * scale_h], axis=1).astype(np.float32)
