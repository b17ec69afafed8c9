"""The review_decisions store: idempotent, versioned by membership, refusing bad decisions."""

from __future__ import annotations

import datetime as dt

import pytest

from review.store import DecisionStore, group_version

T0 = dt.datetime(2024, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def store(tmp_path):
    return DecisionStore(tmp_path / "decisions.sqlite")


def record(store, decision="confirm", *, members=("a", "b"), now=T0, **kw):
    values = {"supplier_id": "s", "group_id": "g1", "reviewer": "ana", "run_date": "2024-03-02"} | kw
    return store.record(members=list(members), decision=decision, now=now, **values)


def test_the_same_decision_twice_is_one_row_with_its_first_time(store):
    first = record(store)
    again = record(store, now=T0 + dt.timedelta(hours=1))
    assert again == first and again.decided_at == "2024-03-02T09:00:00+00:00"
    assert len(store.frame()) == 1 and store.revision() == 1


def test_a_changed_mind_replaces_the_reviewers_decision(store):
    record(store)
    changed = record(store, "reject", now=T0 + dt.timedelta(hours=1))
    assert changed.decision == "reject" and changed.decided_at.startswith("2024-03-02T10:00")
    assert len(store.frame()) == 1 and store.revision() == 2


def test_other_reviewers_and_other_versions_are_kept_apart(store):
    record(store)
    record(store, reviewer="bo")
    record(store, members=("a", "b", "c"), run_date="2024-03-03")
    frame = store.frame()
    assert len(frame) == 3
    assert set(frame["group_version"]) == {group_version(["a", "b"]), group_version(["b", "c", "a"])}
    assert store.decided_versions() == {("g1", group_version(["a", "b"])), ("g1", group_version(["a", "b", "c"]))}
    newest_first = [d.run_date for d in store.for_groups(["g1"])["g1"]]
    assert len(newest_first) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decision": "maybe"}, "must be one of"),
        ({"reviewer": "  "}, "reviewer identity"),
        ({"listing_id": "z"}, "not a member"),
    ],
)
def test_bad_decisions_are_refused_and_not_stored(store, kwargs, message):
    decision = kwargs.pop("decision", "confirm")
    with pytest.raises(ValueError, match=message):
        record(store, decision, **kwargs)
    assert store.frame().empty and store.revision() == 0
