"""Pair features for the verifier: what decides whether two candidate listings are one product.

The bi-encoder's cosine alone cannot tell "WD40EZRZ 4TB" from "WD60EZRZ 6TB" (near-identical
titles of different products), nor see that "SONY KDL40V4100" and "Sony Bravia KDL-40V4100 40in
LCD" are one. The verifier (``dedup.verifier``) therefore scores each candidate pair on the
encoder's per-modality similarities plus evidence read from both listings' attributes:

* ``sim_m``, ``sim_t``, ``sim_i`` — the encoder's fused, text and image similarities (NaN
  where a side lacks the modality; the model routes missing values itself). The image pairs
  the verifier learns from are GroceryStore photos (``training.fit_verifier``): an identical
  title with a different photo is a different variant there, and a matching photo with a
  reworded title is the same product;
* ``char_cosine`` — cosine of the titles' character 3–5-gram TF-IDF (``encoder.lexical``);
* ``token_jaccard`` — Jaccard of the titles' word sets;
* ``code_min`` / ``code_max`` — of each side's model codes (tokens with letters and digits, or
  long digit runs; separators removed), the share found in the other title (its letters and
  digits only, so "KDL-40V4100" meets "kdl40v4100"); the smaller and larger of the two shares;
  NaN when neither side has a code;
* ``number_jaccard`` and ``number_conflict`` — Jaccard of the numbers in the titles (NaN when
  either has none) and 1 when both have numbers and share none;
* ``measure_jaccard`` — the same for quantities with a unit ("64gb", "1/2 inch" -> "1/2inch");
* ``brand_match`` — 1 / 0 when both listings carry a brand (equal after normalising), NaN else;
  ``brand_in_title`` — one side's brand appears in the other's title (NaN without a brand);
* ``price_log_ratio`` — ``|log(price_a / price_b)|`` when both have a positive price in the
  same (or an unstated) currency, NaN else;
* ``length_ratio`` — shorter over longer title, in words;
* ``rank_min`` / ``rank_max`` — for each side, how many of its neighbours (its catalogue hits
  at the verifier's neighbour threshold, within the per-query budget) are strictly more similar
  than the partner; the smaller and larger of the two (0 = each is the other's best match);
* ``gap_min`` / ``gap_max`` — for each side, the pair's similarity minus the side's best
  similarity to any *other* neighbour (positive: the partner stands out; NaN: no other
  neighbour). These say what a cosine cannot: on a catalogue where a listing has one twin and
  twenty look-alikes, the twin is the one that stands out.

Every feature is symmetric in the two listings. Pure Python + numpy; no Spark, no torch.
Listing attributes are parsed once per listing (``parse_listings``) and combined per pair
(``pair_features``), so a supplier with many candidate pairs parses each title once.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURE_NAMES = (
    "sim_m",
    "sim_t",
    "sim_i",
    "char_cosine",
    "token_jaccard",
    "code_min",
    "code_max",
    "number_jaccard",
    "number_conflict",
    "measure_jaccard",
    "brand_match",
    "brand_in_title",
    "price_log_ratio",
    "length_ratio",
    "rank_min",
    "rank_max",
    "gap_min",
    "gap_max",
)
"""The verifier's input columns, in order (a change here is a new verifier version)."""

FEATURE_SCHEME = "features-v1"
"""Names this feature set; part of the verifier's version."""

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# a code-like token: letters/digits with inner separators ("kdl-40v4100", "wd40ezrz", "mx-5/b")
_CODE = re.compile(r"[^\W_]+(?:[-/.][^\W_]+)*", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?(?:/\d+)?")
# a number followed by a unit word, optionally separated by a space or hyphen ("64 gb", "12-pack")
_MEASURE = re.compile(r"(\d+(?:[.,]\d+)?(?:/\d+)?)\s?-?\s?([a-z]{1,6}|\"|')(?![a-z])")
_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class ParsedListing:
    """A listing's attributes as the features need them (see ``parse_listing``)."""

    words: frozenset[str]
    codes: frozenset[str]
    numbers: frozenset[str]
    measures: frozenset[str]
    squashed: str  # the title's letters and digits only
    brand: str  # normalised brand, "" when none
    price: float  # NaN when none
    currency: str  # upper-case, "" when none
    n_words: int


def normalise(text: str | None) -> str:
    """NFKC, lower case, whitespace collapsed; "" for None, NaN or a non-string."""
    if not isinstance(text, str) or not text:
        return ""
    return " ".join(unicodedata.normalize("NFKC", str(text)).lower().split())


def _number(token: str) -> str:
    """A number in one spelling: decimal comma as point, trailing zeros of a fraction cut."""
    token = token.replace(",", ".")
    if "." in token and "/" not in token:
        token = token.rstrip("0").rstrip(".")
    return token


def _is_code(token: str) -> bool:
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    return (has_digit and has_alpha and len(token) >= 4) or (token.isdigit() and len(token) >= 5)


def parse_listing(
    title: str | None, brand: str | None = None, price=None, currency: str | None = None
) -> ParsedListing:
    """Parses one listing's title, brand, price and currency.

    Args:
        title: the title (None or "" allowed).
        brand: the brand or manufacturer, if known.
        price: a number, a string like "$399.00" / "12,99 EUR", or None.
        currency: an ISO code, if known.

    Returns:
        The ParsedListing.
    """
    text = normalise(title)
    words = frozenset(w for w in _WORD.findall(text) if len(w) > 1 or w.isdigit())
    codes = frozenset(c for c in (_SEPARATORS.sub("", t) for t in _CODE.findall(text)) if _is_code(c))
    numbers = frozenset(_number(n) for n in _NUMBER.findall(text))
    measures = frozenset(_number(n) + unit for n, unit in _MEASURE.findall(text))
    return ParsedListing(
        words=words,
        codes=codes,
        numbers=numbers,
        measures=measures,
        squashed=_SEPARATORS.sub("", text),
        brand=_SEPARATORS.sub("", normalise(brand)),
        price=parse_price(price),
        currency=normalise(currency).upper(),
        n_words=len(words),
    )


def parse_price(price) -> float:
    """A positive price as float, NaN when absent or unreadable ("$1,299.00" -> 1299.0)."""
    if price is None:
        return math.nan
    if isinstance(price, int | float | np.floating | np.integer):
        value = float(price)
    else:
        digits = re.sub(r"[^\d.,]", "", str(price))
        if "," in digits and "." in digits:
            digits = digits.replace(",", "")  # thousands separators
        elif "," in digits:
            digits = digits.replace(",", ".")  # decimal comma
        try:
            value = float(digits)
        except ValueError:
            return math.nan
    return value if math.isfinite(value) and value > 0 else math.nan


def parse_listings(
    titles: Sequence[str | None],
    brands: Sequence[str | None] | None = None,
    prices: Sequence | None = None,
    currencies: Sequence[str | None] | None = None,
) -> list[ParsedListing]:
    """Parses many listings (``parse_listing`` per row); missing columns count as absent."""
    n = len(titles)
    brands = brands if brands is not None else [None] * n
    prices = prices if prices is not None else [None] * n
    currencies = currencies if currencies is not None else [None] * n
    return [parse_listing(*row) for row in zip(titles, brands, prices, currencies, strict=True)]


def _jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return math.nan
    return len(a & b) / len(a | b)


def _code_share(codes: frozenset[str], other: ParsedListing) -> float:
    if not codes:
        return math.nan
    return sum(1 for c in codes if c in other.codes or c in other.squashed) / len(codes)


def _pair_row(a: ParsedListing, b: ParsedListing) -> list[float]:
    """The attribute features of one pair (everything but the similarities)."""
    share_a, share_b = _code_share(a.codes, b), _code_share(b.codes, a)
    shares = [s for s in (share_a, share_b) if not math.isnan(s)]
    if a.numbers and b.numbers:
        number_jaccard = _jaccard(a.numbers, b.numbers)
        conflict = 0.0 if a.numbers & b.numbers else 1.0
    else:
        number_jaccard = conflict = math.nan
    if a.brand and b.brand:
        brand_match = 1.0 if (a.brand == b.brand or a.brand in b.brand or b.brand in a.brand) else 0.0
    else:
        brand_match = math.nan
    brands_in = [x.brand in y.squashed for x, y in ((a, b), (b, a)) if x.brand]
    if a.price > 0 and b.price > 0 and (not a.currency or not b.currency or a.currency == b.currency):
        price_ratio = abs(math.log(a.price / b.price))
    else:
        price_ratio = math.nan
    longer = max(a.n_words, b.n_words)
    return [
        _jaccard(a.words, b.words) if longer else math.nan,
        min(shares) if shares else math.nan,
        max(shares) if shares else math.nan,
        number_jaccard,
        conflict,
        _jaccard(a.measures, b.measures),
        brand_match,
        (1.0 if any(brands_in) else 0.0) if brands_in else math.nan,
        price_ratio,
        min(a.n_words, b.n_words) / longer if longer else math.nan,
    ]


def neighbour_similarities(
    queries: np.ndarray,
    index_vectors: np.ndarray,
    self_rows: np.ndarray | None,
    min_similarity: float,
    budget: int,
    backend: str = "faiss",
    device: str = "cpu",
) -> np.ndarray:
    """Each query's top neighbour similarities in an index, itself left out.

    Args:
        queries: float32 [n, dim] unit rows.
        index_vectors: float32 [n_index, dim] unit rows (the catalogue the queries live in).
        self_rows: int [n] the row of each query in ``index_vectors`` (-1 where absent), or None
            when the queries are not in the index (a cross-source search).
        min_similarity: neighbours below it are not seen.
        budget: at most this many neighbours per query.
        backend, device: ``dedup.search.find_pairs``'s (the pipeline passes ``dedup.backend`` /
            ``dedup.device``, so the verifier's search runs where the candidate search does).

    Returns:
        float32 [n, budget], each row sorted from most similar down, padded with -inf.
    """
    from dedup.search import find_pairs

    out = np.full((len(queries), budget), -np.inf, dtype=np.float32)
    if len(queries) == 0 or len(index_vectors) == 0:
        return out
    found = find_pairs(
        queries, index_vectors, min_similarity, max_results_per_query=budget + 1, backend=backend, device=device
    )
    keep = np.ones(len(found), dtype=bool)
    if self_rows is not None:
        keep = found.index_idx != np.asarray(self_rows, dtype=np.int64)[found.query_idx]
    rows, sims = found.query_idx[keep], found.similarity[keep]
    # hits come sorted by (query, -similarity): the k-th hit of a query goes to column k
    starts = np.searchsorted(rows, rows, side="left")
    column = np.arange(len(rows)) - starts
    inside = column < budget
    out[rows[inside], column[inside]] = sims[inside]
    return out


def _neighbour_columns(similarity: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of the partner among one side's neighbours, and the partner's gap to the best other."""
    rank = (top > similarity[:, None] + 1e-6).sum(axis=1).astype(np.float64)
    # the partner is (up to float noise) the entry nearest the pair's similarity: leave it out
    partner = np.argmin(np.abs(top - similarity[:, None]), axis=1)
    rows = np.arange(len(top))
    present = np.abs(top[rows, partner] - similarity) <= 1e-5  # not seen: below the neighbour threshold
    others = top.copy()
    others[rows[present], partner[present]] = -np.inf
    best_other = others.max(axis=1, initial=-np.inf).astype(np.float64)
    gap = np.where(np.isfinite(best_other), similarity - best_other, np.nan)
    return rank, gap


def pair_features(
    parsed: Sequence[ParsedListing],
    lexical: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    sim_m: np.ndarray,
    sim_t: np.ndarray,
    sim_i: np.ndarray,
    top_left: np.ndarray,
    top_right: np.ndarray,
) -> np.ndarray:
    """The verifier's features of candidate pairs.

    Args:
        parsed: ``parse_listings`` of the listings the pairs refer to.
        lexical: float32 [n_listings, buckets] unit (or zero) rows of
            ``encoder.lexical.LexicalVectorizer.transform`` of the same listings' titles.
        left, right: int [p] row numbers of each pair's two listings.
        sim_m, sim_t, sim_i: float [p] the encoder's similarities (NaN where absent).
        top_left, top_right: float32 [p, budget] ``neighbour_similarities`` of each pair's left
            and right listing (one row per pair).

    Returns:
        float64 [p, len(FEATURE_NAMES)], NaN where a feature does not apply.
    """
    left = np.asarray(left, dtype=np.int64)
    right = np.asarray(right, dtype=np.int64)
    out = np.full((len(left), len(FEATURE_NAMES)), np.nan, dtype=np.float64)
    if len(left) == 0:
        return out
    out[:, 0] = sim_m
    out[:, 1] = sim_t
    out[:, 2] = sim_i
    has_lexical = (np.abs(lexical[left]).sum(axis=1) > 0) & (np.abs(lexical[right]).sum(axis=1) > 0)
    char = np.einsum("pd,pd->p", lexical[left], lexical[right]).astype(np.float64)
    out[:, 3] = np.where(has_lexical, char, np.nan)
    attributes = len(FEATURE_NAMES) - 4
    out[:, 4:attributes] = [_pair_row(parsed[a], parsed[b]) for a, b in zip(left.tolist(), right.tolist(), strict=True)]
    similarity = np.asarray(sim_m, dtype=np.float64)
    rank_l, gap_l = _neighbour_columns(similarity, np.asarray(top_left, dtype=np.float64))
    rank_r, gap_r = _neighbour_columns(similarity, np.asarray(top_right, dtype=np.float64))
    out[:, attributes] = np.minimum(rank_l, rank_r)
    out[:, attributes + 1] = np.maximum(rank_l, rank_r)
    out[:, attributes + 2] = np.fmin(gap_l, gap_r)
    out[:, attributes + 3] = np.fmax(gap_l, gap_r)
    return out


def modality_similarity(vectors: np.ndarray, present: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine of rows ``left[k]`` and ``right[k]`` of one modality; NaN where either side lacks it.

    Args:
        vectors: float32 [n, dim] unit (or zero) rows.
        present: bool [n], whether each row has the modality.
        left, right: int [p] row numbers.

    Returns:
        float32 [p].
    """
    if len(left) == 0:
        return np.zeros(0, dtype=np.float32)
    sims = np.einsum("nd,nd->n", vectors[left], vectors[right]).astype(np.float32)  # [p]
    sims[~(present[left] & present[right])] = np.nan
    return np.clip(sims, -1.0, 1.0)


def pool_pair_features(
    parsed: Sequence[ParsedListing],
    lexical: np.ndarray,
    m: np.ndarray,
    t: np.ndarray,
    i: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    neighbour_min_similarity: float,
    neighbour_budget: int,
) -> np.ndarray:
    """Features of labelled pairs among one pool of listings (a benchmark's offers or photos).

    The pool plays the supplier's catalogue: each listing's neighbours are the other pool
    listings, as the pipeline's are the supplier's other listings.

    Args:
        parsed, lexical: per pool listing, as ``pair_features`` takes them.
        m, t, i: float32 [n, dim] the encoder's unit vectors of the pool (zero rows where a
            listing lacks the modality).
        left, right: int [p] the pairs' pool rows.
        neighbour_min_similarity, neighbour_budget: the verifier's neighbour settings.

    Returns:
        float64 [p, len(FEATURE_NAMES)].
    """
    n = len(m)
    top = neighbour_similarities(m, m, np.arange(n), neighbour_min_similarity, neighbour_budget)
    has_text = np.abs(t).sum(axis=1) > 0
    has_image = np.abs(i).sum(axis=1) > 0
    return pair_features(
        parsed,
        lexical,
        left,
        right,
        modality_similarity(m, np.ones(n, dtype=bool), left, right),
        modality_similarity(t, has_text, left, right),
        modality_similarity(i, has_image, left, right),
        top[left],
        top[right],
    )
