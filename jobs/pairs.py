"""pairs: per supplier, the run date's new listings against that supplier's catalogue -> `pairs`, `live_pairs`.

The queries are the listings embedded on D (new or changed); the index is the supplier's rows of
D's ``catalog`` (``jobs/catalog.py``: every live listing's latest vectors, D's included, so
duplicates arriving the same night are found too). Only the bucket folders of D's suppliers are
read. The stored vectors are float16 neural vectors (``schemas.vectors``); the task upcasts them
and, for the hybrid encoder, joins each listing's lexical title vector computed from the
catalogue's title (``searchable_vectors``), so the search is exact on what is stored. Search is
exact (``dedup.find_pairs``: faiss ``IndexFlatIP`` range search at ``dedup.min_similarity`` on
``m``); each pair is written once (``listing_id_l < listing_id_r``) with its ``similarity_m`` and the per-modality evidence ``similarity_t`` / ``similarity_i`` (null where
either side lacks the modality). A supplier's new listings are split into blocks of
``dedup.query_block_size`` so a giant supplier becomes several tasks. A query with more hits than
``dedup.max_results_per_query`` keeps its best ones and is counted as saturated. Listings whose
vectors are of another model version than D's are left out (and counted).

With a verifier (``dedup.verifier``; bench/README.md "Verified matching") the search finds
*candidates* at a recall-oriented ``dedup.min_similarity``; in the same task the verifier scores
each candidate's match probability from ``dedup.features`` (the similarities, the two listings'
titles, brands and prices from the catalogue, and each side's neighbours in the supplier's
catalogue), and a candidate becomes a pair when it reaches ``dedup.min_probability``. The
verifier and the lexical vectorizer are built once per Python worker.

``live_pairs`` of D is the live pair graph the groups stage reads: the previous night's, less
every pair of a listing embedded or deleted on D (those pairs were found with vectors the listing
no longer has), plus D's pairs (``found_on`` = D). Without a previous night it is built from
the whole ``pairs`` history once.

Before the partitions are written, the output suite checks that both listings of every pair belong
to the pair's supplier and that similarities lie within [-1, 1], probabilities within [0, 1]
(``jobs.warehouse.publish``).

Cost: sum over suppliers of (new listings x catalogue size), never N^2 over the marketplace.

    spark-submit jobs/pairs.py --run-date 2024-03-01 --config conf/sspr.toml [--min-similarity 0.9]
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from config.errors import DedupError
from dedup.config import DedupConfig
from encoder.config import EncoderConfig
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import BLOCK_HIT_ROWS, PAIR_SEARCH_ROWS, PAIRS, empty_frame, to_ddl
from schemas.vectors import unpack_vectors

log = logging.getLogger(__name__)
STAGE = "pairs"


_WORKER_CACHE: dict[tuple, object] = {}
"""Per Python worker: the verifier and the lexical vectorizer, built on first use; the last
supplier catalogue's vectors (``catalogue_vectors``)."""

VERIFIER_COLUMNS = ("title", "brand", "price", "currency")
"""The listing attributes the verifier reads; the catalogue carries them."""


def get_verifier(path: str):
    """The verifier of ``dedup.verifier``, loaded once per worker."""
    from dedup.verifier import load_verifier

    key = ("verifier", path)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = load_verifier(path)
    return _WORKER_CACHE[key]


def get_lexical(encoder_config: EncoderConfig):
    """The lexical vectorizer of the verifier's ``char_cosine`` (the encoder's IDF), once per worker."""
    from encoder.lexical import LexicalVectorizer

    key = ("lexical", encoder_config.lexical_buckets, encoder_config.lexical_idf)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = LexicalVectorizer(encoder_config.lexical_buckets, encoder_config.lexical_idf)
    return _WORKER_CACHE[key]


def verify_candidates(
    catalogue: pd.DataFrame,
    index_m: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    sim_m: np.ndarray,
    sim_t: np.ndarray,
    sim_i: np.ndarray,
    dedup_config: DedupConfig,
    encoder_config: EncoderConfig,
    lexical: np.ndarray | None = None,
) -> np.ndarray:
    """Match probability of each candidate pair of one supplier.

    Args:
        catalogue: the supplier's catalogue rows (with ``VERIFIER_COLUMNS``), sorted by id.
        index_m: float32 [n, dim] its ``emb_m`` rows.
        left, right: int [p] catalogue rows of each candidate's two listings.
        sim_m, sim_t, sim_i: float [p] the candidates' similarities (NaN where absent).
        dedup_config: names the verifier file; its search backend and device run the neighbour
            search too.
        encoder_config: the lexical settings of ``char_cosine``.
        lexical: float32 [n, buckets] the catalogue's lexical title vectors when the caller has
            them (the hybrid search made them); computed for the rows the pairs touch otherwise.

    Returns:
        float32 [p] calibrated probabilities.
    """
    from dedup.features import neighbour_similarities

    verifier = get_verifier(dedup_config.verifier)
    if len(left) == 0:
        return np.zeros(0, dtype=np.float32)
    # only the listings the candidates touch are parsed and get neighbour lists
    involved, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    sub_left, sub_right = inverse[: len(left)], inverse[len(left) :]
    top = neighbour_similarities(
        index_m[involved],
        index_m,
        involved,
        verifier.neighbour_min_similarity,
        verifier.neighbour_budget,
        backend=dedup_config.backend,
        device=dedup_config.device,
    )
    return score_candidates(
        catalogue.iloc[involved],
        None if lexical is None else lexical[involved],
        top,
        sub_left,
        sub_right,
        (sim_m, sim_t, sim_i),
        dedup_config,
        encoder_config,
    )


def score_candidates(
    rows: pd.DataFrame,
    lexical: np.ndarray | None,
    top: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    similarities: tuple[np.ndarray, np.ndarray, np.ndarray],
    dedup_config: DedupConfig,
    encoder_config: EncoderConfig,
) -> np.ndarray:
    """Match probability of candidate pairs whose listings' neighbour lists are known.

    Args:
        rows: the listings the pairs touch (``VERIFIER_COLUMNS``, ``has_text``).
        lexical: float32 [len(rows), buckets] their lexical title vectors, or None to compute them.
        top: float32 [len(rows), budget] each listing's ``neighbour_similarities`` in its
            supplier's whole catalogue.
        left, right: int [p] row numbers (into ``rows``) of each candidate's two listings.
        similarities: float [p] ``sim_m``, ``sim_t``, ``sim_i`` of the candidates (NaN where absent).
        dedup_config: names the verifier file.
        encoder_config: the lexical settings of ``char_cosine``.

    Returns:
        float32 [p] calibrated probabilities.
    """
    from dedup.features import pair_features, parse_listing

    verifier = get_verifier(dedup_config.verifier)
    if len(left) == 0:
        return np.zeros(0, dtype=np.float32)
    parsed = [
        parse_listing(_value(r.title), _value(r.brand), _value(r.price), _value(r.currency))
        for r in rows.itertuples(index=False)
    ]
    if lexical is None:
        lexical = get_lexical(encoder_config).transform(
            [_value(t) for t in rows["title"]], rows["has_text"].to_numpy(bool)
        )
    sim_m, sim_t, sim_i = similarities
    features = pair_features(parsed, lexical, left, right, sim_m, sim_t, sim_i, top[left], top[right])
    return verifier.probabilities(features).astype(np.float32)


def text_image_similarities(
    rows: pd.DataFrame, lexical: np.ndarray | None, left: np.ndarray, right: np.ndarray, encoder_config: EncoderConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``similarity_t`` and ``similarity_i`` of pairs, from the stored vectors of the listings they touch.

    Args:
        rows: the listings (``emb_t``, ``emb_i``, ``has_text``, ``has_image``).
        lexical: float32 [len(rows), buckets] their lexical title vectors (a hybrid), or None.
        left, right: int [p] row numbers (into ``rows``) of each pair's two listings.
        encoder_config: the hybrid's lexical weight.

    Returns:
        float32 [p] each, NaN where either side lacks the modality.
    """
    from dedup.features import modality_similarity

    if len(left) == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    t = searchable_vectors(rows["emb_t"], lexical, encoder_config)
    i = unpack_vectors(rows["emb_i"].tolist())
    sim_t = modality_similarity(t, rows["has_text"].to_numpy(bool), left, right)
    sim_i = modality_similarity(i, rows["has_image"].to_numpy(bool), left, right)
    return sim_t, sim_i


def _value(value):
    """None for the nulls pandas hands over (None, NaN, NaT)."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def searchable_vectors(stored: pd.Series, lexical: np.ndarray | None, encoder_config: EncoderConfig) -> np.ndarray:
    """The float32 vectors the search compares, from stored ones (``schemas.vectors``).

    Args:
        stored: float16 bytes of one view (``emb_m`` or ``emb_t``), one per row.
        lexical: float32 [n, buckets] the rows' lexical title vectors (a hybrid encoder), or None.
        encoder_config: the lexical weight.

    Returns:
        float32 [n, dim]: the upcast, renormalised neural vectors, joined with the lexical part
        exactly as the hybrid encoder joins them (``encoder.lexical.combine``) when it has one.
    """
    from encoder.lexical import combine

    neural = unpack_vectors(stored.tolist())  # every row's width is the first's (else ValueError)
    if lexical is None:
        return neural
    return combine(neural, lexical, float(encoder_config.lexical_weight))


def catalogue_lexical(catalogue: pd.DataFrame, encoder_config: EncoderConfig) -> np.ndarray | None:
    """float32 [n, buckets] the catalogue rows' lexical title vectors, or None without a hybrid.

    From the rows' ``LEXICAL_TERMS`` where they carry them (``with_lexical_terms``: computed
    once per listing), else from their titles.
    """
    if encoder_config.lexical_weight <= 0:
        return None
    if LEXICAL_TERMS[0] in catalogue.columns:
        return dense_lexical(catalogue[LEXICAL_TERMS[0]], catalogue[LEXICAL_TERMS[1]], encoder_config.lexical_buckets)
    titles = [_value(t) for t in catalogue["title"]]
    return get_lexical(encoder_config).transform(titles, catalogue["has_text"].to_numpy(bool))


LEXICAL_TERMS = ("lexical_index", "lexical_value")
"""Columns of a row's non-zero lexical title weights: bucket numbers and their float32 values."""


def lexical_terms(catalogue: pd.DataFrame, encoder_config: EncoderConfig) -> tuple[list, list]:
    """Each row's non-zero lexical title weights (``LEXICAL_TERMS``): int32 buckets and float32 values."""
    if catalogue.empty:
        return [], []
    dense = catalogue_lexical(catalogue, encoder_config)
    rows, columns = np.nonzero(dense)
    splits = np.searchsorted(rows, np.arange(1, len(catalogue)))
    values = dense[rows, columns]
    return np.split(columns.astype(np.int32), splits), np.split(values, splits)


def dense_lexical(index: pd.Series, value: pd.Series, buckets: int) -> np.ndarray:
    """float32 [n, buckets] lexical vectors from ``LEXICAL_TERMS``: the very values ``lexical_terms`` took."""
    out = np.zeros((len(index), buckets), dtype=np.float32)
    lengths = np.fromiter((len(v) for v in index), dtype=np.int64, count=len(index))
    if lengths.sum():
        rows = np.repeat(np.arange(len(index)), lengths)
        out[rows, np.concatenate(list(index))] = np.concatenate(list(value)).astype(np.float32)
    return out


def with_lexical_terms(frame, encoder_config: EncoderConfig):
    """Spark rows with their ``LEXICAL_TERMS`` added, so later tasks densify instead of re-reading titles.

    A catalogue searched in blocks meets every query block (and the neighbour search): its
    lexical part, a Python loop over titles, is computed here once per listing instead of once
    per task. Without a hybrid encoder the rows are returned as they are.
    """
    from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

    if encoder_config.lexical_weight <= 0:
        return frame
    schema = StructType(
        [
            *frame.schema.fields,
            StructField(LEXICAL_TERMS[0], ArrayType(IntegerType())),
            StructField(LEXICAL_TERMS[1], ArrayType(FloatType())),
        ]
    )

    def add(batches):
        for batch in batches:
            index, value = lexical_terms(batch, encoder_config)
            yield batch.assign(**{LEXICAL_TERMS[0]: index, LEXICAL_TERMS[1]: value})

    return frame.mapInPandas(add, schema=schema)


def catalogue_digest(catalogue: pd.DataFrame, encoder_config: EncoderConfig) -> str:
    """A digest of what ``catalogue_vectors`` computes from: ids, ``emb_m``, titles, ``has_text``."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        repr((encoder_config.lexical_weight, encoder_config.lexical_buckets, encoder_config.lexical_idf)).encode()
    )
    digest.update("\x00".join(catalogue["listing_id"]).encode())
    digest.update(b"".join(catalogue["emb_m"]))
    digest.update(catalogue["has_text"].to_numpy(bool).tobytes())
    if encoder_config.lexical_weight > 0:
        titles = ("\x01" if t is None else str(t) for t in map(_value, catalogue["title"]))
        digest.update("\x00".join(titles).encode())
    return digest.hexdigest()


_CATALOGUE_KEY = ("catalogue",)


def forget_catalogue_vectors() -> None:
    """Drops this worker's kept catalogue vectors (``catalogue_vectors``), if any."""
    _WORKER_CACHE.pop(_CATALOGUE_KEY, None)


def catalogue_vectors(catalogue: pd.DataFrame, encoder_config: EncoderConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """The catalogue's lexical title vectors and searchable ``m`` vectors, reused across its blocks.

    A big supplier's query blocks each get the same catalogue; building its vectors (the lexical
    part is a Python loop over titles, ~0.1 ms each) once per worker instead of once per block
    saves that much per extra block. One catalogue is kept per worker, keyed by
    ``catalogue_digest``, and dropped before another is built; the arrays are read-only.

    Args:
        catalogue: the supplier's catalogue rows sorted by ``listing_id`` (``find_block_pairs``).
        encoder_config: the hybrid's lexical settings.

    Returns:
        ``(lexical, index_m)``: float32 [n, buckets] or None without a hybrid, and float32 [n, dim].
    """
    digest = catalogue_digest(catalogue, encoder_config)
    cached = _WORKER_CACHE.get(_CATALOGUE_KEY)
    if cached is not None and cached[0] == digest:
        log.info("catalogue vectors of %d rows reused from an earlier block on this worker", len(catalogue))
        return cached[1], cached[2]
    forget_catalogue_vectors()  # free the previous supplier's vectors first
    lexical = catalogue_lexical(catalogue, encoder_config)
    index_m = searchable_vectors(catalogue["emb_m"], lexical, encoder_config)
    for array in (lexical, index_m):
        if array is not None:
            array.flags.writeable = False  # shared by later blocks: nobody may change them
    _WORKER_CACHE[_CATALOGUE_KEY] = (digest, lexical, index_m)
    return lexical, index_m


def find_block_pairs(
    key: tuple,
    queries: pd.DataFrame,
    catalogue: pd.DataFrame,
    dedup_config: DedupConfig,
    encoder_config: EncoderConfig,
) -> pd.DataFrame:
    """cogroup body: finds the duplicate pairs of one (supplier, query block).

    Args:
        key: ``(supplier_id, query_block)``.
        queries: the block's new listings (``listing_id``, ``model_version``); each is in the catalogue.
        catalogue: the supplier's catalogue (``listing_id``, ``emb_m``, ``emb_t``, ``emb_i``,
            ``has_text``, ``has_image``; ``title`` with a hybrid encoder, ``VERIFIER_COLUMNS`` with a
            verifier; optional ``asked_in``: the query block a listing is a query of tonight, null
            for an old one); it contains the queries themselves.
        dedup_config: the search and verifier settings.
        encoder_config: the hybrid's lexical settings (``searchable_vectors``).

    Returns:
        Rows of ``PAIR_SEARCH_ROWS``; each pair once with ``listing_id_l < listing_id_r``:
        candidates whose probability reached ``dedup.min_probability`` (every candidate, with a
        null probability, without a verifier); then one ``candidates`` row with the count of
        candidates and the task's size and search seconds, the saturated queries, and a
        ``cross`` row (ids only) for each candidate whose other listing is a query of another
        block, which may find it too (``candidate_counts`` takes back those found twice).

    Raises:
        ValueError: a query is not in the catalogue.
    """
    from dedup.search import find_pairs_by_id

    supplier_id = key[0]
    if queries.empty or catalogue.empty:
        return empty_frame(PAIR_SEARCH_ROWS)
    model_version = str(queries["model_version"].iloc[0])
    started = time.monotonic()
    # Rows arrive in shuffle order; sorting fixes the search's row order, so a rerun computes
    # every similarity with the same operations and writes identical values.
    queries = queries.sort_values("listing_id", kind="stable")
    catalogue = catalogue.sort_values("listing_id", kind="stable").reset_index(drop=True)
    position = {listing_id: i for i, listing_id in enumerate(catalogue["listing_id"])}
    missing = [i for i in queries["listing_id"] if i not in position]
    if missing:
        raise ValueError(f"supplier {supplier_id}: queries {missing[:5]} are not in the catalogue they search")
    lexical, index_m = catalogue_vectors(catalogue, encoder_config)
    query_rows = np.array([position[i] for i in queries["listing_id"]], dtype=np.int64)
    search_started = time.monotonic()
    pairs, saturated = find_pairs_by_id(
        queries["listing_id"].tolist(),
        index_m[query_rows],
        catalogue["listing_id"].tolist(),
        index_m,
        min_similarity=dedup_config.min_similarity,
        max_results_per_query=dedup_config.max_results_per_query,
        backend=dedup_config.backend,
        device=dedup_config.device,
    )
    search_seconds = time.monotonic() - search_started
    left_ids = pairs.column("listing_id_l").to_pylist()
    right_ids = pairs.column("listing_id_r").to_pylist()
    left = np.array([position[i] for i in left_ids], dtype=np.int64)
    right = np.array([position[i] for i in right_ids], dtype=np.int64)
    sim_m = pairs.column("similarity").to_numpy().astype(np.float32)
    # t and i only for the listings the candidates touch
    involved, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    sim_t, sim_i = text_image_similarities(
        catalogue.iloc[involved],
        None if lexical is None else lexical[involved],
        inverse[: len(left)],
        inverse[len(left) :],
        encoder_config,
    )
    candidates = len(left_ids)
    cross = {"kind": [], "supplier_id": [], "listing_id_l": [], "listing_id_r": [], "model_version": []}
    if "asked_in" in catalogue.columns and candidates:
        # a candidate of two new listings in different query blocks can be found from both
        asked = catalogue["asked_in"].to_numpy(dtype=np.float64, na_value=np.nan)
        block_of_l, block_of_r = asked[left], asked[right]
        picked = np.flatnonzero(~np.isnan(block_of_l) & ~np.isnan(block_of_r) & (block_of_l != block_of_r))
        cross = {
            "kind": ["cross"] * len(picked),
            "supplier_id": [supplier_id] * len(picked),
            "listing_id_l": [left_ids[k] for k in picked],
            "listing_id_r": [right_ids[k] for k in picked],
            "model_version": [model_version] * len(picked),
        }
    probability = np.full(len(left_ids), np.nan, dtype=np.float32)
    if dedup_config.verifier:
        probability = verify_candidates(
            catalogue, index_m, left, right, sim_m, sim_t, sim_i, dedup_config, encoder_config, lexical
        )
        keep = probability >= dedup_config.min_probability
        left_ids = [i for i, k in zip(left_ids, keep, strict=True) if k]
        right_ids = [i for i, k in zip(right_ids, keep, strict=True) if k]
        sim_m, sim_t, sim_i, probability = sim_m[keep], sim_t[keep], sim_i[keep], probability[keep]
    out = pd.DataFrame(
        {
            "kind": "pair",
            "supplier_id": supplier_id,
            # explicit dtype: an empty list would be inferred float64, which Spark cannot cast
            "listing_id_l": pd.Series(left_ids, dtype=object),
            "listing_id_r": pd.Series(right_ids, dtype=object),
            "similarity_m": sim_m,
            "similarity_t": sim_t,
            "similarity_i": sim_i,
            "match_score": probability,
            "model_version": model_version,
        },
        columns=PAIR_SEARCH_ROWS.names,
    )
    # Float rounding can put a dot product of unit vectors at 1.0000001; the contract says [-1, 1].
    similarity_columns = ["similarity_m", "similarity_t", "similarity_i"]
    out[similarity_columns] = out[similarity_columns].clip(-1.0, 1.0)
    counted = {
        "kind": ["candidates"],
        "supplier_id": [supplier_id],
        "model_version": [model_version],
        "candidates": [candidates],
        "queries": [len(queries)],
        "catalogue_rows": [len(catalogue)],
        "dim": [index_m.shape[1]],
        "search_seconds": [search_seconds],
    }
    flagged = {
        "kind": ["saturated"] * len(saturated),
        "supplier_id": [supplier_id] * len(saturated),
        "listing_id_l": list(saturated),
        "model_version": [model_version] * len(saturated),
    }
    # Typed Arrow parts, then one frame: concatenating pandas parts with all-null columns makes
    # pandas guess (and warn about) their dtypes.
    parts = [pa.Table.from_pandas(out, schema=PAIR_SEARCH_ROWS, preserve_index=False)]
    parts += [_typed_rows(PAIR_SEARCH_ROWS, rows) for rows in (counted, flagged, cross)]
    out = pa.concat_tables(parts).to_pandas()
    for column in ("candidates", "queries", "catalogue_rows", "dim"):
        out[column] = out[column].astype("Int64")  # nullable: null on pair rows
    log.info(
        "supplier %s block %s: %d queries x %d catalogue -> %d candidates -> %d pairs (%d saturated) in %.2fs",
        supplier_id,
        key[1],
        len(queries),
        len(catalogue),
        candidates,
        len(left_ids),
        len(saturated),
        time.monotonic() - started,
    )
    return out


def search_catalogue_block(
    key: tuple,
    queries: pd.DataFrame,
    block: pd.DataFrame,
    min_similarity: float,
    budget: int,
    dedup_config: DedupConfig,
    encoder_config: EncoderConfig,
) -> pd.DataFrame:
    """cogroup body: each query's best hits in one catalogue block of its supplier.

    Because the blocks partition the catalogue and each keeps, per query, its best ``budget``
    hits (ties to the lower id), a query's best ``budget`` hits over the whole catalogue are the
    best of the blocks' (``merge_block_hits``): the split answer is the whole one.

    Args:
        key: ``(supplier_id, catalogue_block, query_block)``.
        queries: the task's queries (``listing_id``, ``emb_m``, ``has_text``, ``model_version``;
            ``title`` with a hybrid encoder).
        block: the catalogue block's rows (``listing_id``, ``emb_m``, ``has_text``; ``title``
            with a hybrid encoder).
        min_similarity: hits below it are not seen.
        budget: the most hits kept per query.
        dedup_config: the search backend and device.
        encoder_config: the hybrid's lexical settings (``searchable_vectors``).

    Returns:
        Rows of ``BLOCK_HIT_ROWS``: "hit" rows, "cut" rows for queries with more than
        ``budget`` hits in the block, one "task" row.
    """
    from dedup.search import find_pairs

    supplier_id = key[0]
    if queries.empty or block.empty:
        return empty_frame(BLOCK_HIT_ROWS)
    # shuffle order -> a fixed row order, so a rerun computes the same values (find_block_pairs)
    queries = queries.sort_values("listing_id", kind="stable").reset_index(drop=True)
    block = block.sort_values("listing_id", kind="stable").reset_index(drop=True)
    model_version = str(queries["model_version"].iloc[0])
    _lexical, index_m = catalogue_vectors(block, encoder_config)
    query_m = searchable_vectors(queries["emb_m"], catalogue_lexical(queries, encoder_config), encoder_config)
    started = time.monotonic()
    found = find_pairs(
        query_m,
        index_m,
        min_similarity,
        max_results_per_query=budget,
        backend=dedup_config.backend,
        device=dedup_config.device,
    )
    seconds = time.monotonic() - started
    query_ids = queries["listing_id"].to_numpy(object)
    block_ids = block["listing_id"].to_numpy(object)
    cut = query_ids[found.saturated].tolist()
    n_hits = len(found)
    hits = {
        "kind": ["hit"] * n_hits,
        "supplier_id": [supplier_id] * n_hits,
        "listing_id": query_ids[found.query_idx].tolist(),
        "match_id": block_ids[found.index_idx].tolist(),
        "similarity": found.similarity,
        "model_version": [model_version] * n_hits,
    }
    cuts = {"kind": ["cut"] * len(cut), "supplier_id": [supplier_id] * len(cut), "listing_id": cut}
    task = {
        "kind": ["task"],
        "supplier_id": [supplier_id],
        "model_version": [model_version],
        "queries": [len(queries)],
        "catalogue_rows": [len(block)],
        "dim": [index_m.shape[1]],
        "search_seconds": [seconds],
    }
    out = pa.concat_tables([_typed_rows(BLOCK_HIT_ROWS, part) for part in (hits, cuts, task)]).to_pandas()
    for column in ("queries", "catalogue_rows", "dim"):
        out[column] = out[column].astype("Int64")  # nullable: null on hit rows
    log.info(
        "supplier %s catalogue block %s x query block %s: %d queries x %d rows -> %d hits (%d cut) in %.2fs",
        supplier_id,
        key[1],
        key[2],
        len(queries),
        len(block),
        n_hits,
        len(cut),
        seconds,
    )
    return out


def _typed_rows(schema: pa.Schema, columns: dict[str, list]) -> pa.Table:
    """A table of ``schema`` from the given columns; the others null."""
    n = len(columns["kind"])
    return pa.table(
        {f.name: pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema},
        schema=schema,
    )


def search_in_blocks(queries, catalogue, min_similarity: float, budget: int, dedup_config, encoder_config):
    """Every query against every catalogue block of its supplier, one task per (catalogue block, query block).

    Args:
        queries: ``supplier_id``, ``listing_id``, ``emb_m``, ``has_text``, ``model_version`` (and
            ``title`` with a hybrid encoder) of the listings to search for.
        catalogue: the suppliers' catalogue rows with the same columns.
        min_similarity, budget: what each task keeps per query (``search_catalogue_block``).
        dedup_config: block sizes, search backend.
        encoder_config: the hybrid's lexical settings.

    Returns:
        Rows of ``BLOCK_HIT_ROWS`` from every task.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    columns = ["listing_id", "emb_m", "has_text", "model_version"]
    if encoder_config.lexical_weight > 0:
        columns.append("title")
        columns += [c for c in LEXICAL_TERMS if c in catalogue.columns and c in queries.columns]
    by_id = Window.partitionBy("supplier_id").orderBy("listing_id")

    def fresh(frame):
        # new column identities: both sides of the cogroup come from the catalogue and from each
        # other, and Spark finds columns of the same identity ambiguous
        return frame.select(*[F.col(c).alias(c) for c in frame.columns])

    def numbered(frame, name: str, size: int):
        return frame.select(
            F.col("supplier_id").alias("supplier_id"),
            F.floor((F.row_number().over(by_id) - 1) / size).alias(name),
            *[F.col(c).alias(c) for c in columns],
        )

    blocks = numbered(catalogue, "catalogue_block", dedup_config.catalogue_block_size)
    asked = numbered(queries, "query_block", dedup_config.query_block_size)
    grid = ["supplier_id", "catalogue_block", "query_block"]
    # each query meets every block of its supplier, each block every query block
    query_side = fresh(asked.join(blocks.select("supplier_id", "catalogue_block").distinct(), on="supplier_id"))
    block_side = fresh(blocks.join(asked.select("supplier_id", "query_block").distinct(), on="supplier_id"))
    return (
        query_side.groupBy(*grid)
        .cogroup(block_side.groupBy(*grid))
        .applyInPandas(
            lambda key, q, c: search_catalogue_block(key, q, c, min_similarity, budget, dedup_config, encoder_config),
            schema=to_ddl(BLOCK_HIT_ROWS),
        )
    )


def merge_block_hits(hits, budget: int):
    """Each query's best ``budget`` hits over all its blocks, and the queries that had more.

    Args:
        hits: ``search_in_blocks`` rows.
        budget: the per-query budget the blocks kept.

    Returns:
        ``(best, cut)``: "hit" rows ranked within the budget by similarity (ties to the lower
        ``match_id``, as one search over the whole catalogue ranks them); ``supplier_id``,
        ``listing_id`` of the queries with more than ``budget`` hits in all.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    best_first = Window.partitionBy("supplier_id", "listing_id").orderBy(F.desc("similarity"), F.asc("match_id"))
    ranked = hits.filter("kind = 'hit'").withColumn("_rank", F.row_number().over(best_first))
    best = ranked.filter(F.col("_rank") <= budget).drop("_rank")
    over = ranked.filter(F.col("_rank") == budget + 1).select("supplier_id", "listing_id")
    cut = hits.filter("kind = 'cut'").select("supplier_id", "listing_id").unionByName(over).distinct()
    return best, cut


def neighbour_lists(listings, catalogue, budget: int, min_similarity: float, dedup_config, encoder_config):
    """Each listing's top ``budget`` neighbour similarities in its supplier's catalogue, itself left out.

    The blocked form of ``dedup.features.neighbour_similarities``: the best ``budget + 1`` hits
    over the blocks, then the listing itself removed, then the best ``budget``.

    Returns:
        ``supplier_id``, ``listing_id``, ``neighbours`` (array<float>, most similar first).
    """
    from pyspark.sql import functions as F

    hits = search_in_blocks(listings, catalogue, min_similarity, budget + 1, dedup_config, encoder_config)
    best, _cut = merge_block_hits(hits, budget + 1)
    return (
        best.filter(F.col("listing_id") != F.col("match_id"))
        .groupBy("supplier_id", "listing_id")
        .agg(F.slice(F.sort_array(F.collect_list("similarity"), asc=False), 1, budget).alias("neighbours"))
    )


LISTING_EVIDENCE = ("emb_t", "emb_i", "has_text", "has_image")
"""What the verify step joins onto each side of a pair, besides the verifier's attributes."""


def verify_pair_block(
    key: tuple, pairs: pd.DataFrame, dedup_config: DedupConfig, encoder_config: EncoderConfig
) -> pd.DataFrame:
    """applyInPandas body: the t / i similarities and match probability of a block of candidate pairs.

    Args:
        key: ``(supplier_id, pair_block)``.
        pairs: candidates (``listing_id_l`` < ``listing_id_r``, ``similarity_m``,
            ``model_version``) with each side's ``LISTING_EVIDENCE``, attributes and
            ``neighbours`` as ``l_<column>`` / ``r_<column>``.
        dedup_config: the verifier and its operating point.
        encoder_config: the hybrid's lexical settings.

    Returns:
        Rows of ``PAIR_SEARCH_ROWS``: the pairs kept (as ``find_block_pairs`` keeps them), then
        one "candidates" row counting the block's candidates.
    """
    supplier_id = key[0]
    if pairs.empty:
        return empty_frame(PAIR_SEARCH_ROWS)
    pairs = pairs.sort_values(["listing_id_l", "listing_id_r"], kind="stable").reset_index(drop=True)
    model_version = str(pairs["model_version"].iloc[0])
    side = [c[2:] for c in pairs.columns if c.startswith("l_")]
    sides = [
        pairs[[f"listing_id_{s}", *(f"{s}_{c}" for c in side)]].set_axis(["listing_id", *side], axis=1)
        for s in ("l", "r")
    ]
    # every listing the block touches, once, in id order
    rows = pd.concat(sides).drop_duplicates("listing_id").sort_values("listing_id", kind="stable")
    rows = rows.reset_index(drop=True)
    position = {listing_id: i for i, listing_id in enumerate(rows["listing_id"])}
    left = np.array([position[i] for i in pairs["listing_id_l"]], dtype=np.int64)
    right = np.array([position[i] for i in pairs["listing_id_r"]], dtype=np.int64)
    lexical = catalogue_lexical(rows, encoder_config)
    sim_m = pairs["similarity_m"].to_numpy(np.float32)
    sim_t, sim_i = text_image_similarities(rows, lexical, left, right, encoder_config)
    keep = np.ones(len(pairs), dtype=bool)
    probability = np.full(len(pairs), np.nan, dtype=np.float32)
    if dedup_config.verifier:
        budget = get_verifier(dedup_config.verifier).neighbour_budget
        top = np.full((len(rows), budget), -np.inf, dtype=np.float32)
        for k, values in enumerate(rows["neighbours"]):
            if values is not None and len(values):
                top[k, : len(values)] = values
        probability = score_candidates(
            rows, lexical, top, left, right, (sim_m, sim_t, sim_i), dedup_config, encoder_config
        )
        keep = probability >= dedup_config.min_probability
    kept = {
        "kind": ["pair"] * int(keep.sum()),
        "supplier_id": [supplier_id] * int(keep.sum()),
        "listing_id_l": pairs["listing_id_l"][keep].tolist(),
        "listing_id_r": pairs["listing_id_r"][keep].tolist(),
        # float rounding can put a dot product of unit vectors at 1.0000001 (find_block_pairs)
        "similarity_m": np.clip(sim_m[keep], -1.0, 1.0),
        "similarity_t": np.clip(sim_t[keep], -1.0, 1.0),
        "similarity_i": np.clip(sim_i[keep], -1.0, 1.0),
        "match_score": probability[keep],
        "model_version": [model_version] * int(keep.sum()),
    }
    counted = {
        "kind": ["candidates"],
        "supplier_id": [supplier_id],
        "model_version": [model_version],
        "candidates": [len(pairs)],
    }
    out = pa.concat_tables([_typed_rows(PAIR_SEARCH_ROWS, kept), _typed_rows(PAIR_SEARCH_ROWS, counted)]).to_pandas()
    for column in ("candidates", "queries", "catalogue_rows", "dim"):
        out[column] = out[column].astype("Int64")
    log.info("supplier %s pair block %s: %d candidates -> %d pairs", supplier_id, key[1], len(pairs), int(keep.sum()))
    return out


def find_pairs_in_blocks(queries, catalogue, dedup_config: DedupConfig, encoder_config: EncoderConfig):
    """Finds pairs of suppliers whose catalogues are searched in (catalogue block x query block) tasks.

    No task holds a supplier's whole catalogue: candidates are the per-query best of the blocks'
    hits (``merge_block_hits``), written once per pair with the larger of its two directions'
    similarities (as ``dedup.search.find_pairs_by_id``); the verifier's neighbour lists come from
    a second blocked search over the listings the candidates touch; then each block of
    ``query_block_size`` candidates gets its t / i similarities and probability with both sides'
    vectors and attributes joined on. The union is the whole-catalogue answer of ``find_block_pairs``.

    Args:
        queries: the run date's new listings (catalogue rows).
        catalogue: the suppliers' catalogue rows (one model version).
        dedup_config: thresholds, budget, block sizes, verifier.
        encoder_config: the hybrid's lexical settings.

    Returns:
        ``(found, cached)``: rows of ``PAIR_SEARCH_ROWS`` (pairs, "candidates" rows: one per
        search task with its size and none counted, one per pair block with its count;
        "saturated" queries), and the DataFrames persisted on the way (unpersist when done).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    budget = dedup_config.max_results_per_query
    cached = []
    if encoder_config.lexical_weight > 0:
        catalogue = with_lexical_terms(catalogue, encoder_config).persist()
        cached.append(catalogue)
        # the queries are catalogue rows: take them with their terms
        queries = catalogue.join(
            queries.select("supplier_id", "listing_id"), on=["supplier_id", "listing_id"], how="left_semi"
        )
    hits = search_in_blocks(
        queries, catalogue, dedup_config.min_similarity, budget, dedup_config, encoder_config
    ).persist()
    best, cut = merge_block_hits(hits, budget)
    one_way = best.filter(F.col("listing_id") != F.col("match_id")).select(
        "supplier_id",
        F.least("listing_id", "match_id").alias("listing_id_l"),
        F.greatest("listing_id", "match_id").alias("listing_id_r"),
        F.col("similarity").alias("similarity_m"),
        "model_version",
    )
    # a pair of two new listings is found from both: keep the larger similarity, once
    larger_first = Window.partitionBy("supplier_id", "listing_id_l", "listing_id_r").orderBy(F.desc("similarity_m"))
    candidates = (
        one_way.withColumn("_rank", F.row_number().over(larger_first)).filter("_rank = 1").drop("_rank").persist()
    )
    extra = [c for c in VERIFIER_COLUMNS if dedup_config.verifier or (c == "title" and encoder_config.lexical_weight)]
    terms = [c for c in LEXICAL_TERMS if c in catalogue.columns]
    evidence = catalogue.select("supplier_id", "listing_id", *LISTING_EVIDENCE, *extra, *terms)
    if dedup_config.verifier:
        verifier = get_verifier(dedup_config.verifier)
        touched = (
            candidates.select("supplier_id", F.col("listing_id_l").alias("listing_id"))
            .unionByName(candidates.select("supplier_id", F.col("listing_id_r").alias("listing_id")))
            .distinct()
        )
        listings = catalogue.join(touched, on=["supplier_id", "listing_id"], how="left_semi")
        neighbours = neighbour_lists(
            listings,
            catalogue,
            verifier.neighbour_budget,
            verifier.neighbour_min_similarity,
            dedup_config,
            encoder_config,
        )
        evidence = evidence.join(neighbours, on=["supplier_id", "listing_id"], how="left")
    else:
        evidence = evidence.withColumn("neighbours", F.lit(None).cast("array<float>"))
    # blocks of candidates numbered before the vectors are joined on: the window sorts a giant
    # supplier's candidates in one task, so its rows stay small
    in_order = Window.partitionBy("supplier_id").orderBy("listing_id_l", "listing_id_r")
    blocked = candidates.withColumn(
        "pair_block", F.floor((F.row_number().over(in_order) - 1) / dedup_config.query_block_size)
    )
    for side in ("l", "r"):
        named = evidence.select(
            F.col("supplier_id").alias("supplier_id"),
            F.col("listing_id").alias(f"listing_id_{side}"),
            *[F.col(c).alias(f"{side}_{c}") for c in evidence.columns if c not in ("supplier_id", "listing_id")],
        )
        blocked = blocked.join(named, on=["supplier_id", f"listing_id_{side}"])
    verified = blocked.groupBy("supplier_id", "pair_block").applyInPandas(
        lambda key, rows: verify_pair_block(key, rows, dedup_config, encoder_config), schema=to_ddl(PAIR_SEARCH_ROWS)
    )
    tasks = hits.filter("kind = 'task'").select(
        F.lit("candidates").alias("kind"),
        "supplier_id",
        "model_version",
        F.lit(0).cast("long").alias("candidates"),
        "queries",
        "catalogue_rows",
        "dim",
        "search_seconds",
    )
    saturated = cut.select(F.lit("saturated").alias("kind"), "supplier_id", F.col("listing_id").alias("listing_id_l"))
    found = verified.unionByName(tasks, allowMissingColumns=True).unionByName(saturated, allowMissingColumns=True)
    return found.select(*PAIR_SEARCH_ROWS.names), [*cached, hits, candidates]


class SupplierSearch(NamedTuple):
    """What ``find_supplier_pairs`` returns."""

    pairs: object  # rows of the ``PAIRS`` contract
    saturated: object  # ``supplier_id``, ``listing_id_l`` of the queries cut by the budget
    found: object  # the persisted ``PAIR_SEARCH_ROWS`` both read (its "candidates" rows: the plan)
    cached: list  # every DataFrame persisted on the way, ``found`` included
    blocked_suppliers: list  # the suppliers searched in catalogue blocks

    def release(self) -> None:
        """Unpersists what the search persisted."""
        for frame in self.cached:
            frame.unpersist()


def catalogue_sizes(catalogue) -> dict[str, int]:
    """``{supplier_id: catalogue rows}`` of the suppliers in ``catalogue`` (one Spark action)."""
    return {r["supplier_id"]: int(r["count"]) for r in catalogue.groupBy("supplier_id").count().collect()}


def find_supplier_pairs(
    queries,
    catalogue,
    dedup_config: DedupConfig,
    run_date: str,
    encoder_config: EncoderConfig,
    sizes: dict[str, int] | None = None,
) -> SupplierSearch:
    """Finds pairs per (supplier, query block), in catalogue blocks where a catalogue is big.

    A supplier whose catalogue has at most ``dedup.catalogue_block_size`` rows is searched in one
    task per query block with its whole catalogue (``find_block_pairs``); a bigger one in
    (catalogue block x query block) tasks merged exactly (``find_pairs_in_blocks``).

    Args:
        queries: the run date's live embeddings.
        catalogue: the suppliers' ``catalog`` rows restricted to the queries' model version (they
            carry ``VERIFIER_COLUMNS``); it holds the queries.
        dedup_config: the search and verifier settings.
        run_date: stamped on the output.
        encoder_config: the hybrid's lexical settings.
        sizes: ``catalogue_sizes(catalogue)`` when the caller has it (else counted here).

    Returns:
        ``SupplierSearch``: the pairs, the saturated query ids, the persisted search output both
        read (its ``candidates`` rows count candidates and size the tasks); call ``release()``
        when done.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if sizes is None:
        sizes = catalogue_sizes(catalogue)
    big = sorted(s for s, n in sizes.items() if n > dedup_config.catalogue_block_size)
    parts, cached = [], []
    if len(big) < len(sizes):
        small_queries, small_catalogue = queries, catalogue
        if big:
            small_queries = queries.filter(~F.col("supplier_id").isin(big))
            small_catalogue = catalogue.filter(~F.col("supplier_id").isin(big))
        parts.append(find_whole_catalogue_pairs(small_queries, small_catalogue, dedup_config, encoder_config))
    if big:
        log.info(
            "%d suppliers with more than %d catalogue rows are searched in catalogue blocks: %s",
            len(big),
            dedup_config.catalogue_block_size,
            big[:5],
        )
        in_big = F.col("supplier_id").isin(big)
        found_big, cached = find_pairs_in_blocks(
            queries.filter(in_big), catalogue.filter(in_big), dedup_config, encoder_config
        )
        parts.append(found_big)
    found = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    found = found.persist()
    # Two new listings in different query blocks are found from both blocks, each with its own
    # float rounding of the similarity: keep the best row by value, not whichever arrives first
    # (dropDuplicates), so a rerun writes the same row.
    best_first = Window.partitionBy("supplier_id", "listing_id_l", "listing_id_r").orderBy(
        *(F.desc_nulls_last(c) for c in ("similarity_m", "match_score", "similarity_t", "similarity_i"))
    )
    pairs = (
        found.filter("kind = 'pair'")
        .drop("kind", "candidates")
        .withColumn("_found_rank", F.row_number().over(best_first))
        .filter("_found_rank = 1")
        .drop("_found_rank")
        .withColumn("similarity_t", F.nanvl("similarity_t", F.lit(None).cast("float")))
        .withColumn("similarity_i", F.nanvl("similarity_i", F.lit(None).cast("float")))
        .withColumn("match_score", F.nanvl("match_score", F.lit(None).cast("float")))
        .withColumn("run_date", F.lit(run_date))
        .select(*PAIRS.names)
    )
    saturated = found.filter("kind = 'saturated'").select("supplier_id", "listing_id_l")
    return SupplierSearch(pairs, saturated, found, [found, *cached], big)


def find_whole_catalogue_pairs(queries, catalogue, dedup_config: DedupConfig, encoder_config: EncoderConfig):
    """``find_block_pairs`` over one task per (supplier, query block), each with the supplier's whole catalogue.

    Returns:
        Rows of ``PAIR_SEARCH_ROWS``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    block = Window.partitionBy("supplier_id").orderBy("listing_id")
    # Queries and catalogue both come from the embeddings table; fresh aliases give the query side
    # new column identities, or Spark finds the cogroup's columns ambiguous.
    queries = queries.select(*[F.col(c).alias(c) for c in queries.columns])
    blocked = queries.withColumn(
        "query_block", F.floor((F.row_number().over(block) - 1) / dedup_config.query_block_size)
    ).select("supplier_id", "query_block", "listing_id", "model_version")
    blocks = blocked.select(
        F.col("supplier_id").alias("supplier_id"), F.col("query_block").alias("query_block")
    ).distinct()
    extra = list(VERIFIER_COLUMNS) if dedup_config.verifier else []
    if encoder_config.lexical_weight > 0 and "title" not in extra:
        extra.append("title")  # the hybrid's lexical part is computed from it
    # which block asks for each new listing: a pair of two new listings in different blocks can
    # be found by both, and the candidates count must not count it twice
    asked = blocked.select(
        F.col("supplier_id").alias("supplier_id"),
        F.col("listing_id").alias("listing_id"),
        F.col("query_block").alias("asked_in"),
    )
    index = (
        catalogue.join(asked, on=["supplier_id", "listing_id"], how="left")
        .join(blocks, on="supplier_id")
        .select(
            "supplier_id",
            "query_block",
            "listing_id",
            "emb_m",
            "emb_t",
            "emb_i",
            "has_text",
            "has_image",
            "asked_in",
            *extra,
        )
    )
    return (
        blocked.groupBy("supplier_id", "query_block")
        .cogroup(index.groupBy("supplier_id", "query_block"))
        .applyInPandas(
            lambda key, q, c: find_block_pairs(key, q, c, dedup_config, encoder_config),
            schema=to_ddl(PAIR_SEARCH_ROWS),
        )
    )


def candidate_counts(found):
    """The search tasks' ``candidates`` rows, plus one row per supplier that takes back the candidates
    two query blocks both found.

    Args:
        found: rows of ``PAIR_SEARCH_ROWS`` (Spark DataFrame).

    Returns:
        A Spark DataFrame of ``supplier_id``, ``candidates``, ``queries``, ``catalogue_rows``,
        ``dim``, ``search_seconds``; the correction rows have a negative ``candidates`` and null
        sizes, so ``summarise_search`` counts them but plans no task from them.
    """
    from pyspark.sql import functions as F

    columns = ["supplier_id", "candidates", "queries", "catalogue_rows", "dim", "search_seconds"]
    tasks = found.filter("kind = 'candidates'").select(*columns)
    repeated = (
        found.filter("kind = 'cross'")
        .groupBy("supplier_id", "listing_id_l", "listing_id_r")
        .count()
        .filter("count > 1")
        .groupBy("supplier_id")
        .agg((-F.count("*")).cast("long").alias("candidates"))
        .select(
            "supplier_id",
            "candidates",
            *(
                F.lit(None).cast(t).alias(c)
                for c, t in zip(columns[2:], ["long", "long", "long", "double"], strict=True)
            ),
        )
    )
    return tasks.unionByName(repeated)


def summarise_search(tasks: pd.DataFrame) -> dict:
    """The search plan's sizes and speed, from the ``candidates`` rows of the search.

    Args:
        tasks: one row per search task (a query block with its supplier's whole catalogue, or
            a query block x catalogue block): ``supplier_id``, ``candidates``, ``queries``,
            ``catalogue_rows``, ``dim``, ``search_seconds``; plus rows that count candidates
            only (null ``queries``: the pair blocks of ``find_pairs_in_blocks``, and
            ``candidate_counts``' negative rows for candidates two query blocks both found).

    Returns:
        ``search_tasks``, ``candidates``, the physical floor ``search_gflop`` (sum of queries x
        catalogue x dim x 2 FLOPs), the tasks' summed ``search_seconds``, the achieved
        ``search_gflops`` (floor over those seconds: per task, so it compares with bench/README.md's
        GEMM peak; null when no time was measured), and the ``largest_task`` (supplier, queries,
        catalogue rows) with its ``largest_task_share`` of the floor.
    """
    counted = int(tasks["candidates"].sum()) if len(tasks) else 0
    # rows without a size count candidates only (the pair blocks of a catalogue-blocked supplier)
    tasks = tasks[tasks["queries"].notna()] if len(tasks) else tasks
    if tasks.empty:
        return {
            "search_tasks": 0,
            "candidates": counted,
            "search_gflop": 0.0,
            "search_seconds": 0.0,
            "search_gflops": None,
            "largest_task": None,
            "largest_task_share": None,
        }
    floor = (
        tasks["queries"].to_numpy(np.float64)
        * tasks["catalogue_rows"].to_numpy(np.float64)
        * tasks["dim"].to_numpy(np.float64)
        * 2.0
    )
    seconds = float(tasks["search_seconds"].sum())
    largest = int(np.argmax(floor))
    row = tasks.iloc[largest]
    return {
        "search_tasks": len(tasks),
        "candidates": counted,
        "search_gflop": round(float(floor.sum()) / 1e9, 3),
        "search_seconds": round(seconds, 3),
        "search_gflops": round(float(floor.sum()) / seconds / 1e9, 2) if seconds > 0 else None,
        "largest_task": {
            "supplier_id": str(row["supplier_id"]),
            "queries": int(row["queries"]),
            "catalogue_rows": int(row["catalogue_rows"]),
        },
        "largest_task_share": round(float(floor[largest] / floor.sum()), 3) if floor.sum() > 0 else None,
    }


def check_lexical_settings(encoder_config: EncoderConfig, model_version: str) -> None:
    """Checks the config's encoder is the one that made the stored vectors, with a hybrid encoder.

    The stored vectors are neural only; the search adds the lexical part with the config's
    settings, which must be the ones ``model_version`` was made with.

    Raises:
        DedupError: the versions differ; the message says what to do.
    """
    from encoder.factory import compute_model_version

    if encoder_config.lexical_weight <= 0:
        return
    configured = compute_model_version(encoder_config)
    if configured != model_version:
        raise DedupError(
            f"the run date's vectors are of model version {model_version}, the configured encoder's is "
            f"{configured}: the lexical part is added with the config's [encoder] settings, so they must "
            "be the ones the vectors were made with. Run the pairs stage with that config, or re-embed "
            "(dedup_backfill with reembed) after changing the encoder"
        )


def check_verifier(dedup_config: DedupConfig, encoder_config: EncoderConfig, model_version: str | None):
    """Loads the configured verifier on the driver and checks it fits the run's embeddings.

    Returns:
        The verifier, or None without one.

    Raises:
        DedupError: the verifier file is unusable or was trained for another model; the message
            says what to do.
    """
    from dedup.verifier import VerifierError

    if not dedup_config.verifier:
        return None
    try:
        verifier = get_verifier(dedup_config.verifier)
        if model_version is not None:
            verifier.check_inputs(model_version, get_lexical(encoder_config).idf_digest)
    except VerifierError as error:
        raise DedupError(str(error)) from None
    return verifier


def live_graph(previous, touched, day_pairs, n_buckets: int, run_date: str):
    """The live pair graph of night D: night D-1's, less every pair of a touched listing, plus D's pairs.

    Args:
        previous: the previous night's ``live_pairs`` rows.
        touched: ``listing_id`` of every listing embedded (new, changed) or deleted on D: their
            old pairs were found with vectors they no longer have (their new pairs are in
            ``day_pairs``).
        day_pairs: the run date's ``pairs`` rows.
        n_buckets: ``warehouse.supplier_buckets``.
        run_date: D.

    Returns:
        Rows of the ``live_pairs`` contract for D.
    """
    from pyspark.sql import functions as F

    columns = [c for c in PAIRS.names if c != "run_date"]
    ids = touched.select("listing_id").distinct()
    carried = (
        previous.join(ids.withColumnRenamed("listing_id", "listing_id_l"), on="listing_id_l", how="left_anti")
        .join(ids.withColumnRenamed("listing_id", "listing_id_r"), on="listing_id_r", how="left_anti")
        .select(*columns, "found_on")
    )
    fresh = day_pairs.select(*columns, F.lit(run_date).alias("found_on"))
    return _as_graph(carried.unionByName(fresh), n_buckets, run_date)


def _as_graph(rows, n_buckets: int, run_date: str):
    """Stamps live-graph rows with the run date and bucket, laid out one sorted file set per bucket."""
    from pyspark.sql import functions as F

    from jobs.catalog import supplier_bucket

    return (
        rows.withColumn("run_date", F.lit(run_date))
        .withColumn("supplier_bucket", supplier_bucket(n_buckets))
        .repartition("supplier_bucket")
        .sortWithinPartitions("supplier_id", "listing_id_l", "listing_id_r")
    )


def live_graph_from_history(pairs_history, catalogue, day_pairs, n_buckets: int, run_date: str):
    """The live pair graph of night D from every earlier night's ``pairs`` (no previous graph).

    A pair found on night d is live when both its listings are in D's catalogue with vectors
    embedded on or before d, of the pair's model version: what the nightly updates keep.

    Returns:
        Rows of the ``live_pairs`` contract for D.
    """
    from pyspark.sql import functions as F

    earlier = pairs_history.filter(F.col("run_date") < run_date).withColumnRenamed("run_date", "found_on")
    vectors = catalogue.select("listing_id", "embedded_on", F.col("model_version").alias("_version"))
    for side in ("listing_id_l", "listing_id_r"):
        side_vectors = vectors.select(
            F.col("listing_id").alias(side), F.col("embedded_on").alias("_on"), F.col("_version")
        )
        earlier = (
            earlier.join(side_vectors, on=side)
            .filter((F.col("_on") <= F.col("found_on")) & (F.col("_version") == F.col("model_version")))
            .drop("_on", "_version")
        )
    columns = [c for c in PAIRS.names if c != "run_date"]
    fresh = day_pairs.select(*columns, F.lit(run_date).alias("found_on"))
    return _as_graph(earlier.select(*columns, "found_on").unionByName(fresh), n_buckets, run_date)


def run(ctx: StageContext) -> StageResult:
    """Finds the run date's pairs; writes the `pairs` and `live_pairs` partitions."""
    from pyspark.sql import functions as F

    from jobs.catalog import read_catalogue, suppliers_buckets
    from jobs.warehouse import ensure_tables, previous_night, publish

    db, day = ctx.database, ctx.run_date
    ensure_tables(ctx.spark, db, ["embeddings", "catalog", "pairs", "live_pairs"])
    previous = previous_night(ctx.spark, db, STAGE, day, "catalog", "there is no pair graph to carry forward")
    touched = ctx.spark.table(f"{db}.embeddings").filter(F.col("run_date") == day).select("listing_id", "supplier_id")
    day_suppliers = [r[0] for r in touched.select("supplier_id").distinct().collect()]
    n_buckets = ctx.config.warehouse.supplier_buckets
    buckets = suppliers_buckets(day_suppliers, ctx.spark, n_buckets)
    # only the day's suppliers' folders of the catalogue are read
    catalogue = read_catalogue(ctx.spark, db, day, buckets).filter(F.col("supplier_id").isin(day_suppliers))
    queries = catalogue.filter(F.col("embedded_on") == day).persist()
    rows_in = queries.count()
    versions = [r[0] for r in queries.select("model_version").distinct().collect()]
    if len(versions) > 1:
        raise DedupError(
            f"run date {day} has embeddings of several model versions {versions}; re-run the embed stage for it"
        )
    stale = 0
    if versions:
        stale = catalogue.filter(F.col("model_version") != versions[0]).count()
        if stale:
            log.warning(
                "%d catalogue listings have embeddings of another model version and are left out; "
                "re-embed them (dedup_backfill with reembed) to compare them again",
                stale,
            )
        catalogue = catalogue.filter(F.col("model_version") == versions[0])
    dedup_config, encoder_config = ctx.config.dedup, ctx.config.encoder
    if versions:
        check_lexical_settings(encoder_config, versions[0])
    verifier = check_verifier(dedup_config, encoder_config, versions[0] if versions else None)
    sizes = catalogue_sizes(catalogue)
    search = find_supplier_pairs(queries, catalogue, dedup_config, day, encoder_config, sizes)
    pairs, saturated, found = search.pairs, search.saturated, search.found
    if previous is None:
        log.info("no pair graph before %s: building it from the pairs history", day)
        everything = ctx.spark.table(f"{db}.catalog").filter(F.col("run_date") == day)
        live = live_graph_from_history(ctx.spark.table(f"{db}.pairs"), everything, pairs, n_buckets, day)
    else:
        previous_graph = ctx.spark.table(f"{db}.live_pairs").filter(F.col("run_date") == previous)
        live = live_graph(previous_graph, touched, pairs, n_buckets, day)
    try:
        written = publish(
            ctx.spark,
            {"pairs": pairs, "live_pairs": live},
            ctx.database,
            {"run_date": day},
            listing_suppliers=catalogue.select("listing_id", "supplier_id"),
        )
        saturated_ids = [r["listing_id_l"] for r in saturated.distinct().limit(1000).collect()]
        tasks = candidate_counts(found).toPandas()
    finally:
        search.release()
        queries.unpersist()
    catalogue_size = sum(sizes.values())
    blocked_suppliers = search.blocked_suppliers
    search = summarise_search(tasks)
    candidates = search["candidates"]
    if search["largest_task"] is not None:
        largest = search["largest_task"]
        log.info(
            "search plan: %d tasks, largest supplier %s %d queries x %d catalogue (%.0f%% of the work); "
            "%.3f GFLOP in %.2f s of search (%s GFLOP/s per task)",
            search["search_tasks"],
            largest["supplier_id"],
            largest["queries"],
            largest["catalogue_rows"],
            100 * (search["largest_task_share"] or 0.0),
            search["search_gflop"],
            search["search_seconds"],
            search["search_gflops"],
        )
    if saturated_ids:
        log.warning(
            "%d listings hit the per-query budget of %d pairs (first: %s); raise "
            "dedup.min_similarity or dedup.max_results_per_query",
            len(saturated_ids),
            ctx.config.dedup.max_results_per_query,
            saturated_ids[:5],
        )
    return StageResult(
        rows_in=rows_in,
        rows_out=written["pairs"],
        details={
            "min_similarity": dedup_config.min_similarity,
            "candidates_per_query": round(candidates / rows_in, 3) if rows_in else 0.0,
            **search,
            "verifier": verifier.digest[:16] if verifier is not None else None,
            "min_probability": dedup_config.min_probability if verifier is not None else None,
            "catalogue_size": catalogue_size,
            "catalogue_block_size": dedup_config.catalogue_block_size,
            "blocked_suppliers": len(blocked_suppliers),
            "catalogue_buckets_read": len(buckets),
            "live_pairs": written["live_pairs"],
            "graph_from": previous,
            "stale_model_version": stale,
            "saturated_queries": len(saturated_ids),
            "model_version": versions[0] if versions else None,
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the stage from the command line; returns the exit code."""
    return run_stage(STAGE, run, argv, description=__doc__)


if __name__ == "__main__":
    # Run as jobs.pairs, not __main__, so Spark pickles this module's functions by reference
    # and their per-worker caches (models, suites) live as long as the Python worker.
    from jobs.pairs import main as _main

    sys.exit(_main())
