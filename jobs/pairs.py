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

import numpy as np
import pandas as pd
import pyarrow as pa

from config.errors import DedupError
from dedup.config import DedupConfig
from encoder.config import EncoderConfig
from jobs.stage import StageContext, StageResult, run_stage
from schemas.tables import PAIR_SEARCH_ROWS, PAIRS, empty_frame, to_ddl
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
        dedup_config: names the verifier file.
        encoder_config: the lexical settings of ``char_cosine``.
        lexical: float32 [n, buckets] the catalogue's lexical title vectors when the caller has
            them (the hybrid search made them); computed for the rows the pairs touch otherwise.

    Returns:
        float32 [p] calibrated probabilities.
    """
    from dedup.features import neighbour_similarities, pair_features, parse_listing

    verifier = get_verifier(dedup_config.verifier)
    if len(left) == 0:
        return np.zeros(0, dtype=np.float32)
    # only the listings the candidates touch are parsed and get neighbour lists
    involved, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
    sub_left, sub_right = inverse[: len(left)], inverse[len(left) :]
    rows = catalogue.iloc[involved]
    parsed = [
        parse_listing(_value(r.title), _value(r.brand), _value(r.price), _value(r.currency))
        for r in rows.itertuples(index=False)
    ]
    if lexical is None:
        has_text = rows["has_text"].to_numpy(bool)
        lexical = get_lexical(encoder_config).transform([_value(t) for t in rows["title"]], has_text)
    else:
        lexical = lexical[involved]
    top = neighbour_similarities(
        index_m[involved], index_m, involved, verifier.neighbour_min_similarity, verifier.neighbour_budget
    )
    features = pair_features(parsed, lexical, sub_left, sub_right, sim_m, sim_t, sim_i, top[sub_left], top[sub_right])
    return verifier.probabilities(features).astype(np.float32)


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
    """float32 [n, buckets] the catalogue rows' lexical title vectors, or None without a hybrid."""
    if encoder_config.lexical_weight <= 0:
        return None
    titles = [_value(t) for t in catalogue["title"]]
    return get_lexical(encoder_config).transform(titles, catalogue["has_text"].to_numpy(bool))


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
            verifier); it contains the queries themselves.
        dedup_config: the search and verifier settings.
        encoder_config: the hybrid's lexical settings (``searchable_vectors``).

    Returns:
        Rows of ``PAIR_SEARCH_ROWS``; each pair once with ``listing_id_l < listing_id_r``:
        candidates whose probability reached ``dedup.min_probability`` (every candidate, with a
        null probability, without a verifier); then one ``candidates`` row with the count of
        candidates and the task's size and search seconds, and the saturated queries.

    Raises:
        ValueError: a query is not in the catalogue.
    """
    from dedup.features import modality_similarity
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
    has_text = catalogue["has_text"].to_numpy(bool)
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
    if len(left):
        # t and i only for the listings the candidates touch
        involved, inverse = np.unique(np.concatenate([left, right]), return_inverse=True)
        sub_left, sub_right = inverse[: len(left)], inverse[len(left) :]
        rows = catalogue.iloc[involved]
        t = searchable_vectors(rows["emb_t"], None if lexical is None else lexical[involved], encoder_config)
        i = unpack_vectors(rows["emb_i"].tolist())
        sim_t = modality_similarity(t, has_text[involved], sub_left, sub_right)
        sim_i = modality_similarity(i, rows["has_image"].to_numpy(bool), sub_left, sub_right)
    else:
        sim_t = sim_i = np.zeros(0, dtype=np.float32)
    candidates = len(left_ids)
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
    parts += [_search_rows(counted), _search_rows(flagged)]
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


def _search_rows(columns: dict[str, list]) -> pa.Table:
    """A ``PAIR_SEARCH_ROWS`` table from the given columns; the others null."""
    n = len(columns["kind"])
    return pa.table(
        {
            f.name: pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
            for f in PAIR_SEARCH_ROWS
        },
        schema=PAIR_SEARCH_ROWS,
    )


def find_supplier_pairs(queries, catalogue, dedup_config: DedupConfig, run_date: str, encoder_config: EncoderConfig):
    """Finds pairs per (supplier, query block).

    Args:
        queries: the run date's live embeddings.
        catalogue: the suppliers' ``catalog`` rows restricted to the queries' model version (they
            carry ``VERIFIER_COLUMNS``); it holds the queries.
        dedup_config: the search and verifier settings.
        run_date: stamped on the output.
        encoder_config: the hybrid's lexical settings.

    Returns:
        ``(pairs, saturated, found)``: pairs matching the ``PAIRS`` contract, the saturated query
        ids, and the persisted search output both read (the caller unpersists it when done;
        its ``candidates`` rows count the candidates per block).
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
    index = catalogue.join(blocks, on="supplier_id").select(
        "supplier_id", "query_block", "listing_id", "emb_m", "emb_t", "emb_i", "has_text", "has_image", *extra
    )
    found = (
        blocked.groupBy("supplier_id", "query_block")
        .cogroup(index.groupBy("supplier_id", "query_block"))
        .applyInPandas(
            lambda key, q, c: find_block_pairs(key, q, c, dedup_config, encoder_config),
            schema=to_ddl(PAIR_SEARCH_ROWS),
        )
    ).persist()
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
    return pairs, saturated, found


def summarise_search(tasks: pd.DataFrame) -> dict:
    """The search plan's sizes and speed, from the ``candidates`` rows of ``find_block_pairs``.

    Args:
        tasks: one row per (supplier, query block) task: ``supplier_id``, ``candidates``,
            ``queries``, ``catalogue_rows``, ``dim``, ``search_seconds``.

    Returns:
        ``search_tasks``, ``candidates``, the physical floor ``search_gflop`` (sum of queries x
        catalogue x dim x 2 FLOPs), the tasks' summed ``search_seconds``, the achieved
        ``search_gflops`` (floor over those seconds: per task, so it compares with bench/README.md's
        GEMM peak; null when no time was measured), and the ``largest_task`` (supplier, queries,
        catalogue rows) with its ``largest_task_share`` of the floor.
    """
    if tasks.empty:
        return {
            "search_tasks": 0,
            "candidates": 0,
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
        "candidates": int(tasks["candidates"].sum()),
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
    pairs, saturated, found = find_supplier_pairs(queries, catalogue, dedup_config, day, encoder_config)
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
        tasks = (
            found.filter("kind = 'candidates'")
            .select("supplier_id", "candidates", "queries", "catalogue_rows", "dim", "search_seconds")
            .toPandas()
        )
        catalogue_size = catalogue.count()
    finally:
        found.unpersist()
        queries.unpersist()
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
