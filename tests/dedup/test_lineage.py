"""Tests for dedup.lineage: four hand-made nights, a brute-force reference on random nights, errors."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Mapping
from datetime import date, timedelta

import pytest

from dedup.lineage import IdAssignment, LineageEvent, PreviousGroup, assign_group_ids, make_new_group_id

logger = logging.getLogger(__name__)

SEED = 20_240_613
S = "supplier-17"
D1, D2, D3, D4 = "2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"


def _expected_new_id(supplier: str, run_date: str, members) -> str:
    """The documented new-id formula, written out independently of the module."""
    text = "\x1f".join([supplier, run_date, *sorted(members)])
    return "g-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _event_key(e: LineageEvent) -> tuple[str, str, str]:
    """The documented lineage order."""
    return (e.group_id, e.event, e.other_group_id or "")


def _as_previous(result: IdAssignment, components) -> list[PreviousGroup]:
    """Tonight's result as the next night's ``previous``."""
    return [
        PreviousGroup(gid, since, frozenset(c))
        for gid, since, c in zip(result.group_ids, result.created_on, components, strict=True)
    ]


# ---------------------------------------------------------------- four nights by hand


def test_four_nights_by_hand():
    """Formed, grown, bridged (merge), split by an update and a delete, gone."""
    seen = {}
    # listing ids deliberately not in age order: "sku-0" arrives after "sku-9"
    for listing in ["sku-9", "sku-3", "sku-5", "sku-1", "sku-7"]:
        seen[listing] = D1

    # night 1: two groups formed
    n1 = [{"sku-9", "sku-3"}, {"sku-5", "sku-1", "sku-7"}]
    r1 = assign_group_ids([], n1, seen, S, D1)
    a, b = _expected_new_id(S, D1, n1[0]), _expected_new_id(S, D1, n1[1])
    assert r1.group_ids == [a, b]
    assert r1.created_on == [D1, D1]
    assert r1.lineage == sorted([LineageEvent(a, "new", None), LineageEvent(b, "new", None)], key=_event_key)

    # night 2: sku-0 (smallest id of all) joins A, which keeps its id; C forms
    seen.update({"sku-0": D2, "sku-8": D2, "sku-2": D2})
    n2 = [{"sku-8", "sku-2"}, {"sku-5", "sku-1", "sku-7"}, {"sku-9", "sku-3", "sku-0"}]
    r2 = assign_group_ids(_as_previous(r1, n1), n2, seen, S, D2)
    c = _expected_new_id(S, D2, n2[0])
    assert r2.group_ids == [c, b, a]
    assert r2.created_on == [D2, D1, D1]
    assert r2.lineage == [LineageEvent(c, "new", None)]

    # night 3: sku-4 bridges A (from D1) and C (from D2): A's older id is kept; B grows; D forms
    seen.update({"sku-4": D3, "sku-6": D3, "sku-10": D3, "sku-20": D3, "sku-21": D3})
    n3 = [
        {"sku-9", "sku-3", "sku-0", "sku-4", "sku-8", "sku-2"},
        {"sku-5", "sku-1", "sku-7", "sku-6", "sku-10"},
        {"sku-20", "sku-21"},
    ]
    r3 = assign_group_ids(_as_previous(r2, n2), n3, seen, S, D3)
    d = _expected_new_id(S, D3, n3[2])
    assert r3.group_ids == [a, b, d]
    assert r3.created_on == [D1, D1, D3]
    assert r3.lineage == sorted([LineageEvent(a, "merge", c), LineageEvent(d, "new", None)], key=_event_key)

    # night 4: sku-1 (B's oldest) is deleted and sku-7 updated, which splits B: the part holding the
    # oldest remaining member (sku-5, first seen D1) keeps B's id although "sku-10" < "sku-5";
    # both of D's members were deleted, so D is gone
    n4 = [{"sku-6", "sku-10"}, {"sku-9", "sku-3", "sku-0", "sku-4", "sku-8", "sku-2"}, {"sku-7", "sku-5"}]
    r4 = assign_group_ids(_as_previous(r3, n3), n4, seen, S, D4)
    e = _expected_new_id(S, D4, n4[0])
    assert r4.group_ids == [e, a, b]
    assert r4.created_on == [D4, D1, D1]
    assert r4.lineage == sorted([LineageEvent(e, "split", b), LineageEvent(d, "gone", None)], key=_event_key)


def test_merge_of_same_night_groups_keeps_the_group_with_the_oldest_member():
    """Equal created_on: the group whose oldest member (over all its members) is older wins."""
    seen = {"k-1": D1, "k-2": D1, "k-5": D3, "k-6": D3, "k-9": D2}
    older = PreviousGroup("g-older", D2, frozenset({"k-1", "k-5"}))
    younger = PreviousGroup("g-younger", D2, frozenset({"k-2", "k-6"}))
    newest = PreviousGroup("g-newest", D3, frozenset({"k-9", "k-0"}))
    seen["k-0"] = D1  # oldest listing of all, but its group's id is the newest: created_on decides first
    # k-1 left tonight; g-older still wins on its oldest member over all its previous members
    tonight = [{"k-5", "k-2", "k-6", "k-9", "k-0"}]
    for order in ([older, younger, newest], [newest, younger, older]):
        r = assign_group_ids(order, tonight, seen, S, D4)
        assert r.group_ids == ["g-older"]
        assert r.created_on == [D2]
        assert r.lineage == [
            LineageEvent("g-older", "merge", "g-newest"),
            LineageEvent("g-older", "merge", "g-younger"),
        ]


def test_new_id_part_of_a_split_gets_split_rows_not_new():
    """A part holding members of two groups but heir of neither: one split row per group."""
    seen = {x: D1 for x in "abcdef"}
    prev = [PreviousGroup("g-1", D1, frozenset("abc")), PreviousGroup("g-2", D1, frozenset("def"))]
    tonight = [{"a", "d"}, {"b", "e"}, {"c", "f"}]
    r = assign_group_ids(prev, tonight, seen, S, D2)
    mid, last = _expected_new_id(S, D2, "be"), _expected_new_id(S, D2, "cf")
    # {"a", "d"} holds the oldest member of both groups: a merge, g-1 wins on age ("a" < "d")
    assert r.group_ids == ["g-1", mid, last]
    expected = [LineageEvent("g-1", "merge", "g-2")]
    expected += [LineageEvent(gid, "split", old) for gid in (mid, last) for old in ("g-1", "g-2")]
    assert r.lineage == sorted(expected, key=_event_key)


def test_make_new_group_id_matches_the_documented_formula():
    """Formula, independence of member order and container, and separation by every input."""
    members = ["x-3", "x-10", "x-2"]
    gid = make_new_group_id(S, D1, members)
    assert gid == _expected_new_id(S, D1, members)
    assert gid == make_new_group_id(S, D1, frozenset(members)) == make_new_group_id(S, D1, members[::-1])
    assert len(gid) == 18 and gid.startswith("g-")
    others = {make_new_group_id("supplier-18", D1, members), make_new_group_id(S, D2, members)}
    others.add(make_new_group_id(S, D1, members[:2]))
    assert gid not in others and len(others) == 3


# ---------------------------------------------------------------- brute-force reference


def _reference(previous, components, first_seen, supplier, run_date):
    """The rules of the module docstring, written out naively: all (group, component) pairs, full sorts."""
    comps = [set(c) for c in components]

    def oldest(listings):
        # a full sort on purpose: the reference stays naive and unlike the code under test
        return sorted(listings, key=lambda m: (first_seen[m], m))[0]  # noqa: FURB192

    heir = {}
    events = []
    for g in previous:
        still = [m for m in g.members if any(m in c for c in comps)]
        if not still:
            events.append(("gone", g.group_id, None))
            continue
        top = oldest(still)
        (heir[g.group_id],) = [i for i, c in enumerate(comps) if top in c]

    ids, created = [], []
    for i, c in enumerate(comps):
        claims = [g for g in previous if heir.get(g.group_id) == i]
        if not claims:
            gid, since = _expected_new_id(supplier, run_date, c), run_date
            if not any(g.members & c for g in previous):
                events.append(("new", gid, None))
        else:
            ranked = sorted(
                claims,
                key=lambda g: (g.created_on, first_seen[oldest(g.members)], oldest(g.members), g.group_id),
            )
            gid, since = ranked[0].group_id, ranked[0].created_on
            events += [("merge", gid, g.group_id) for g in ranked[1:]]
        for g in previous:
            if g.members & c and heir[g.group_id] != i:
                events.append(("split", gid, g.group_id))
        ids.append(gid)
        created.append(since)
    lineage = sorted(
        (LineageEvent(gid, ev, other) for ev, gid, other in events),
        key=lambda e: (e.group_id, e.event, "" if e.other_group_id is None else e.other_group_id),
    )
    return ids, created, lineage


class _Catalogue:
    """A supplier's catalogue over random nights: arrivals, deletes, updates, regrouping."""

    def __init__(self, seed: int):
        logger.info("random seed [%d, %d]", SEED, seed)
        self.rng = random.Random(SEED * 1000 + seed)
        self.day = date(2024, 1, 1)
        self.first_seen: dict[str, str] = {}
        self.live: set[str] = set()
        self.groups: list[set[str]] = []
        self.used: set[str] = set()

    def _arrive(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            listing = f"lst-{self.rng.randrange(10**6):06d}"  # random ids: id order is not age order
            if listing not in self.used:
                self.used.add(listing)
                self.first_seen[listing] = self.day.isoformat()
                self.live.add(listing)
                out.append(listing)
        return out

    def next_night(self, grow_only: bool = False) -> list[set[str]]:
        """Advances one night and returns tonight's components (the catalogue's new state)."""
        rng = self.rng
        self.day += timedelta(days=1)
        arrived = self._arrive(rng.randint(0, 12))
        groups = [set(g) for g in self.groups]
        if grow_only:
            for listing in arrived:
                if groups and rng.random() < 0.7:
                    rng.choice(groups).add(listing)
            rest = [x for x in arrived if not any(x in g for g in groups)]
            if len(rest) >= 2:
                groups.append(set(rest))
            self.groups = groups
            return [set(g) for g in groups]

        for g in groups:  # members leave: deleted, or updated so that they match nothing
            for m in list(g):
                if rng.random() < 0.08:
                    g.discard(m)
                    if rng.random() < 0.5:
                        self.live.discard(m)
        for listing in arrived:
            if groups and rng.random() < 0.5:
                rng.choice(groups).add(listing)
        if len(groups) >= 2 and rng.random() < 0.4:  # a bridge merges two or three groups
            picked = rng.sample(range(len(groups)), k=min(len(groups), rng.choice([2, 2, 3])))
            merged = set().union(*(groups[i] for i in picked))
            groups = [g for i, g in enumerate(groups) if i not in picked] + [merged]
        for g in list(groups):  # an update or delete splits a group
            if len(g) >= 4 and rng.random() < 0.15:
                groups.remove(g)
                members = sorted(g)
                rng.shuffle(members)
                cut = sorted(rng.sample(range(1, len(members)), k=rng.choice([1, 1, 2])))
                groups += [set(members[i:j]) for i, j in zip([0, *cut], [*cut, len(members)], strict=True)]
        if rng.random() < 0.1 and groups:  # an updated listing moves to another group
            src, dst = rng.sample(groups, 2) if len(groups) >= 2 else (groups[0], set())
            if src:
                moved = rng.choice(sorted(src))
                src.discard(moved)
                dst.add(moved)
                if dst not in groups:
                    groups.append(dst)
        if rng.random() < 0.05:  # a model change: everything regrouped at random
            pool = sorted(set().union(*groups) if groups else set())
            rng.shuffle(pool)
            groups = []
            while len(pool) >= 2:
                k = rng.randint(2, 6)
                groups.append(set(pool[:k]))
                pool = pool[k:]
        ungrouped = sorted(self.live - set().union(*groups)) if groups else sorted(self.live)
        rng.shuffle(ungrouped)
        while len(ungrouped) >= 2 and rng.random() < 0.5:  # new groups among ungrouped listings
            k = rng.randint(2, 4)
            groups.append(set(ungrouped[:k]))
            ungrouped = ungrouped[k:]
        groups = [g for g in groups if len(g) >= 2]
        rng.shuffle(groups)
        self.groups = groups
        return [set(g) for g in groups]


def _shuffled(rng, previous, components, first_seen):
    """Same inputs in another order: previous, components (with the permutation), members, mapping."""
    prev = list(previous)
    rng.shuffle(prev)
    prev = [PreviousGroup(g.group_id, g.created_on, _shuffled_list(rng, g.members)) for g in prev]
    perm = list(range(len(components)))
    rng.shuffle(perm)
    comps = [_shuffled_list(rng, components[i]) for i in perm]
    keys = list(first_seen)
    rng.shuffle(keys)
    return prev, comps, {k: first_seen[k] for k in keys}, perm


def _shuffled_list(rng, members) -> list[str]:
    out = sorted(members)
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_reference_on_random_nights(seed):
    """60 nights per seed (480 in all) against the reference, with invariants and shuffled inputs."""
    world = _Catalogue(seed)
    previous: list[PreviousGroup] = []
    seen_events = {"new": 0, "merge": 0, "split": 0, "gone": 0}
    for night in range(60):
        grow_only = night % 7 == 3
        comps = world.next_night(grow_only=grow_only)
        run_date = world.day.isoformat()
        result = assign_group_ids(previous, comps, world.first_seen, S, run_date)
        ids, created, lineage = _reference(previous, comps, world.first_seen, S, run_date)
        assert result.group_ids == ids, f"seed {seed} night {night}"
        assert result.created_on == created, f"seed {seed} night {night}"
        assert result.lineage == lineage, f"seed {seed} night {night}"

        assert len(set(result.group_ids)) == len(comps)
        if grow_only:
            previous_ids = {g.group_id: g.created_on for g in previous}
            kept = {gid: since for gid, since in zip(result.group_ids, result.created_on, strict=True)}
            assert all(kept.get(gid) == since for gid, since in previous_ids.items())
            assert all(e.event == "new" for e in result.lineage)

        prev2, comps2, seen2, perm = _shuffled(world.rng, previous, comps, world.first_seen)
        again = assign_group_ids(prev2, comps2, seen2, S, run_date)
        assert again.group_ids == [result.group_ids[i] for i in perm]
        assert again.created_on == [result.created_on[i] for i in perm]
        assert again.lineage == result.lineage

        for e in result.lineage:
            seen_events[e.event] += 1
        previous = _as_previous(result, comps)
    # the random nights must actually exercise every rule, or the comparison proves little
    assert min(seen_events.values()) > 0, seen_events


def test_rerun_gives_identical_ids():
    """Same inputs twice, new list/set objects: identical result."""
    world = _Catalogue(99)
    previous: list[PreviousGroup] = []
    for _ in range(10):
        comps = world.next_night()
        first = assign_group_ids(previous, comps, dict(world.first_seen), S, world.day.isoformat())
        second = assign_group_ids(list(previous), [set(c) for c in comps], world.first_seen, S, world.day.isoformat())
        assert first == second
        previous = _as_previous(first, comps)


class _CountingMapping(Mapping):
    """A mapping that counts lookups, to check the work grows linearly with the members."""

    def __init__(self, data):
        self.data, self.lookups = data, 0

    def __getitem__(self, key):
        self.lookups += 1
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)


def test_work_is_linear_in_members():
    """100k grouped listings merged and split at random: first_seen lookups stay O(members)."""
    rng = random.Random(SEED)
    listings = [f"l-{i:06d}" for i in range(100_000)]
    seen = {x: f"2024-01-{rng.randint(1, 28):02d}" for x in listings}
    rng.shuffle(listings)
    previous = [PreviousGroup(f"g-{i}", "2024-01-01", frozenset(listings[i : i + 50])) for i in range(0, 100_000, 50)]
    rng.shuffle(listings)
    tonight = [listings[i : i + 40] for i in range(0, 100_000, 40)]
    counting = _CountingMapping(seen)
    result = assign_group_ids(previous, tonight, counting, S, "2024-02-01")
    assert len(result.group_ids) == len(tonight) == len(set(result.group_ids))
    total = 2 * 100_000  # members of previous plus tonight
    assert counting.lookups <= 4 * total, counting.lookups


# ---------------------------------------------------------------- bad input


def _prev(gid="g-1", members=("a", "b")):
    return PreviousGroup(gid, D1, frozenset(members))


SEEN = {x: D1 for x in "abcdefgh"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"components": [{"a", "b"}, {"b", "c"}]}, "'b' is in components 0 and 1"),
        ({"components": [{"a", "b"}, {"c"}]}, "component 1 has 1 member"),
        ({"components": [["a", "a"]]}, "repeats a listing id"),
        ({"components": ["ab"]}, "component 0 must be a collection"),
        ({"components": [{"a", 3}]}, "listing id must be a non-empty str"),
        ({"components": "ab"}, "components must be a sequence"),
        ({"components": [{"a", "zz"}]}, "no date for listing 'zz'"),
        ({"previous": [_prev(members=("a", "qq"))]}, "no date for listing 'qq'"),
        ({"previous": [_prev(), _prev()]}, "lists group 'g-1' twice"),
        ({"previous": [_prev(), _prev("g-2", ("b", "c"))]}, "'b' is in previous groups"),
        ({"previous": [("g-1", D1, {"a", "b"})]}, "must hold PreviousGroup"),
        ({"first_seen": [("a", D1)]}, "first_seen must be a mapping"),
        ({"first_seen": {**SEEN, "a": "03/01/2024"}}, "ISO date"),
        ({"run_date": "2024-02-30"}, "run_date must be an ISO date"),
        ({"supplier_id": ""}, "supplier_id must be a non-empty str"),
        ({"supplier_id": "s\x1f1"}, "unit separator"),
    ],
)
def test_bad_input_raises(kwargs, message):
    """Each bad input is refused with a message that names the problem."""
    args = {"previous": [], "components": [{"a", "b"}], "first_seen": SEEN, "supplier_id": S, "run_date": D2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        assign_group_ids(**args)


def test_previous_group_checks_its_fields():
    """PreviousGroup normalises members to a frozenset and refuses bad fields."""
    assert PreviousGroup("g-1", D1, ["a", "b"]).members == frozenset({"a", "b"})
    with pytest.raises(ValueError, match="created_on must be an ISO date"):
        PreviousGroup("g-1", "yesterday", frozenset({"a", "b"}))
    with pytest.raises(ValueError, match="group_id must be a non-empty str"):
        PreviousGroup(None, D1, frozenset({"a", "b"}))
    with pytest.raises(ValueError, match="has 0 member"):
        PreviousGroup("g-1", D1, frozenset())


def test_two_components_sharing_an_id_raise():
    """A previous id equal to the new id another component gets: refused, not silently duplicated."""
    clash = _expected_new_id(S, D2, {"c", "d"})
    previous = [PreviousGroup(clash, D1, frozenset({"a", "b"}))]
    with pytest.raises(ValueError, match="would both get id"):
        assign_group_ids(previous, [{"a", "b"}, {"c", "d"}], SEEN, S, D2)
    gone = [PreviousGroup(clash, D1, frozenset({"e", "f"}))]
    with pytest.raises(ValueError, match="did not inherit"):
        assign_group_ids(gone, [{"a", "b"}, {"c", "d"}], SEEN, S, D2)
