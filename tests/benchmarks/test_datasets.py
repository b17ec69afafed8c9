"""The benchmark readers against the counts documented in shared/datasets/README.md."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pandas as pd
import pytest

from benchmarks.datasets import (
    WDC_TEST,
    WDC_VALID,
    grocery_title,
    read_grocery,
    read_leipzig_matching,
    read_wdc_offers,
    read_wdc_pairs,
    subset_pairs,
    within_source_groups,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
pytestmark = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"real benchmarks not found at {SHARED} (a user's clone has no ../shared; CI has it)",
)


@pytest.mark.parametrize(
    ("task", "n_left", "n_right", "n_matches"),
    [("abt_buy", 1081, 1092, 1097), ("amazon_google", 1363, 3226, 1300)],
)
def test_leipzig_tables_have_the_documented_sizes(task, n_left, n_right, n_matches):
    matching = read_leipzig_matching(SHARED, task)
    assert (len(matching.left), len(matching.right), len(matching.matches)) == (
        n_left,
        n_right,
        n_matches,
    )
    assert matching.left["title"].str.strip().ne("").all()


def test_within_source_groups_match_an_independent_graph_computation():
    matching = read_leipzig_matching(SHARED, "amazon_google")
    groups = within_source_groups(matching)
    graph = nx.Graph()
    graph.add_edges_from(("A" + a, "G" + g) for a, g in matching.matches.itertuples(index=False))
    expected = {
        frozenset(n[1:] for n in component if n.startswith("G")) for component in nx.connected_components(graph)
    }
    expected = {g for g in expected if len(g) > 1}
    found = {frozenset(ids) for ids in matching.right["id"].groupby(groups.to_numpy()).agg(list) if len(ids) > 1}
    assert found == expected
    assert len(found) > 100  # 144 Amazon ids match more than one Google record
    # the whole mapping closure has 1,105 clusters (README); Google-only singletons excluded
    assert nx.number_connected_components(graph) == 1105


def test_wdc_offers_union_and_pair_files():
    valid = read_wdc_pairs(SHARED, WDC_VALID)
    assert len(valid) == 3500 and valid["label"].sum() == 500
    for split in WDC_TEST:
        pairs = read_wdc_pairs(SHARED, split)
        assert len(pairs) == 4500 and pairs["label"].sum() == 500
    offers = read_wdc_offers(SHARED, (WDC_VALID, *WDC_TEST))
    assert offers["id"].is_unique
    # labels agree with cluster ids: a pair is a match exactly when the clusters are equal
    cluster = offers.set_index("id")["cluster_id"]
    same = cluster.loc[valid["id_left"]].to_numpy() == cluster.loc[valid["id_right"]].to_numpy()
    assert (same == valid["label"].astype(bool).to_numpy()).all()


def test_subset_pairs_is_deterministic_and_keeps_both_labels():
    valid = read_wdc_pairs(SHARED, WDC_VALID)
    first, again = subset_pairs(valid, 100), subset_pairs(valid, 100)
    assert first.equals(again)
    assert len(first) == 100 and first["label"].sum() == 50
    assert subset_pairs(valid, None) is valid


def test_grocery_photos_and_catalog():
    photos, catalog = read_grocery(SHARED)
    assert photos.groupby("split").size().to_dict() == {"test": 781, "train": 864, "val": 100}
    assert len(catalog) == 31 and catalog["fine_id"].between(28, 58).all()
    assert all(Path(p).is_file() for p in pd.concat([photos, catalog])["path"])
    assert photos["fine_id"].isin(catalog["fine_id"]).all()
    milk = photos[photos["fine"] == "Arla-Standard-Milk"]["title"].unique().tolist()
    assert milk == ["Arla Milk"]
    small, _ = read_grocery(SHARED, limit=40)
    assert small.groupby("split").size().to_dict() == {"test": 40, "train": 40, "val": 40}
    assert small[small["split"] == "train"]["fine_id"].nunique() == 31  # spread over classes


def test_grocery_title_uses_brand_and_coarse_class():
    assert grocery_title("God-Morgon-Apple-Juice", "Juice") == (
        "God Morgon Juice",
        "God Morgon",
        "Juice",
    )
    assert grocery_title("Oatly-Oat-Milk", "Oat-Milk") == ("Oatly Oat Milk", "Oatly", "Oat Milk")
