"""The hybrid encoder's lexical part (encoder/lexical.py) and the hybrid wrapper (encoder/hybrid.py).

Oracles: scikit-learn's own char_wb analyzer, TfidfTransformer and TfidfVectorizer (independent
implementations of the same definitions), and the cosine identity the hybrid promises.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer

from encoder.config import EncoderConfig
from encoder.lexical import (
    LexicalVectorizer,
    bucket_counts,
    combine,
    fit_idf,
    save_idf,
    title_ngrams,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets"
TITLES = [
    'WD Blue 1TB WD10EZEX 3.5" SATA',
    "wd blue 2tb wd20ezrz",
    "Apple iPhone 12 64GB black",
    "a b cd",  # words shorter than the n-gram sizes
    "Sony  MDR-7506   headphones",  # runs of spaces
    "Crème brûlée set (4 pcs)",
]


@pytest.mark.parametrize("title", TITLES)
def test_ngrams_are_sklearn_char_wb(title):
    analyzer = CountVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True).build_analyzer()
    assert sorted(title_ngrams(title)) == sorted(analyzer(title))


def test_nfkc_makes_fullwidth_and_ascii_titles_equal():
    vectorizer = LexicalVectorizer(512)
    full, ascii_ = vectorizer.transform(["ＷＤ４０ＥＺＲＺ Ｂｌｕｅ", "wd40ezrz blue"])
    assert np.array_equal(full, ascii_)


def test_fit_idf_is_sklearn_smooth_idf_over_hashed_columns():
    buckets = 64
    counts = np.zeros((len(TITLES), buckets))
    for row, title in enumerate(TITLES):
        for column, count in bucket_counts(title, buckets).items():
            counts[row, column] = count
    expected = TfidfTransformer(smooth_idf=True).fit(counts).idf_
    assert np.allclose(fit_idf(TITLES, buckets), expected, rtol=1e-6)


def test_cosine_matches_sklearn_tfidf_when_buckets_do_not_collide():
    """With 2^20 buckets the few n-grams here do not collide: the hashed vectors then give the
    same cosines as sklearn's exact char_wb 3-5 sublinear-tf vectors (IDF 1)."""
    vectorizer = LexicalVectorizer(1 << 20)
    hashed = vectorizer.transform(TITLES)
    exact = (
        TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, use_idf=False)
        .fit_transform(TITLES)
        .toarray()
    )
    assert np.allclose(hashed @ hashed.T, exact @ exact.T, atol=1e-5)
    assert np.allclose(np.linalg.norm(hashed, axis=1), 1.0, atol=1e-6)


def test_idf_weights_rare_ngrams_up(tmp_path):
    corpus = ["samsung tv 40in", "samsung tv 50in", "samsung tv 55in", "samsung phone"]
    path = tmp_path / "idf.npy"
    save_idf(fit_idf(corpus, 4096), path)
    weighted, flat = LexicalVectorizer(4096, str(path)), LexicalVectorizer(4096)
    a, b = "samsung tv 40in", "samsung tv 50in"  # share the common words, differ in the size
    cos_weighted = float(np.dot(*weighted.transform([a, b])))
    cos_flat = float(np.dot(*flat.transform([a, b])))
    assert cos_weighted < cos_flat  # the common "samsung tv" counts less with IDF


def test_empty_and_missing_titles_give_zero_rows():
    out = LexicalVectorizer(128).transform([None, "", "ok title"])
    assert not out[:2].any()
    assert np.isclose(np.linalg.norm(out[2]), 1.0)


def test_idf_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="training.fit_lexical"):
        LexicalVectorizer(16, str(tmp_path / "missing.npy"))
    path = tmp_path / "idf.npy"
    save_idf(np.ones(8, dtype=np.float32), path)
    with pytest.raises(ValueError, match="--buckets 16"):
        LexicalVectorizer(16, str(path))


def test_combine_gives_the_weighted_sum_of_cosines():
    rng = np.random.default_rng(0)
    neural = rng.normal(size=(5, 7)).astype(np.float32)
    neural /= np.linalg.norm(neural, axis=1, keepdims=True)
    lexical = rng.random(size=(5, 11)).astype(np.float32)
    lexical /= np.linalg.norm(lexical, axis=1, keepdims=True)
    lexical[4] = 0  # row 4 has no title
    w = 0.3
    joined = combine(neural, lexical, w)
    assert joined.shape == (5, 18)
    assert np.allclose(np.linalg.norm(joined, axis=1), 1.0, atol=1e-6)
    expected = (1 - w) * (neural[:4] @ neural[:4].T) + w * (lexical[:4] @ lexical[:4].T)
    assert np.allclose(joined[:4] @ joined[:4].T, expected, atol=1e-6)
    assert np.array_equal(joined[4], np.concatenate([neural[4], np.zeros(11, np.float32)]))
    # with a title on one side only: sqrt(1 - w) times the neural cosine
    assert np.isclose(joined[0] @ joined[4], np.sqrt(1 - w) * (neural[0] @ neural[4]), atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        {"lexical_weight": 1.0},
        {"lexical_weight": -0.1},
        {"lexical_weight": True},
        {"lexical_buckets": 0},
        {"lexical_idf": 3},
    ],
)
def test_config_rejects_bad_lexical_settings(bad):
    with pytest.raises(ValueError, match="encoder.lexical_"):
        EncoderConfig(**bad)


@pytest.fixture(scope="module")
def hybrid_pair():
    from encoder.factory import build_encoder

    config = EncoderConfig(
        kind="sspr",
        device="cpu",
        weights=str(ROOT / "encoder" / "weights" / "sspr.safetensors"),
        lexical_weight=0.2,
        lexical_buckets=256,
    )
    return build_encoder(config), build_encoder(dataclasses.replace(config, lexical_weight=0.0))


def test_hybrid_encoder_joins_the_real_model_and_the_lexical_part(hybrid_pair):
    from encoder.hybrid import HybridEncoder
    from encoder.sspr import SSPR_DIM
    from tests.encoder.test_encoder import _jpeg

    hybrid, pure = hybrid_pair
    assert isinstance(hybrid, HybridEncoder) and not isinstance(pure, HybridEncoder)
    assert hybrid.dim == SSPR_DIM + 256
    titles = ["wd blue 1tb wd10ezex", "WD Blue 1TB WD10EZEX hard drive", None]
    images = [None, _jpeg((200, 30, 30), 1), _jpeg((30, 30, 200), 2)]
    out, neural = hybrid.encode(titles, images), pure.encode(titles, images)
    lexical = LexicalVectorizer(256).transform(titles)
    for view in ("m", "t"):
        got = getattr(out, view)[:2] @ getattr(out, view)[:2].T
        want = 0.8 * (getattr(neural, view)[:2] @ getattr(neural, view)[:2].T) + 0.2 * (lexical[:2] @ lexical[:2].T)
        assert np.allclose(got, want, atol=1e-5), view
    # no title: m is the neural m with zeros after it; i never has a lexical part
    assert np.allclose(out.m[2], np.concatenate([neural.m[2], np.zeros(256)]), atol=1e-6)
    assert not out.i[:, SSPR_DIM:].any()
    assert not out.t[2].any()
    assert list(out.has_text) == [True, True, False] and list(out.has_image) == [False, True, True]


def test_hybrid_model_version_covers_every_lexical_setting(hybrid_pair, tmp_path):
    from encoder.factory import compute_model_version

    hybrid, pure = hybrid_pair
    assert hybrid.model_version == compute_model_version(hybrid.config)
    assert pure.model_version == compute_model_version(pure.config) != hybrid.model_version
    idf = tmp_path / "idf.npy"
    save_idf(np.full(256, 2.0, dtype=np.float32), idf)
    for change in ({"lexical_weight": 0.3}, {"lexical_buckets": 512}, {"lexical_idf": str(idf)}):
        assert compute_model_version(dataclasses.replace(hybrid.config, **change)) != hybrid.model_version, change
    assert compute_model_version(dataclasses.replace(hybrid.config, batch_size=7)) == hybrid.model_version


def test_stored_neural_vectors_plus_the_title_give_the_hybrid_similarities(hybrid_pair):
    """What the pairs stage searches (float16 neural vectors from embed, the lexical part from the
    catalogue's title) is the hybrid encoder's m and t, up to float16 rounding."""
    import pandas as pd

    from jobs.embed import encode_for_storage
    from jobs.pairs import catalogue_lexical, searchable_vectors
    from schemas.vectors import pack_vectors
    from tests.encoder.test_encoder import _jpeg

    hybrid, _ = hybrid_pair
    titles = ["wd blue 1tb wd10ezex", "WD Blue 1TB WD10EZEX hard drive", None, "red mug 300 ml"]
    images = [None, _jpeg((200, 30, 30), 1), _jpeg((30, 30, 200), 2), _jpeg((200, 30, 30), 3)]
    want = hybrid.encode(titles, images)
    stored = encode_for_storage(hybrid, titles, images)
    assert stored.m.shape[1] == hybrid.dim - 256 and stored.model_version == hybrid.model_version
    catalogue = pd.DataFrame(
        {"title": titles, "has_text": stored.has_text, "emb_m": pack_vectors(stored.m), "emb_t": pack_vectors(stored.t)}
    )
    lexical = catalogue_lexical(catalogue, hybrid.config)
    for view in ("m", "t"):
        got = searchable_vectors(catalogue[f"emb_{view}"], lexical, hybrid.config)
        assert got.shape == getattr(want, view).shape
        assert np.abs(got @ got.T - getattr(want, view) @ getattr(want, view).T).max() < 2e-3, view
