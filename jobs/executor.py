"""Code that runs inside Spark executors: per-partition validation, embedding, pair search, grouping.

These functions live in an importable module (not in the ``jobs/<stage>.py`` scripts, which run as
``__main__`` and would be pickled by value), so the module-level caches below survive between tasks
of the same Python worker: the encoder and the GX context are built once per worker process, never
on the driver and never pickled. Every function receives only plain values (dicts, floats, ints).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_ENCODERS: dict[str, Any] = {}
_VALIDATOR: list[Any] = []


# --------------------------------------------------------------------------- validate
def validate_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: runs the GX listings suite on each batch.

    Args:
        batches: listing rows with ``_row_id``, ``listing_id``, ``supplier_id``, ``title``,
            ``updated_at``, ``_has_image_bytes``, ``image_uri``.

    Yields:
        ``_row_id``, ``rule``, ``detail`` for each row that broke a row rule.
    """
    from schemas.expectations import ListingsValidator

    if not _VALIDATOR:
        _VALIDATOR.append(ListingsValidator())
    validator = _VALIDATOR[0]
    for batch in batches:
        frame = batch.set_index("_row_id", drop=True)
        failed = validator.failed_rules(frame)
        out = pd.DataFrame(
            {
                "_row_id": failed.index.astype("int64"),
                "rule": failed["rule"].astype(str),
                "detail": failed["detail"].astype(str),
            }
        )
        yield out


# --------------------------------------------------------------------------- embed
def _gpu_addresses() -> list[str]:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return []
    gpu = context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def get_encoder(encoder_config: dict[str, Any]):
    """Returns this worker's encoder for the config, building it on first use.

    Args:
        encoder_config: ``dataclasses.asdict(EncoderConfig)``.

    Returns:
        An encoder with ``encode(titles, images)`` and ``model_version``. On a GPU executor the
        device is the GPU Spark assigned to the task (``spark.task.resource.gpu.amount``).
    """
    from encoder import EncoderConfig, build_encoder

    key = json.dumps(encoder_config, sort_keys=True)
    if key not in _ENCODERS:
        started = time.monotonic()
        addresses = _gpu_addresses()
        _ENCODERS[key] = build_encoder(EncoderConfig(**encoder_config), addresses)
        log.info("encoder %s built in %.1fs (Spark GPU addresses: %s)", _ENCODERS[key].model_version,
                 time.monotonic() - started, addresses or "none")
    return _ENCODERS[key]


def read_image_uri(uri: str) -> tuple[bytes | None, str | None]:
    """Reads image bytes from a local path or fsspec URL.

    Returns:
        ``(bytes, None)``, or ``(None, reason)`` when the URI cannot be read.
    """
    import fsspec

    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read(), None
    except Exception as exc:  # noqa: BLE001 - any IO failure means "embed text-only and flag"
        return None, f"image_uri_unreadable: {type(exc).__name__}: {exc}"[:500]


def embed_batches(batches: Iterator[pd.DataFrame], encoder_config: dict[str, Any]) -> Iterator[pd.DataFrame]:
    """mapInPandas body: encodes listings into m / t / i vectors.

    Args:
        batches: rows with ``listing_id``, ``supplier_id``, ``updated_at``, ``title``, ``image``,
            ``image_uri`` (deleted listings are filtered out before).
        encoder_config: plain-dict encoder config.

    Yields:
        Rows of the ``embeddings`` contract without ``run_date``.
    """
    encoder = get_encoder(encoder_config)
    for batch in batches:
        started = time.monotonic()
        images: list[bytes | None] = []
        uri_errors: list[str | None] = []
        for data, uri in zip(batch["image"], batch["image_uri"]):
            if data is not None and not (isinstance(data, float) and np.isnan(data)):
                images.append(bytes(data))
                uri_errors.append(None)
            elif isinstance(uri, str) and uri.strip():
                data, error = read_image_uri(uri.strip())
                images.append(data)
                uri_errors.append(error)
            else:
                images.append(None)
                uri_errors.append(None)
        titles = [t if isinstance(t, str) else None for t in batch["title"]]
        try:
            frame = _encoded_frame(batch, encoder.encode(titles, images), uri_errors)
        except ValueError:
            # A row with no usable title or image (e.g. a blank title and a corrupt image) fails
            # the batch; encode row by row so only that row goes without vectors.
            frame = pd.concat([_encode_one(encoder, batch.iloc[[k]], titles[k], images[k], uri_errors[k])
                               for k in range(len(batch))], ignore_index=True)
        yield frame
        log.info("embedded %d listings in %.2fs", len(batch), time.monotonic() - started)


_DTYPES = {"STRING": object, "FLOAT": np.float32, "DOUBLE": np.float64, "BIGINT": np.int64, "BOOLEAN": bool}


def _ddl_columns(ddl: str) -> dict[str, Any]:
    """Maps each column of a DDL list (``"a STRING, b FLOAT"``) to its pandas dtype."""
    return {name: _DTYPES[kind] for name, kind in (part.split() for part in ddl.split(", "))}


def _empty_frame(ddl: str) -> pd.DataFrame:
    """Returns a zero-row DataFrame with dtypes matching a DDL column list.

    An untyped ``pd.DataFrame(columns=...)`` (all ``object``) fails Spark's Arrow conversion of
    grouped-map output for numeric columns, so empty results must carry real dtypes.
    """
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in _ddl_columns(ddl).items()})


def _encoded_frame(batch: pd.DataFrame, encoded, uri_errors: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "listing_id": batch["listing_id"].to_numpy(),
            "supplier_id": batch["supplier_id"].to_numpy(),
            "updated_at": batch["updated_at"].to_numpy(),
            "is_deleted": False,
            "has_text": encoded.has_text,
            "has_image": encoded.has_image,
            "image_error": [u or e for u, e in zip(uri_errors, encoded.image_error)],
            "emb_m": list(encoded.m),
            "emb_t": list(encoded.t),
            "emb_i": list(encoded.i),
            "model_version": encoded.model_version,
        }
    )


def _encode_one(encoder, row: pd.DataFrame, title: str | None, image: bytes | None,
                uri_error: str | None) -> pd.DataFrame:
    """Encodes one listing; a listing the encoder rejects gets null vectors and the reason."""
    try:
        return _encoded_frame(row, encoder.encode([title], [image]), [uri_error])
    except ValueError as exc:
        return pd.DataFrame({
            "listing_id": row["listing_id"].to_numpy(), "supplier_id": row["supplier_id"].to_numpy(),
            "updated_at": row["updated_at"].to_numpy(), "is_deleted": False, "has_text": False,
            "has_image": False, "image_error": [f"not_embeddable: {uri_error or exc}"[:500]],
            "emb_m": [None], "emb_t": [None], "emb_i": [None], "model_version": encoder.model_version,
        })


# --------------------------------------------------------------------------- pairs
def _stack(column: pd.Series) -> np.ndarray:
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in column])  # [n, dim]


def _modality_similarity(vectors: np.ndarray, present: np.ndarray, left: np.ndarray,
                         right: np.ndarray) -> np.ndarray:
    """Cosine of the two sides' vectors of one modality; NaN where either side lacks it."""
    sims = np.einsum("nd,nd->n", vectors[left], vectors[right]).astype(np.float32)  # [n_pairs]
    sims[~(present[left] & present[right])] = np.nan
    return sims


PAIR_OUTPUT_DDL = (
    "kind STRING, supplier_id STRING, listing_id_l STRING, listing_id_r STRING, "
    "similarity_m FLOAT, similarity_t FLOAT, similarity_i FLOAT, model_version STRING"
)
"""Output of ``find_block_pairs``: ``kind`` is "pair", or "saturated" for a query cut by the budget."""


def find_block_pairs(key: tuple, queries: pd.DataFrame, catalogue: pd.DataFrame,
                     dedup_config: dict[str, Any]) -> pd.DataFrame:
    """cogroup body: finds the duplicate pairs of one (supplier, query block).

    Args:
        key: ``(supplier_id, query_block)``.
        queries: the block's new listings (``listing_id``, ``emb_m``, ``model_version``).
        catalogue: the supplier's catalogue (``listing_id``, ``emb_m``, ``emb_t``, ``emb_i``,
            ``has_text``, ``has_image``); it contains the queries themselves.
        dedup_config: ``dataclasses.asdict(DedupConfig)``.

    Returns:
        Rows of ``PAIR_OUTPUT_DDL``; each pair once with ``listing_id_l < listing_id_r``.
    """
    from dedup import find_pairs_by_id

    supplier_id = key[0]
    if queries.empty or catalogue.empty:
        return _empty_frame(PAIR_OUTPUT_DDL)
    model_version = str(queries["model_version"].iloc[0])
    started = time.monotonic()
    # Rows arrive in shuffle order; sorting fixes the search's row order, so a rerun computes
    # every similarity with the same operations and writes identical values.
    queries = queries.sort_values("listing_id", kind="stable")
    catalogue = catalogue.sort_values("listing_id", kind="stable").reset_index(drop=True)
    index_m = _stack(catalogue["emb_m"])
    pairs, saturated = find_pairs_by_id(
        queries["listing_id"].tolist(), _stack(queries["emb_m"]),
        catalogue["listing_id"].tolist(), index_m,
        min_similarity=float(dedup_config["min_similarity"]),
        max_results_per_query=int(dedup_config["max_results_per_query"]),
        backend=dedup_config["backend"], device=dedup_config["device"],
    )
    left_ids = pairs.column("listing_id_l").to_pylist()
    right_ids = pairs.column("listing_id_r").to_pylist()
    position = {listing_id: i for i, listing_id in enumerate(catalogue["listing_id"])}
    left = np.array([position[i] for i in left_ids], dtype=np.int64)
    right = np.array([position[i] for i in right_ids], dtype=np.int64)
    if len(left):
        sim_t = _modality_similarity(_stack(catalogue["emb_t"]), catalogue["has_text"].to_numpy(bool), left, right)
        sim_i = _modality_similarity(_stack(catalogue["emb_i"]), catalogue["has_image"].to_numpy(bool), left, right)
    else:
        sim_t = sim_i = np.zeros(0, dtype=np.float32)
    out = pd.DataFrame(
        {
            "kind": "pair",
            "supplier_id": supplier_id,
            # explicit dtype: an empty list would be inferred float64, which Spark cannot cast
            "listing_id_l": pd.Series(left_ids, dtype=object),
            "listing_id_r": pd.Series(right_ids, dtype=object),
            "similarity_m": pairs.column("similarity").to_numpy().astype(np.float32),
            "similarity_t": sim_t,
            "similarity_i": sim_i,
            "model_version": model_version,
        },
        columns=list(_ddl_columns(PAIR_OUTPUT_DDL)),
    )
    # Float rounding can put a dot product of unit vectors at 1.0000001; the contract says [-1, 1].
    similarity_columns = ["similarity_m", "similarity_t", "similarity_i"]
    out[similarity_columns] = out[similarity_columns].clip(-1.0, 1.0)
    if saturated:
        flagged = _empty_frame(PAIR_OUTPUT_DDL).reindex(range(len(saturated)))
        flagged = flagged.assign(kind="saturated", supplier_id=supplier_id,
                                 listing_id_l=pd.Series(saturated, dtype=object),
                                 model_version=model_version)
        flagged[similarity_columns] = np.nan
        out = pd.concat([out, flagged], ignore_index=True)
    log.info("supplier %s block %s: %d queries x %d catalogue -> %d pairs (%d saturated) in %.2fs",
             supplier_id, key[1], len(queries), len(catalogue), len(left_ids), len(saturated),
             time.monotonic() - started)
    return out


# --------------------------------------------------------------------------- groups
GROUP_OUTPUT_DDL = (
    "supplier_id STRING, group_id STRING, listing_id STRING, size BIGINT, "
    "weakest_similarity FLOAT, strongest_similarity FLOAT, representative STRING"
)
"""Output of ``cluster_supplier_pairs``: one row per group member, with its group's summary."""


def cluster_supplier_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """applyInPandas body: connected components of one supplier's pairs.

    Args:
        pairs: one supplier's rows of the ``pairs`` table.

    Returns:
        Rows of ``GROUP_OUTPUT_DDL``.
    """
    from dedup import cluster_pairs, make_group_id

    if pairs.empty:
        return _empty_frame(GROUP_OUTPUT_DDL)
    supplier_id = str(pairs["supplier_id"].iloc[0])
    result = cluster_pairs(
        pairs["listing_id_l"].to_numpy(), pairs["listing_id_r"].to_numpy(),
        pairs["similarity_m"].to_numpy(np.float32),
    )
    members = result.members.to_pandas()
    components = result.components.to_pandas().set_index("component")
    joined = members.join(components, on="component")
    return pd.DataFrame(
        {
            "supplier_id": supplier_id,
            "group_id": [make_group_id(supplier_id, rep) for rep in joined["representative"]],
            "listing_id": joined["listing_id"],
            "size": joined["size"].astype("int64"),
            "weakest_similarity": joined["weakest_similarity"].astype("float32"),
            "strongest_similarity": joined["strongest_similarity"].astype("float32"),
            "representative": joined["representative"],
        },
        columns=list(_ddl_columns(GROUP_OUTPUT_DDL)),
    )
