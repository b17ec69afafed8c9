"""Training examples from labelled clusters, and a sampler that fills batches with hard negatives.

Every pair of two different members of one labelled cluster is a positive (trigger, offer) pair
(the eSSPR issue: "trains from labelled clusters"). The losses (``encoder.loss``) use in-batch
negatives only (docs/PAPER.md §3), and random batches of product data are too easy: the untrained
model already ranks almost every in-batch positive first, so the loss is about 0 and nothing is
learnt. The sampler therefore puts *lexically similar* clusters into the same batch:

1. Each cluster gets the centroid of its titles' TF-IDF character 3–5-gram vectors (the same
   features as the ``tfidf-char3-5`` baseline of the evaluation), L2-normalised.
2. Per epoch, the clusters are chained greedily: start at a random cluster, then step to one of
   the ``top_k`` most similar clusters not yet visited (chosen at random, so epochs differ).
   Neighbours in the chain are similar products.
3. The chain is cut into consecutive runs of ``batch_size`` clusters; each run is one batch, and
   each cluster in it gives one random (trigger, offer) pair of two different members.

So the two sides of a pair always share a cluster, and no two pairs of a batch come from the same
cluster (otherwise an in-batch "negative" would be a positive). Everything is a pure function of
``(seed, epoch)``: ``HardNegativeSampler.batch(k)`` gives the k-th batch of the endless stream
without any state, so a resumed training run sees exactly the batches of an uninterrupted one.

Items are a pandas frame with columns ``item_id`` (str), ``cluster`` (str, prefixed with the
source), ``title`` (str or None), ``image`` (a path string or None) and ``source``. Reading the
datasets from storage is the job's work (``jobs/train.py``); this module only takes frames.

Example:
    >>> import pandas as pd
    >>> items = pd.DataFrame({
    ...     "item_id": list("abcdef"), "cluster": ["x", "x", "y", "y", "z", "z"],
    ...     "title": ["red mug", "red mug 300ml", "blue mug", "blue cup", "usb cable", "usb-c"],
    ...     "image": None, "source": "demo"})
    >>> sampler = HardNegativeSampler(items, batch_size=3, seed=0)
    >>> [len(b) for b in (sampler.batch(0), sampler.batch(1))]
    [3, 3]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

ITEM_COLUMNS: tuple[str, ...] = ("item_id", "cluster", "title", "image", "source")


def wdc_items(offers: pd.DataFrame, reserved_ids: Iterable[int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Training items from WDC Products offers with their ``cluster_id``.

    Offers whose id is in ``reserved_ids`` (the offers of the validation and test files) are left
    out, and so are offers without a title (WDC items are text only) and clusters that keep
    fewer than two offers (they give no pair).

    Args:
        offers: frame ``id, title, cluster_id`` (``benchmarks.datasets.read_wdc_offers`` of
            ``("000un_train_medium",)``).
        reserved_ids: offer ids that must not be trained on (valid_medium and the gs files).

    Returns:
        ``(items, counts)``: items in the module's item format (text only: ``image`` None), and
        counts ``offers``, ``reserved_excluded``, ``untitled_excluded``,
        ``singleton_excluded``, ``kept``, ``clusters``.

    Raises:
        ValueError: if a needed column is missing.
    """
    missing = {"id", "title", "cluster_id"} - set(offers.columns)
    if missing:
        raise ValueError(f"WDC offers need columns id, title, cluster_id; missing {sorted(missing)}")
    reserved = {int(x) for x in reserved_ids}
    is_reserved = offers["id"].astype("int64").isin(reserved)
    has_title = offers["title"].fillna("").astype(str).str.strip() != ""
    kept = offers[~is_reserved & has_title]
    sizes = kept.groupby("cluster_id")["id"].transform("size")
    pairable = kept[sizes >= 2]
    titles = pairable["title"].astype(str).str.strip()
    items = pd.DataFrame(
        {
            "item_id": "wdc:" + pairable["id"].astype("int64").astype(str),
            "cluster": "wdc:" + pairable["cluster_id"].astype("int64").astype(str),
            "title": titles.to_numpy(),
            "image": None,
            "source": "wdc",
        }
    ).reset_index(drop=True)
    counts = {
        "offers": len(offers),
        "reserved_excluded": int(is_reserved.sum()),
        "untitled_excluded": int((~is_reserved & ~has_title).sum()),
        "singleton_excluded": int(len(kept) - len(pairable)),
        "kept": len(items),
        "clusters": int(items["cluster"].nunique()),
    }
    return _check_items(items), counts


def grocery_items(photos: pd.DataFrame) -> pd.DataFrame:
    """Training items from the GroceryStore *train* photos: same fine class = same product.

    Args:
        photos: frame ``path, split, fine_id, title`` (``benchmarks.datasets.read_grocery``; the
            title is the constructed brand + coarse class title). Only ``split == "train"`` rows
            are used; val and test stay for evaluation.

    Returns:
        Items with both a title and an image path.

    Raises:
        ValueError: if a needed column is missing or no train photo is left.
    """
    missing = {"path", "split", "fine_id", "title"} - set(photos.columns)
    if missing:
        raise ValueError(f"GroceryStore photos need columns path, split, fine_id, title; missing {sorted(missing)}")
    train = photos[photos["split"] == "train"]
    if train.empty:
        raise ValueError("no GroceryStore train photos; check the dataset folder")
    items = pd.DataFrame(
        {
            "item_id": "grocery:" + train["path"].astype(str),
            "cluster": "grocery:" + train["fine_id"].astype(int).astype(str),
            "title": train["title"].astype(str).to_numpy(),
            "image": train["path"].astype(str).to_numpy(),
            "source": "grocery",
        }
    )
    sizes = items.groupby("cluster")["item_id"].transform("size")
    return _check_items(items[sizes >= 2].reset_index(drop=True))


def cluster_vectors(items: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The L2-normalised TF-IDF (char 3–5-gram) centroid of each cluster's titles.

    The vectoriser is fitted on the items' own titles (no labels). Items without a title add
    nothing; a cluster with no title at all gets a zero vector (similar to nothing).

    Args:
        items: items in the module's format.

    Returns:
        ``(clusters, vectors)``: sorted cluster names and float32 [n_clusters, vocabulary].
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    clusters = sorted(items["cluster"].unique())
    index = {name: k for k, name in enumerate(clusters)}
    titles = items["title"].fillna("").astype(str).tolist()
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True, sublinear_tf=True, norm="l2")
    if not any(titles):
        return clusters, np.zeros((len(clusters), 1), dtype=np.float32)
    tfidf = vectorizer.fit_transform(titles)  # sparse [n_items, vocabulary]
    rows = np.array([index[c] for c in items["cluster"]])
    assign = sp.csr_matrix(
        (np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(clusters), len(rows))
    )  # [n_clusters, n_items]
    centroids = np.asarray((assign @ tfidf).todense(), dtype=np.float32)  # [n_clusters, vocab]
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return clusters, centroids / np.maximum(norms, 1e-12)


def chain_order(vectors: np.ndarray, rng: np.random.Generator, top_k: int = 3) -> np.ndarray:
    """Orders clusters so that neighbours in the order are similar (greedy nearest-neighbour chain).

    Starts at a random cluster; each next cluster is drawn uniformly from the ``top_k`` most
    similar (inner product) clusters not yet visited. ``top_k = 1`` is the pure greedy chain.

    Args:
        vectors: float [n, d], L2-normalised rows.
        rng: the random generator (seeded by the caller).
        top_k: how many nearest unvisited clusters the next step is drawn from.

    Returns:
        int [n], a permutation of ``range(n)``.
    """
    n = vectors.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    similarity = vectors @ vectors.T  # [n, n]
    # tiny seeded noise breaks ties (e.g. identical constructed titles) differently per epoch
    similarity = similarity + rng.uniform(0, 1e-6, size=similarity.shape)
    visited = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    current = int(rng.integers(n))
    for position in range(n):
        order[position] = current
        visited[current] = True
        if position == n - 1:
            break
        row = np.where(visited, -np.inf, similarity[current])  # [n]
        k = min(top_k, n - position - 1)
        nearest = np.argpartition(-row, k - 1)[:k]
        current = int(rng.choice(nearest))
    return order


class HardNegativeSampler:
    """An endless, stateless stream of batches of positive pairs from lexically similar clusters.

    Batch ``k`` belongs to epoch ``k // batches_per_epoch``; an epoch is one chain over all
    clusters (``chain_order`` seeded by ``(seed, epoch)``) cut into runs of ``batch_size``
    clusters (the last, shorter run is dropped unless it is the only one). Each cluster in a run
    gives one (trigger, offer) pair: two different members drawn at random.

    Args:
        items: items in the module's format; clusters with fewer than two items are ignored.
        batch_size: pairs per batch; capped at the number of clusters.
        seed: seeds every draw.
        top_k: see ``chain_order``.

    Raises:
        ValueError: if fewer than two clusters have a pair (no in-batch negative possible).
    """

    def __init__(self, items: pd.DataFrame, batch_size: int, seed: int, top_k: int = 3) -> None:
        items = _check_items(items)
        if batch_size < 2:
            raise ValueError(f"batch_size={batch_size} must be >= 2 (in-batch negatives)")
        sizes = items.groupby("cluster")["item_id"].transform("size")
        self.items = items[sizes >= 2].reset_index(drop=True)
        self.clusters, self._vectors = cluster_vectors(self.items)
        if len(self.clusters) < 2:
            raise ValueError(f"only {len(self.clusters)} cluster(s) with two or more items; need >= 2")
        groups = self.items.groupby("cluster").indices
        self._members = [np.sort(groups[name]) for name in self.clusters]  # item rows per cluster
        self.batch_size = min(batch_size, len(self.clusters))
        self.batches_per_epoch = max(1, len(self.clusters) // self.batch_size)
        self.seed = seed
        self.top_k = top_k
        self._epochs: dict[int, list[list[tuple[int, int]]]] = {}  # the last two epochs' batches

    def batch(self, k: int) -> list[tuple[int, int]]:
        """The k-th batch: ``(trigger_row, offer_row)`` pairs, rows of ``self.items``."""
        epoch, position = divmod(k, self.batches_per_epoch)
        if epoch not in self._epochs:  # consecutive steps share an epoch
            self._epochs = {e: b for e, b in self._epochs.items() if e == epoch - 1}
            self._epochs[epoch] = self._epoch(epoch)
        return self._epochs[epoch][position]

    def _epoch(self, epoch: int) -> list[list[tuple[int, int]]]:
        """All batches of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = chain_order(self._vectors, rng, self.top_k)
        batches = []
        for b in range(self.batches_per_epoch):
            run = order[b * self.batch_size : (b + 1) * self.batch_size]
            pairs = []
            for cluster in run:
                trigger, offer = rng.choice(self._members[cluster], size=2, replace=False)
                pairs.append((int(trigger), int(offer)))
            batches.append(pairs)
        # the chain starts at a random cluster, so batch order within an epoch is already mixed;
        # shuffle anyway so that similar runs are not always adjacent steps
        perm = rng.permutation(len(batches))
        return [batches[p] for p in perm]


def _check_items(items: pd.DataFrame) -> pd.DataFrame:
    """Raises ValueError unless items has the item columns and every item a title or an image."""
    missing = set(ITEM_COLUMNS) - set(items.columns)
    if missing:
        raise ValueError(f"items need columns {list(ITEM_COLUMNS)}; missing {sorted(missing)}")
    empty = items["title"].isna() & items["image"].isna()
    if empty.any():
        raise ValueError(f"{int(empty.sum())} items have neither a title nor an image; drop them first")
    return items
