"""Readers of the real labelled benchmarks in ``shared/datasets`` (see its README.md).

The bottom layer under evaluation and training: it imports nothing of ours. Each reader returns
small pandas frames with the columns the evaluation tasks and the trainer need and nothing else. Encodings and quirks are handled here once:

* Leipzig CSVs: Abt, Amazon and GoogleProducts are latin-1, Buy is UTF-8; ids are strings.
* WDC Products: gzipped JSON Lines of pairs; an offer's ``id`` and ``cluster_id`` are integers.
* GroceryStore: the split files still list the Fruit/Vegetables photos that were not copied, so
  only ``Packages`` lines are kept.

``limit`` arguments take a deterministic subset (for the fast test run); ``None`` keeps all.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

WDC_FOLDER = "wdc_products_80cc20rnd"
WDC_PREFIX = "wdcproducts80cc20rnd"
WDC_TRAIN = "000un_train_medium"  # the only WDC file training and fit_lexical read
WDC_VALID = "000un_valid_medium"
"""The WDC file on which thresholds (and any weights) are chosen; never a test file."""
WDC_TEST = ("000un_gs", "050un_gs", "100un_gs")
"""The WDC test files: 0 %, 50 % and 100 % of their products unseen in training."""

LEIPZIG_SOURCES = {
    # source: (folder, file, encoding, title column)
    "abt": ("leipzig_abt_buy", "Abt.csv", "latin-1", "name"),
    "buy": ("leipzig_abt_buy", "Buy.csv", "utf-8", "name"),
    "amazon": ("leipzig_amazon_google", "Amazon.csv", "latin-1", "title"),
    "google": ("leipzig_amazon_google", "GoogleProducts.csv", "latin-1", "name"),
}
LEIPZIG_MAPPINGS = {
    # task: (folder, file, left source, right source)
    "abt_buy": ("leipzig_abt_buy", "abt_buy_perfectMapping.csv", "abt", "buy"),
    "amazon_google": (
        "leipzig_amazon_google",
        "Amzon_GoogleProducts_perfectMapping.csv",  # sic: the original file name
        "amazon",
        "google",
    ),
}

GROCERY_FOLDER = "grocery_store_packages"
MULTI_WORD_BRANDS = {"God": "God Morgon"}
"""GroceryStore fine class names start with the brand; "God-Morgon-..." is the one two-word brand."""


def read_leipzig_source(shared: Path, source: str) -> pd.DataFrame:
    """Reads one Leipzig table.

    Args:
        shared: the shared datasets folder.
        source: ``abt``, ``buy``, ``amazon`` or ``google``.

    Returns:
        A frame with string columns ``id, title, description, brand, price`` (``brand`` is the
        ``manufacturer`` column where the source has one, else empty), in file order.

    Raises:
        ValueError: if the ids of the table are not unique.
    """
    folder, name, encoding, title_col = LEIPZIG_SOURCES[source]
    frame = pd.read_csv(shared / folder / name, encoding=encoding, dtype=str, keep_default_na=False)
    frame = frame.rename(columns={title_col: "title", "manufacturer": "brand"})
    if "brand" not in frame:
        frame["brand"] = ""
    if not frame["id"].is_unique:
        raise ValueError(f"{shared / folder / name}: ids are not unique")
    return frame[["id", "title", "description", "brand", "price"]]


@dataclass(frozen=True)
class MatchingTask:
    """Two record tables and the pairs of them that match (closed world).

    Attributes:
        name: e.g. ``amazon_google``.
        left: frame ``id, title, brand, price`` of the left source (strings; "" where absent).
        right: the same of the right source.
        matches: frame ``left_id, right_id``; every other cross pair is a non-match.
    """

    name: str
    left: pd.DataFrame
    right: pd.DataFrame
    matches: pd.DataFrame


def read_leipzig_matching(shared: Path, task: str, limit: int | None = None) -> MatchingTask:
    """Reads a Leipzig matching task (``abt_buy`` or ``amazon_google``).

    Args:
        shared: the shared datasets folder.
        task: ``abt_buy`` or ``amazon_google``.
        limit: keep only the records of the first ``limit`` mapping pairs plus up to ``limit``
            unmatched right records (a deterministic subset for fast runs); None keeps all.

    Returns:
        The MatchingTask, tables in file order.

    Raises:
        ValueError: if a mapping pair names an id that is not in its table.
    """
    folder, name, left_source, right_source = LEIPZIG_MAPPINGS[task]
    left = read_leipzig_source(shared, left_source)[["id", "title", "brand", "price"]]
    right = read_leipzig_source(shared, right_source)[["id", "title", "brand", "price"]]
    mapping = pd.read_csv(shared / folder / name, dtype=str, keep_default_na=False)
    mapping.columns = ["left_id", "right_id"]
    for column, table in (("left_id", left), ("right_id", right)):
        unknown = set(mapping[column]) - set(table["id"])
        if unknown:
            raise ValueError(f"{name}: {len(unknown)} {column} values not in the table")
    if limit is not None:
        mapping = mapping.head(limit)
        left = left[left["id"].isin(mapping["left_id"])]
        unmatched = right[~right["id"].isin(mapping["right_id"])].head(limit)
        right = right[right["id"].isin(mapping["right_id"]) | right["id"].isin(unmatched["id"])]
    return MatchingTask(task, left.reset_index(drop=True), right.reset_index(drop=True), mapping)


def within_source_groups(task: MatchingTask) -> pd.Series:
    """The true duplicate groups inside the right source of a matching task.

    Two right records mapped (transitively, through the mapping graph) to the same left record
    are the same product. Right records with no such partner are singletons.

    Args:
        task: a MatchingTask (e.g. Amazon-Google: the groups are inside Google).

    Returns:
        A Series indexed like ``task.right`` with a group label per right record; singletons get
        their own id as label.
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for left_id, right_id in task.matches.itertuples(index=False):
        a, b = find("L:" + left_id), find("R:" + right_id)
        if a != b:
            parent[max(a, b)] = min(a, b)
    labels = [find("R:" + rid) if "R:" + rid in parent else "R:" + rid for rid in task.right["id"]]
    return pd.Series(labels, index=task.right.index, name="group")


def read_wdc_pairs(shared: Path, split: str) -> pd.DataFrame:
    """Reads one WDC Products pair file.

    Args:
        shared: the shared datasets folder.
        split: the file's suffix, e.g. ``000un_valid_medium`` or ``100un_gs``.

    Returns:
        A frame ``id_left, id_right, label`` (ints; label 1 = same product), in file order.
    """
    path = shared / WDC_FOLDER / f"{WDC_PREFIX}{split}.json.gz"
    frame = pd.read_json(path, lines=True, compression="gzip")
    return frame[["id_left", "id_right", "label"]].astype("int64")


def read_wdc_offers(shared: Path, splits: tuple[str, ...]) -> pd.DataFrame:
    """Collects the distinct offers of some WDC pair files.

    Args:
        shared: the shared datasets folder.
        splits: file suffixes to read.

    Returns:
        A frame ``id, title, brand, cluster_id, price, currency`` with one row per offer id,
        sorted by id (``price`` is the file's string, e.g. "468.63"; None where absent).

    Raises:
        ValueError: if one offer id carries two different titles or cluster ids.
    """
    sides = []
    for split in splits:
        path = shared / WDC_FOLDER / f"{WDC_PREFIX}{split}.json.gz"
        frame = pd.read_json(path, lines=True, compression="gzip")
        for side in ("left", "right"):
            columns = ("id", "title", "brand", "cluster_id", "price", "priceCurrency")
            part = frame[[f"{c}_{side}" for c in columns]]
            part.columns = ["id", "title", "brand", "cluster_id", "price", "currency"]
            sides.append(part)
    offers = pd.concat(sides).drop_duplicates().sort_values("id", kind="stable")
    if not offers["id"].is_unique:
        raise ValueError("a WDC offer id has two different titles, brands or cluster ids")
    offers["title"] = offers["title"].fillna("").astype(str)
    return offers.reset_index(drop=True)


def read_wdc_train(shared: Path) -> tuple[pd.DataFrame, pd.Series]:
    """Reads the WDC train_medium offers and the ids reserved for validation and testing.

    Args:
        shared: the shared datasets folder.

    Returns:
        ``(offers, reserved)``: the ``WDC_TRAIN`` offers (``read_wdc_offers`` columns) and a
        Series of the offer ids of ``WDC_VALID`` and the gs files, which nothing may train or
        fit on.

    Raises:
        FileNotFoundError: if the WDC folder is missing.
    """
    if not (shared / WDC_FOLDER).is_dir():
        raise FileNotFoundError(f"{shared / WDC_FOLDER} is missing; pass --shared")
    return read_wdc_offers(shared, (WDC_TRAIN,)), read_wdc_offers(shared, (WDC_VALID, *WDC_TEST))["id"]


def in_verifier_share(products, share: float) -> np.ndarray:
    """Which products belong to the pair verifier's share of the training data.

    A product (a WDC ``cluster_id``, a GroceryStore ``fine_id``) is in the share when the first 32
    bits of the SHA-256 of its decimal id, as a fraction of 2**32, fall below ``share``: stable
    across runs, machines and the order of the rows, and the same for the encoder's trainer (which
    leaves these products out) and the verifier's (which uses only these).

    Args:
        products: integer product ids.
        share: ``train.verifier_share`` in [0, 1).

    Returns:
        bool [n], True = the verifier's product.
    """
    ids = [int(x) for x in products]
    if share <= 0:
        return np.zeros(len(ids), dtype=bool)
    fraction = [int(hashlib.sha256(str(x).encode()).hexdigest()[:8], 16) / 2**32 for x in ids]
    return np.asarray(fraction, dtype=np.float64) < share


def trained_products(products, share: float, side: str = "outside") -> np.ndarray:
    """Which products an encoder trained with ``train.verifier_share`` / ``train.share_side`` saw.

    Returns:
        bool [n]: outside the share for ``side="outside"`` (every product when ``share`` is 0),
        inside it for ``side="inside"``.
    """
    inside = in_verifier_share(products, share)
    return inside if side == "inside" else ~inside


def subset_pairs(pairs: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """A deterministic subset of labelled pairs that keeps both labels.

    Args:
        pairs: a frame with a ``label`` column.
        limit: how many pairs to keep (about half positives where there are enough); None keeps
            all.
        seed: seed of the draw.

    Returns:
        The subset, in the original order.
    """
    if limit is None or limit >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed)
    keep = []
    for label, part in pairs.groupby("label"):
        want = min(len(part), limit // 2 if label == 1 else limit - min(limit // 2, len(part)))
        keep.append(rng.choice(part.index.to_numpy(), size=want, replace=False))
    return pairs.loc[np.sort(np.concatenate(keep))]


def grocery_title(fine_class: str, coarse_class: str) -> tuple[str, str, str]:
    """Builds the constructed title of a GroceryStore SKU.

    Args:
        fine_class: e.g. ``Arla-Standard-Milk``.
        coarse_class: e.g. ``Milk``.

    Returns:
        ``(title, brand, category)``, e.g. ``("Arla Milk", "Arla", "Milk")``.
    """
    first = fine_class.split("-")[0]
    brand = MULTI_WORD_BRANDS.get(first, first)
    category = coarse_class.replace("-", " ")
    return f"{brand} {category}", brand, category


def read_grocery(shared: Path, limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reads the GroceryStore Packages photos and catalog (iconic) images.

    Args:
        shared: the shared datasets folder.
        limit: keep at most ``limit`` photos per split, spread over the classes (round robin
            over classes in class order); None keeps all.

    Returns:
        ``(photos, catalog)``. ``photos``: ``path, split, fine_id, fine, coarse, title`` with
        ``path`` absolute and ``title`` the constructed brand + coarse class title. ``catalog``:
        the same columns for the one iconic image per SKU (``split = "catalog"``).
    """
    root = shared / GROCERY_FOLDER
    classes = pd.read_csv(root / "classes.csv")
    classes.columns = ["fine", "fine_id", "coarse", "coarse_id", "iconic", "description"]
    classes = classes[classes["iconic"].str.contains("/Packages/")].set_index("fine_id")

    rows = []
    for split in ("train", "val", "test"):
        by_class: dict[int, list[str]] = collections.defaultdict(list)
        for line in (root / f"{split}.txt").read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and "/Packages/" in parts[0]:
                by_class[int(parts[1])].append(parts[0])
        ordered = _round_robin(by_class, limit)
        rows += [(str(root / path), split, fine_id) for fine_id, path in ordered]
    photos = pd.DataFrame(rows, columns=["path", "split", "fine_id"])
    catalog = pd.DataFrame(
        {
            "path": [str(root / p.lstrip("/")) for p in classes["iconic"]],
            "split": "catalog",
            "fine_id": classes.index.to_numpy(),
        }
    )
    for frame in (photos, catalog):
        frame["fine"] = frame["fine_id"].map(classes["fine"])
        frame["coarse"] = frame["fine_id"].map(classes["coarse"])
        frame["title"] = [grocery_title(f, c)[0] for f, c in zip(frame["fine"], frame["coarse"], strict=True)]
    return photos, catalog


def shop_pools(classes: np.ndarray, pools: int, skus: int, per_sku: int, seed: int = 0) -> list[np.ndarray]:
    """Draws shop-like pools of records: ``skus`` classes with ``per_sku`` records each.

    Args:
        classes: [n] the class (e.g. GroceryStore ``fine_id``) of each record.
        pools: how many pools to draw.
        skus: classes per pool (all of them when there are fewer).
        per_sku: records per class (all of a class's records when it has fewer).
        seed: seed of the draw.

    Returns:
        Per pool, the row numbers of its records (int64), class by class.
    """
    rng = np.random.default_rng(seed)
    classes = np.asarray(classes)
    labels = np.array(sorted(set(classes.tolist())))
    by_class = {c: np.flatnonzero(classes == c) for c in labels}
    out = []
    for _ in range(pools):
        chosen = rng.choice(labels, size=min(skus, len(labels)), replace=False)
        rows = [rng.choice(by_class[c], size=min(per_sku, len(by_class[c])), replace=False) for c in chosen]
        out.append(np.concatenate(rows).astype(np.int64))
    return out


def _round_robin(by_class: dict[int, list[str]], limit: int | None) -> list[tuple[int, str]]:
    """Takes items class by class in turn (classes sorted) until ``limit`` items are taken."""
    queues = {k: sorted(v) for k, v in sorted(by_class.items())}
    taken: list[tuple[int, str]] = []
    total = sum(len(v) for v in queues.values())
    cap = total if limit is None else min(limit, total)
    depth = 0
    while len(taken) < cap:
        for fine_id, paths in queues.items():
            if depth < len(paths) and len(taken) < cap:
                taken.append((fine_id, paths[depth]))
        depth += 1
    return sorted(taken, key=lambda item: item[1])
