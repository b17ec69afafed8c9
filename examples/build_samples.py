#!/usr/bin/env python
"""Builds the small sample listings in ``examples/`` from real public product-matching data.

The sample is three consecutive days of supplier listings in the listings input contract
(``listings/dt=YYYY-MM-DD/part-00000.parquet``), with the true within-supplier duplicate groups
and the expected quarantine rows written beside it (``ground_truth/``), plus ``README.md``.

Sources (read from ``--shared``, see its README.md):

* ``leipzig_amazon_google/`` -> suppliers ``google-products`` and ``amazon``;
* ``leipzig_abt_buy/`` -> suppliers ``buy`` and ``abt``;
* ``grocery_store_packages/`` -> two photo-only grocery shops, ``grocer-north`` and
  ``grocer-south``.

Within-supplier duplicates come from the cross-source perfect mappings: two records of one source
that are mapped (transitively) to the same record of the other source are the same product. The
build is deterministic: fixed seeds, sorted inputs, no wall-clock time.

Run from the repository root::

    .venv/bin/python examples/build_samples.py --shared ../shared/datasets --out examples
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime as dt
import io
import logging
import random
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.datasets import grocery_title, read_leipzig_source
from schemas.tables import LISTINGS

LOG = logging.getLogger("build_samples")

SEED = 20240301
"""Base seed; every supplier draws from its own ``random.Random(f"{SEED}:{name}")``."""

DAYS = ("2024-03-01", "2024-03-02", "2024-03-03")
"""The three consecutive listing days (``dt=`` partitions)."""

DAY_WEIGHTS = (2, 1, 1)
"""Relative chance of a listing arriving on each day (day 1 is the initial catalogue load)."""

IMAGE_MAX_SIDE = 224
"""Photos are re-encoded so that their longest side is at most this many pixels."""

JPEG_QUALITY = 85

MAX_TOTAL_BYTES = 5 * 1024 * 1024
"""Budget for everything under ``examples/``."""

LISTINGS_SCHEMA = LISTINGS
"""The listings input contract, column order included (``schemas.tables.LISTINGS``)."""

GOOGLE_ID = re.compile(r"^http://www\.google\.com/base/feeds/snippets/(\d+)$")


@dataclasses.dataclass(frozen=True)
class TextSupplierSpec:
    """How to sample one Leipzig source as a supplier.

    Attributes:
        supplier_id: the supplier name written to ``supplier_id``.
        source: the node prefix of this source in the cluster graph (``"google"``, ...).
        other: the node prefix of the source it is mapped against.
        n_groups: how many duplicate groups to take; None takes them all.
        n_singletons: how many listings that duplicate nothing in the sample to take.
    """

    supplier_id: str
    source: str
    other: str
    n_groups: int | None
    n_singletons: int


@dataclasses.dataclass
class Row:
    """One listing row of one day, plus the labels the ground truth needs."""

    day: int
    listing_id: str
    supplier_id: str | None
    title: str | None
    description: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    currency: str | None = None
    image: bytes | None = None
    image_uri: str | None = None
    updated_at: dt.datetime | None = None
    is_deleted: bool | None = False
    product_id: str | None = None  # true product key when the row is in a within-supplier group
    singleton: bool = False  # a real listing that duplicates nothing in the sample

    def record(self) -> dict:
        """Returns the row as a dict with exactly the ``LISTINGS_SCHEMA`` columns."""
        return {name: getattr(self, name) for name in LISTINGS_SCHEMA.names}


# --------------------------------------------------------------------------------------------
# small helpers


def supplier_rng(name: str) -> random.Random:
    """Returns the seeded random generator of one supplier (string seeds are stable across runs)."""
    return random.Random(f"{SEED}:{name}")


def clean(value: object) -> str | None:
    """Returns a stripped string, or None for a missing or blank value."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def parse_price(raw: object) -> tuple[float | None, str | None]:
    """Parses a raw price cell into ``(price, currency)``.

    ``"$399.00"`` -> ``(399.0, "USD")``; ``"69.71 gbp"`` -> ``(69.71, "GBP")`` (GoogleProducts
    quotes a few prices in pounds); ``"0"``, ``""`` or anything unparsable -> ``(None, None)``.

    Args:
        raw: the price cell as read from the CSV.

    Returns:
        The price as a float and its ISO currency code, or ``(None, None)`` when unknown.
    """
    text = clean(raw)
    if text is None:
        return None, None
    match = re.fullmatch(r"\$?\s*([\d,]*\.?\d+)\s*([a-zA-Z]{3})?", text)
    if not match:
        return None, None
    value = float(match.group(1).replace(",", ""))
    if value <= 0:
        return None, None
    return value, (match.group(2) or "USD").upper()


def norm_title(title: str) -> str:
    """Normalises a title for the exact-duplicate check (lowercase, alphanumerics only)."""
    return re.sub(r"[^0-9a-z]+", " ", title.lower()).strip()


def pick_day(rng: random.Random) -> int:
    """Draws the day index (0-based) a listing arrives on."""
    return rng.choices(range(len(DAYS)), weights=DAY_WEIGHTS)[0]


def timestamp_in_day(day: int, rng: random.Random) -> dt.datetime:
    """Returns a random whole-second UTC timestamp within day ``day`` (0-based)."""
    start = dt.datetime.fromisoformat(DAYS[day]).replace(tzinfo=dt.UTC)
    return start + dt.timedelta(seconds=rng.randrange(60, 86_400 - 60))


def connected_components(edges: Iterable[tuple[str, str]]) -> list[set[str]]:
    """Returns the connected components (transitive closure) of an undirected edge list."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for left, right in edges:
        root_l, root_r = find(left), find(right)
        if root_l != root_r:
            parent[max(root_l, root_r)] = min(root_l, root_r)
    components: dict[str, set[str]] = collections.defaultdict(set)
    for node in list(parent):
        components[find(node)].add(node)
    return sorted(components.values(), key=min)


def encode_jpeg(path: Path) -> bytes:
    """Re-encodes an image as a small JPEG (longest side ``IMAGE_MAX_SIDE``, no metadata)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Leipzig text sources


def read_leipzig(shared: Path) -> tuple[dict[str, pd.DataFrame], list[set[str]]]:
    """Reads the four Leipzig tables and the cluster graph of both perfect mappings.

    Args:
        shared: the shared datasets folder.

    Returns:
        ``(records, clusters)``: ``records`` maps a source prefix (``google``, ``amazon``, ``buy``,
        ``abt``) to a frame with columns ``id, title, description, brand, price`` (``id`` as used
        in listing ids, Google ids shortened to their numeric snippet id); ``clusters`` are the
        connected components of the mapping graph, nodes named ``"<source>:<id>"``.
    """
    ag, ab = shared / "leipzig_amazon_google", shared / "leipzig_abt_buy"

    google = read_leipzig_source(shared, "google")
    google["id"] = google["id"].map(lambda url: GOOGLE_ID.fullmatch(url).group(1))
    records = {
        "google": google,
        "amazon": read_leipzig_source(shared, "amazon"),
        "buy": read_leipzig_source(shared, "buy"),
        "abt": read_leipzig_source(shared, "abt"),
    }
    for name, frame in records.items():
        if not frame["id"].is_unique:
            raise ValueError(f"{name}: ids are not unique")

    ag_map = pd.read_csv(ag / "Amzon_GoogleProducts_perfectMapping.csv", dtype=str)
    ab_map = pd.read_csv(ab / "abt_buy_perfectMapping.csv", dtype=str)
    edges = [
        (f"amazon:{a}", f"google:{GOOGLE_ID.fullmatch(g).group(1)}")
        for a, g in zip(ag_map["idAmazon"], ag_map["idGoogleBase"], strict=True)
    ]
    edges += [(f"abt:{a}", f"buy:{b}") for a, b in zip(ab_map["idAbt"], ab_map["idBuy"], strict=True)]
    clusters = connected_components(edges)
    LOG.info(
        "leipzig: %s records, %d mapping pairs, %d clusters",
        {k: len(v) for k, v in records.items()},
        len(edges),
        len(clusters),
    )
    return records, clusters


def title_clash_stats(records: pd.DataFrame, source: str, clusters: list[set[str]]) -> tuple[int, int]:
    """Counts normalised titles shared by several records of one source.

    Args:
        records: the source's records.
        source: its node prefix in the cluster graph.
        clusters: the mapping clusters.

    Returns:
        ``(shared, unlinked)``: titles held by two or more records, and how many of those the
        mapping does not put into one cluster (unlabelled probable within-source duplicates).
    """
    cluster_of = {node: i for i, cluster in enumerate(clusters) for node in cluster}
    holders = collections.defaultdict(list)
    for rid, title in zip(records["id"], records["title"], strict=True):
        holders[norm_title(title)].append(cluster_of.get(f"{source}:{rid}", f"unmapped:{rid}"))
    shared = [homes for homes in holders.values() if len(homes) > 1]
    return len(shared), sum(1 for homes in shared if len(set(homes)) > 1)


def sample_text_supplier(spec: TextSupplierSpec, records: pd.DataFrame, clusters: list[set[str]]) -> list[Row]:
    """Samples duplicate groups and singletons of one Leipzig source as one supplier's listings.

    A duplicate group is every record of ``spec.source`` in one mapping cluster that holds two or
    more of them; its ``product_id`` is the smallest id of the other source in the cluster. A
    singleton is a record alone in its cluster (or unmapped). Because the Leipzig mappings are
    closed-world but incomplete inside a source, records whose normalised title equals that of
    another record of the same source outside their cluster are never sampled.

    Args:
        spec: what to sample.
        records: the source's records (see ``read_leipzig``).
        clusters: the mapping clusters.

    Returns:
        The sampled rows, each with its day and ``updated_at`` drawn from the supplier's generator.
    """
    rng = supplier_rng(spec.supplier_id)
    by_id = records.set_index("id", drop=False)
    prefix = f"{spec.source}:"
    cluster_of: dict[str, int] = {}
    for index, cluster in enumerate(clusters):
        for node in cluster:
            if node.startswith(prefix):
                cluster_of[node[len(prefix) :]] = index

    titles = collections.defaultdict(set)
    for rid, title in zip(records["id"], records["title"], strict=True):
        titles[norm_title(title)].add(rid)

    def title_clash(rid: str) -> bool:
        """True when another record of this source outside rid's cluster has the same title."""
        others = titles[norm_title(by_id.at[rid, "title"])] - {rid}
        home = cluster_of.get(rid)
        return any(home is None or cluster_of.get(other) != home for other in others)

    groups: list[tuple[str, list[str]]] = []
    clashing_groups = 0
    for cluster in clusters:
        own = sorted(node[len(prefix) :] for node in cluster if node.startswith(prefix))
        if len(own) < 2:
            continue
        other = min(node for node in cluster if node.startswith(f"{spec.other}:"))
        if any(title_clash(rid) for rid in own):
            clashing_groups += 1
            if spec.n_groups is not None:
                continue
        groups.append((other, own))
    if spec.n_groups is not None:
        groups = sorted(rng.sample(groups, spec.n_groups))
    elif clashing_groups:
        LOG.warning(
            "%s: %d of its duplicate groups share a title with a record outside the group",
            spec.supplier_id,
            clashing_groups,
        )

    def alone(rid: str) -> bool:
        """True when rid is the only record of this source in its cluster (or unmapped)."""
        if rid not in cluster_of:
            return True
        return sum(1 for node in clusters[cluster_of[rid]] if node.startswith(prefix)) < 2

    singles = sorted(
        rid for rid in records["id"] if clean(by_id.at[rid, "title"]) and alone(rid) and not title_clash(rid)
    )
    singles = rng.sample(singles, spec.n_singletons)

    def make(rid: str, day: int, product_id: str | None) -> Row:
        rec = by_id.loc[rid]
        price, currency = parse_price(rec["price"])
        return Row(
            day=day,
            listing_id=f"{spec.source}:{rid}",
            supplier_id=spec.supplier_id,
            title=clean(rec["title"]),
            description=clean(rec["description"]),
            brand=clean(rec["brand"]),
            price=price,
            currency=currency,
            updated_at=None,
            is_deleted=False,
            product_id=product_id,
            singleton=product_id is None,
        )

    rows = [make(rid, pick_day(rng), other) for other, own in groups for rid in own]
    # the first singletons go one to each day so that every day has some; the rest at random
    rows += [make(rid, i if i < len(DAYS) else pick_day(rng), None) for i, rid in enumerate(singles)]
    for row in rows:
        row.updated_at = timestamp_in_day(row.day, rng)
    LOG.info(
        "%s: %d groups (%d listings) + %d singletons",
        spec.supplier_id,
        len(groups),
        sum(len(own) for _, own in groups),
        len(singles),
    )
    return rows


# --------------------------------------------------------------------------------------------
# GroceryStoreDataset photos

GROCERY_SHOPS: dict[str, tuple[str, ...]] = {
    # four Arla milks and two Tropicana juices: same title, different products (hard negatives)
    "grocer-north": (
        "Arla-Standard-Milk",
        "Arla-Medium-Fat-Milk",
        "Arla-Ecological-Medium-Fat-Milk",
        "Arla-Lactose-Medium-Fat-Milk",
        "Tropicana-Apple-Juice",
        "Tropicana-Golden-Grapefruit",
        "Oatly-Oat-Milk",
        "Alpro-Blueberry-Soyghurt",
    ),
    # two God Morgon juices, two Yoggi yoghurts, two Arla sour creams
    "grocer-south": (
        "God-Morgon-Apple-Juice",
        "God-Morgon-Orange-Juice",
        "Bravo-Orange-Juice",
        "Yoggi-Strawberry-Yoghurt",
        "Yoggi-Vanilla-Yoghurt",
        "Arla-Sour-Cream",
        "Arla-Ecological-Sour-Cream",
        "Arla-Standard-Milk",
    ),
}
"""The fine classes (SKUs) each grocery shop lists; Arla-Standard-Milk is in both (other photos)."""

GROCERY_ICONIC: dict[str, tuple[str, ...]] = {
    "grocer-north": ("Arla-Medium-Fat-Milk", "Tropicana-Apple-Juice"),
    "grocer-south": ("Yoggi-Vanilla-Yoghurt",),
}
"""SKUs for which a shop also lists the web catalog ("iconic") image."""

GROCERY_IMAGE_ONLY = ("grocer-south", "Bravo-Orange-Juice")
"""One photo of this (shop, SKU) is listed with a null title: valid, the image stands in for it."""


def build_grocery(shared: Path) -> list[Row]:
    """Builds the photo listings of the two grocery shops.

    Each SKU of a shop gets 3 or 4 in-store photos drawn from the train/val/test ``Packages``
    photos (the two shops never share a photo) and some SKUs also their catalog image. All rows
    of one SKU in one shop are a duplicate group keyed by the fine class name.

    Args:
        shared: the shared datasets folder.

    Returns:
        The grocery rows, with days, timestamps and shop-local sequential listing ids.
    """
    root = shared / "grocery_store_packages"
    classes = pd.read_csv(root / "classes.csv")
    classes.columns = ["fine", "fine_id", "coarse", "coarse_id", "iconic", "description"]
    classes = classes.set_index("fine")

    photos: dict[str, list[str]] = collections.defaultdict(list)
    for split in ("train", "val", "test"):
        for line in (root / f"{split}.txt").read_text().splitlines():
            path = line.split(",")[0].strip()
            if "/Packages/" in path:
                photos[Path(path).parent.name].append(path)
    rng = supplier_rng("grocery")
    for fine in sorted(photos):
        photos[fine].sort()
        rng.shuffle(photos[fine])

    rows: list[Row] = []
    for shop, skus in GROCERY_SHOPS.items():
        shop_rng = supplier_rng(shop)
        shop_rows: list[Row] = []
        for fine in skus:
            title, brand, category = grocery_title(fine, classes.at[fine, "coarse"])
            n_photos = shop_rng.choice((3, 4))
            paths = [photos[fine].pop() for _ in range(n_photos)]
            if fine in GROCERY_ICONIC[shop]:
                paths.append(classes.at[fine, "iconic"].lstrip("/"))
            for path in paths:
                shop_rows.append(
                    Row(
                        day=pick_day(shop_rng),
                        listing_id="",
                        supplier_id=shop,
                        title=title,
                        category=category,
                        brand=brand,
                        image=encode_jpeg(root / path),
                        is_deleted=None,
                        product_id=fine,
                    )
                )
                if (shop, fine) == GROCERY_IMAGE_ONLY and path == paths[0]:
                    shop_rows[-1].title = None
        shop_rng.shuffle(shop_rows)  # so that sequential ids do not reveal the groups
        for number, row in enumerate(shop_rows, start=1):
            row.listing_id = f"{shop}:{number}"
            row.updated_at = timestamp_in_day(row.day, shop_rng)
        LOG.info("%s: %d SKUs, %d photo listings", shop, len(skus), len(shop_rows))
        rows += shop_rows
    return rows


# --------------------------------------------------------------------------------------------
# fault and change rows


@dataclasses.dataclass(frozen=True)
class Expected:
    """A row the pipeline must treat specially: a quarantine (``rule``) or a change (``event``)."""

    run_date: str
    listing_id: str
    supplier_id: str | None
    kind: str  # "quarantine" or "change"
    what: str  # the rule name, or "updated" / "deleted"


def add_faults_and_changes(rows: list[Row]) -> tuple[list[Row], list[Expected]]:
    """Adds the synthetic fault rows of day 2 and the update and deletion of day 3.

    Day 2: a row with a null ``supplier_id`` (``supplier_id_not_null``), a row with neither title
    nor image (``title_or_image_present``) and an older copy of a real day-2 listing with the same
    ``listing_id`` (``listing_id_unique``; the newer row is kept). Day 3: a new price for a day-1
    singleton and the deletion of another day-1 singleton.

    Args:
        rows: the real rows.

    Returns:
        ``(rows, expected)``: the rows with the extra ones appended, and what the pipeline
        should do with them.
    """
    rng = supplier_rng("faults")
    day2, day3 = DAYS[1], DAYS[2]
    noon2 = dt.datetime.fromisoformat(day2).replace(hour=12, tzinfo=dt.UTC)
    expected: list[Expected] = []
    extra: list[Row] = []

    null_supplier = Row(
        day=1,
        listing_id="synthetic:null-supplier-1",
        supplier_id=None,
        title="SYNTHETIC FAULT ROW (supplier_id is null)",
        description="Synthetic row added to the sample to exercise the supplier_id_not_null rule.",
        updated_at=noon2,
    )
    no_title = Row(
        day=1,
        listing_id="abt:synthetic-no-title-1",
        supplier_id="abt",
        title=None,
        description="SYNTHETIC FAULT ROW (no title and no image): exercises title_or_image_present.",
        updated_at=noon2 + dt.timedelta(minutes=5),
    )
    extra += [null_supplier, no_title]
    expected += [
        Expected(day2, null_supplier.listing_id, None, "quarantine", "supplier_id_not_null"),
        Expected(day2, no_title.listing_id, "abt", "quarantine", "title_or_image_present"),
    ]

    def singletons(supplier: str, day: int, priced: bool = False) -> list[Row]:
        return sorted(
            (
                r
                for r in rows
                if r.supplier_id == supplier and r.day == day and r.singleton and (r.price is not None or not priced)
            ),
            key=lambda r: r.listing_id,
        )

    kept = rng.choice(singletons("amazon", 1, priced=True))
    day2_start = dt.datetime.fromisoformat(day2).replace(tzinfo=dt.UTC)
    stale = dataclasses.replace(
        kept,
        price=round(kept.price + 5.0, 2),
        singleton=False,
        description="SYNTHETIC FAULT ROW (stale copy with an older updated_at of a listing "
        "sent again later the same day): exercises listing_id_unique.",
        updated_at=day2_start + dt.timedelta(seconds=(kept.updated_at - day2_start).seconds // 2),
    )
    extra.append(stale)
    expected.append(Expected(day2, kept.listing_id, "amazon", "quarantine", "listing_id_unique"))

    updated = rng.choice(singletons("google-products", 0, priced=True))
    extra.append(
        dataclasses.replace(
            updated,
            day=2,
            price=round(updated.price * 0.9, 2),
            singleton=False,
            updated_at=timestamp_in_day(2, rng),
        )
    )
    expected.append(Expected(day3, updated.listing_id, updated.supplier_id, "change", "updated"))

    deleted = rng.choice(singletons("buy", 0))
    extra.append(
        dataclasses.replace(
            deleted,
            day=2,
            is_deleted=True,
            singleton=False,
            updated_at=timestamp_in_day(2, rng),
        )
    )
    expected.append(Expected(day3, deleted.listing_id, deleted.supplier_id, "change", "deleted"))
    return rows + extra, expected


# --------------------------------------------------------------------------------------------
# writing


def write_listings(rows: list[Row], out: Path) -> dict[str, Path]:
    """Writes one Parquet file per day, rows ordered by ``updated_at`` then ``listing_id``.

    Args:
        rows: every row of every day.
        out: the output folder (``examples``).

    Returns:
        The written file of each day.
    """
    listings = out / "listings"
    if listings.exists():
        for old in sorted(listings.glob("dt=*/part-*.parquet")):
            old.unlink()
    files = {}
    for index, day in enumerate(DAYS):
        day_rows = sorted((r for r in rows if r.day == index), key=lambda r: (r.updated_at, r.listing_id))
        table = pa.Table.from_pylist([r.record() for r in day_rows], schema=LISTINGS_SCHEMA)
        path = listings / f"dt={day}" / "part-00000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        files[day] = path
        LOG.info("wrote %s: %d rows", path, table.num_rows)
    return files


def write_csv(path: Path, header: list[str], records: Iterable[Iterable[object]]) -> None:
    """Writes a small CSV file with ``\\n`` line endings (None is written as an empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in rec] for rec in records])


def write_ground_truth(rows: list[Row], expected: list[Expected], shared: Path, out: Path) -> None:
    """Writes ``ground_truth/``: duplicates, expected quarantine, changes and the MIT licence."""
    truth = out / "ground_truth"
    members = sorted({(r.supplier_id, r.listing_id, r.product_id) for r in rows if r.product_id is not None})
    sizes = collections.Counter((s, p) for s, _, p in members)
    small = [key for key, size in sizes.items() if size < 2]
    if small:
        raise AssertionError(f"duplicate groups with fewer than 2 members: {small}")
    write_csv(truth / "duplicates.csv", ["supplier_id", "listing_id", "product_id"], members)
    write_csv(
        truth / "quarantine.csv",
        ["run_date", "listing_id", "rule"],
        [(e.run_date, e.listing_id, e.what) for e in expected if e.kind == "quarantine"],
    )
    write_csv(
        truth / "changes.csv",
        ["run_date", "supplier_id", "listing_id", "event"],
        [(e.run_date, e.supplier_id, e.listing_id, e.what) for e in expected if e.kind == "change"],
    )
    shutil.copyfile(shared / "grocery_store_packages" / "LICENSE", truth / "GROCERYSTORE_LICENSE")
    LOG.info("wrote %s: %d duplicate listings in %d groups", truth, len(members), len(sizes))


def summarise(rows: list[Row]) -> dict:
    """Computes the counts the README reports."""
    suppliers = ["google-products", "amazon", "buy", "abt", "grocer-north", "grocer-south"]
    per_day = {(s, d): 0 for s in suppliers + [None] for d in range(len(DAYS))}
    images = collections.Counter()
    for r in rows:
        per_day[(r.supplier_id, r.day)] += 1
        images[r.day] += r.image is not None
    groups: dict[tuple[str, str], list[Row]] = collections.defaultdict(list)
    for r in rows:
        if r.product_id is not None:
            groups[(r.supplier_id, r.product_id)].append(r)
    group_stats = {}
    for s in suppliers:
        mine = [g for (sup, _), g in groups.items() if sup == s]
        group_stats[s] = (
            len(mine),
            sum(len(g) for g in mine),
            sum(1 for g in mine if len({r.day for r in g}) > 1),
            sum(1 for r in rows if r.supplier_id == s and r.singleton),
        )
    return {
        "suppliers": suppliers,
        "per_day": per_day,
        "images": images,
        "groups": group_stats,
        "total": collections.Counter(r.day for r in rows),
    }


README_TEMPLATE = """\
# Sample listings (real data, 3 days)

Small, committed sample input for the pipeline, built from real public product-matching data by
`examples/build_samples.py` (deterministic: fixed seeds, sorted inputs). Rebuild it from the
repository root with

```
.venv/bin/python examples/build_samples.py --shared ../shared/datasets --out examples
```

`tests/examples/test_samples.py` checks the files and, when `../shared/datasets` is present,
that a rebuild gives the same content.

## Layout

| path | what |
|---|---|
| `listings/dt=YYYY-MM-DD/part-00000.parquet` | the day's new or changed listings, in the listings input contract (`schemas.tables.LISTINGS`) |
| `ground_truth/duplicates.csv` | `supplier_id,listing_id,product_id` for every listing in a true within-supplier duplicate group (>= 2 members) |
| `ground_truth/quarantine.csv` | `run_date,listing_id,rule`: the synthetic fault rows validation must quarantine |
| `ground_truth/changes.csv` | `run_date,supplier_id,listing_id,event`: the day-3 update and deletion |
| `ground_truth/GROCERYSTORE_LICENSE` | MIT licence of GroceryStoreDataset |

Real listings not in `duplicates.csv` are singletons: they duplicate no other listing of their
supplier in the sample (as far as the source labels know, see "Caveats").

## What is in it

Rows per file (fault and change rows included); `(none)` is the null-supplier fault row.

{day_table}

Within-supplier duplicate groups (a group = all listings of one supplier with the same
`product_id`; "spans days" = its members arrive on more than one day, so a day's new listing
must be matched against the supplier's catalogue of earlier days):

{group_table}

Every listing of `grocer-*` has a JPEG photo (longest side {max_side} px, quality {quality});
the Leipzig suppliers have text only (`image` null). `image_uri` is null everywhere. The
Leipzig rows have `is_deleted = false`, the grocery rows `is_deleted = null` (nullable: means
not deleted). All days have some singletons of every Leipzig supplier.

### Per supplier

* `google-products`: GoogleProducts.csv. `listing_id = "google:<numeric snippet id>"` (the
  original id is the Google Base URL `http://www.google.com/base/feeds/snippets/<id>`).
  Duplicates: Google records mapped (transitively) to the same Amazon record;
  `product_id = "amazon:<smallest Amazon id of the cluster>"`. {n_google} groups sampled at
  random out of those whose titles clash with nothing outside the group. A few Google prices
  are in pounds (`"69.71 gbp"`): `currency = "GBP"`.
* `amazon`: Amazon.csv, `listing_id = "amazon:<id>"`. Duplicates: Amazon records mapped to the
  same Google record; `product_id = "google:<id>"`. All {n_amazon} such groups (the transitive
  closure of the 9 Google ids with several Amazon matches gives {n_amazon}).
* `buy`: Buy.csv, `listing_id = "buy:<id>"`, duplicates mapped to the same Abt record,
  `product_id = "abt:<id>"`; all {n_buy} groups.
* `abt`: Abt.csv, `listing_id = "abt:<id>"`, duplicates mapped to the same Buy record,
  `product_id = "buy:<id>"`; all {n_abt} groups. Abt has no manufacturer column: `brand` is null.
* Prices: `"$399.00"` -> `399.0`; `0` or empty -> null; `currency = "USD"` (or `"GBP"`) only
  where the price is known. `category` is null for the Leipzig suppliers.
* `grocer-north` / `grocer-south`: in-store photos (train/val/test `Packages` photos of
  GroceryStoreDataset) of 8 SKUs each, 3-4 photos per SKU per shop, never the same photo in
  both shops. `title = brand + coarse class` (e.g. "Arla Milk", "God Morgon Juice"; brand = first
  token of the fine class name, "God Morgon" kept whole), `category` = coarse class, `brand`,
  no price, no description. `product_id` = the fine class name (e.g. `Arla-Standard-Milk`).
  Near-identical variants share a title but are NOT duplicates: grocer-north lists four Arla
  milks (Standard, Medium-Fat, Ecological Medium-Fat, Lactose Medium-Fat) and two Tropicana
  juices; grocer-south two God Morgon juices, two Yoggi yoghurts and two Arla sour creams.
  Some SKUs are also listed with their web catalog ("iconic") image
  ({iconic}); that listing is a duplicate of the SKU's photos.
  One grocer-south photo listing ({image_only}) has a null title: valid (title is required
  only when there is no image), it must NOT be quarantined.
  Listing ids are `"<shop>:<n>"`, numbered in shuffled order.

## Fault and change rows (synthetic)

All other rows are real records. These were added by the builder and are listed in
`ground_truth/quarantine.csv` / `changes.csv`:

| day | listing_id | supplier_id | what | expected |
|---|---|---|---|---|
{fault_table}

## Sources, attribution and licences

Provenance and licence notes copied from `../shared/datasets/README.md` (the paper citations
are added here):

* **Leipzig Abt-Buy** and **Leipzig Amazon-GoogleProducts** (Database Group Leipzig, FEVER
  benchmark; Köpcke, Thor & Rahm, "Evaluation of entity resolution approaches on real-world
  match problems", PVLDB 2010). Files taken from `github.com/dchud/ddbench`, commit
  `3bbedeaea67dc1b53bcd2e7d34c7da7e4edfdb66`, `data/abt-buy/` and `data/amazon-googleproducts/`.
  "Leipzig data and WDC data have no explicit licence. They are research benchmarks: cite them
  and don't redistribute them commercially." Encodings: Abt.csv, Amazon.csv and
  GoogleProducts.csv are latin-1, Buy.csv is UTF-8.
* **GroceryStoreDataset** (Marcus Klasson, Cheng Zhang, Hedvig Kjellström, "A Hierarchical
  Grocery Store Image Dataset with Visual and Semantic Labels", WACV 2019),
  `github.com/marcusklasson/GroceryStoreDataset`, commit
  `fc80ba90f803d79d0383df52c5a4ac5de99ff6fc`. MIT licence, Copyright (c) 2019 Marcus Klasson;
  the licence text is in `ground_truth/GROCERYSTORE_LICENSE`. The photos here are re-encoded
  (resized) copies.

## Caveats

* The Leipzig labels are cross-source match pairs; within-source duplicates are inferred from
  them and are incomplete. Normalised titles (lowercase, alphanumerics only) held by several
  records of one source, and how many of those the mapping leaves unlinked:
  {clash_stats}.
  Records whose title equals that of a record of the same source outside their own cluster
  were never sampled as singletons, nor in a sampled google-products group; near-identical
  but differently worded titles can still hide unlabelled duplicates.
* The grocery photos are shop-shelf photos of physical SKUs, not marketplace listings.
"""


def markdown_table(header: list[str], records: list[list[object]]) -> str:
    """Renders a GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in rec) + " |" for rec in records]
    return "\n".join(lines)


def write_readme(rows: list[Row], expected: list[Expected], clash: dict[str, tuple[int, int]], out: Path) -> None:
    """Writes ``README.md`` with the counts of this build.

    Args:
        rows: every row of every day.
        expected: the fault and change rows.
        clash: ``title_clash_stats`` per source file name.
        out: the output folder.
    """
    stats = summarise(rows)
    day_records = []
    for s in stats["suppliers"] + [None]:
        counts = [stats["per_day"][(s, d)] for d in range(len(DAYS))]
        day_records.append([s or "(none)", *counts, sum(counts)])
    totals = [stats["total"][d] for d in range(len(DAYS))]
    day_records.append(["**all**", *totals, sum(totals)])
    images = [stats["images"][d] for d in range(len(DAYS))]
    day_records.append(["with image", *images, sum(images)])
    group_records = [[s, *stats["groups"][s]] for s in stats["suppliers"]]
    group_records.append(["**all**", *(sum(stats["groups"][s][i] for s in stats["suppliers"]) for i in range(4))])
    rules = {
        "supplier_id_not_null": "supplier_id is null",
        "title_or_image_present": "no title and no image",
        "listing_id_unique": "a second row with this listing_id and an OLDER updated_at "
        "(price +5, synthetic description)",
        "updated": "new price (x0.9) for a day-1 listing, newer updated_at",
        "deleted": "is_deleted = true for a day-1 listing, title kept",
    }
    outcome = {
        "supplier_id_not_null": "quarantine `supplier_id_not_null`",
        "title_or_image_present": "quarantine `title_or_image_present`",
        "listing_id_unique": "quarantine the older row `listing_id_unique`; keep the newer (real) one",
        "updated": "replaces the day-1 version in the catalogue",
        "deleted": "tombstone: leaves the catalogue",
    }
    fault_records = [
        [e.run_date, f"`{e.listing_id}`", e.supplier_id or "null", rules[e.what], outcome[e.what]] for e in expected
    ]
    iconic = "; ".join(f"{shop}: {', '.join(skus)}" for shop, skus in GROCERY_ICONIC.items())
    image_only = next(r.listing_id for r in rows if r.image is not None and r.title is None)
    text = README_TEMPLATE.format(
        day_table=markdown_table(["supplier_id", *DAYS, "total"], day_records),
        group_table=markdown_table(
            ["supplier_id", "groups", "listings in groups", "groups spanning days", "singletons"], group_records
        ),
        fault_table="\n".join(markdown_table([""] * 5, fault_records).splitlines()[2:]),
        max_side=IMAGE_MAX_SIDE,
        quality=JPEG_QUALITY,
        n_google=stats["groups"]["google-products"][0],
        n_amazon=stats["groups"]["amazon"][0],
        n_buy=stats["groups"]["buy"][0],
        n_abt=stats["groups"]["abt"][0],
        iconic=iconic,
        image_only=f"`{image_only}`",
        clash_stats=", ".join(f"{name} {unlinked} of {shared}" for name, (shared, unlinked) in clash.items()),
    )
    (out / "README.md").write_text(text, encoding="utf-8")


TEXT_SUPPLIERS = (
    TextSupplierSpec("google-products", "google", "amazon", n_groups=40, n_singletons=80),
    TextSupplierSpec("amazon", "amazon", "google", n_groups=None, n_singletons=60),
    TextSupplierSpec("buy", "buy", "abt", n_groups=None, n_singletons=40),
    TextSupplierSpec("abt", "abt", "buy", n_groups=None, n_singletons=40),
)
"""The four Leipzig suppliers and how much of each to sample."""


def build(shared: Path, out: Path) -> None:
    """Builds the whole sample: listings, ground truth and README.

    Args:
        shared: the shared datasets folder (with ``leipzig_*`` and ``grocery_store_packages``).
        out: the output folder; ``listings/``, ``ground_truth/`` and ``README.md`` are (re)written.
    """
    records, clusters = read_leipzig(shared)
    rows: list[Row] = []
    for spec in TEXT_SUPPLIERS:
        rows += sample_text_supplier(spec, records[spec.source], clusters)
    rows += build_grocery(shared)
    rows, expected = add_faults_and_changes(rows)
    write_listings(rows, out)
    write_ground_truth(rows, expected, shared, out)
    clash = {
        f"{name}.csv": title_clash_stats(records[source], source, clusters)
        for name, source in (("GoogleProducts", "google"), ("Amazon", "amazon"), ("Buy", "buy"), ("Abt", "abt"))
    }
    write_readme(rows, expected, clash, out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    LOG.info("total size of %s: %d bytes", out, total)
    if total > MAX_TOTAL_BYTES:
        raise RuntimeError(f"{out} holds {total} bytes, over the {MAX_TOTAL_BYTES} byte budget")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        description="Build the 3-day sample listings (Parquet), their ground truth and README "
        "from the real data sets in the shared datasets folder. Deterministic.",
        epilog="Example: .venv/bin/python examples/build_samples.py --shared ../shared/datasets --out examples",
    )
    parser.add_argument(
        "--shared",
        type=Path,
        required=True,
        help="shared datasets folder holding leipzig_abt_buy/, leipzig_amazon_google/ and grocery_store_packages/",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder; listings/, ground_truth/ and README.md in it are rewritten",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.shared.is_dir():
        LOG.error("shared datasets folder not found: %s", args.shared)
        return 2
    build(args.shared, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
