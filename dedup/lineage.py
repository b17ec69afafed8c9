"""Stable duplicate-group ids across nights, and the lineage events that link them.

Each night one supplier's duplicate groups (tonight's *components*: disjoint sets of >= 2
listing ids) are recomputed from scratch over its live pair graph. ``assign_group_ids`` names
them by comparing with the supplier's groups of the previous night, so that a decision made on
a group can follow it from night to night.

Id behaviour (the documented contract):

- **Age order.** A listing's age is ``(first_seen, listing_id)``, oldest first: the ISO date it
  first entered the catalogue, with the listing id only breaking ties between listings that
  arrived the same night.
- **Heir.** The heir of a previous group ``g`` is tonight's component that holds ``g``'s oldest
  member among those still in some component tonight. Members that left (deleted, updated away
  from the group, now ungrouped) are skipped. If no member of ``g`` is in any component, ``g``
  is *gone*: event ``(g, "gone", None)``.
- **Ids.** A component receives the ids of every previous group whose heir it is:

  - none: it gets a new id (see below), ``created_on = run_date``;
  - one: it keeps that id and its ``created_on`` (a group that only grows or shrinks keeps its
    id and records no event);
  - several (*merge*): it keeps the oldest id, i.e. the smallest
    ``(created_on, age of the group's oldest member over all its previous members, group_id)``,
    with that group's ``created_on``, and records ``(kept, "merge", absorbed)`` for every other
    id it absorbed.
- **Split.** For each component ``C`` and each previous group ``g`` with members in ``C`` whose
  heir is not ``C``: event ``(id of C, "split", g)``, read "C took members of g". So when a group
  splits, the part holding its oldest remaining member keeps the id and every other part records
  a split row (with a new id unless it is itself the heir of another group).
- **New.** A component holding no member of any previous group: event ``(new id, "new", None)``.
  A component with a new id that does hold members of previous groups gets only its "split"
  events, no "new".
- **New id format.** ``"g-" + sha256("\\x1f".join([supplier_id, run_date, *sorted(members)]))
  .hexdigest()[:16]``, UTF-8 encoded, members sorted by Python's ``str`` order (code points);
  see ``make_new_group_id``. A new id therefore never depends on row order, partitioning or
  which member id is smallest, and a rerun of the same night gives the same ids.

The result does not depend on the order of ``previous``, of ``components`` (apart from the
output following the input order) or on the iteration order of any member set. Runs in
O(total members) time with dicts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

EVENTS = ("new", "merge", "split", "gone")
_SEP = "\x1f"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


@dataclass(frozen=True)
class PreviousGroup:
    """One of the supplier's groups of the previous night, as ``assign_group_ids`` reads it.

    ``members`` may be given as any collection of listing ids; it is stored as a frozenset.
    """

    group_id: str
    created_on: str  # ISO date the id was first given
    members: frozenset[str]  # listing ids

    def __post_init__(self) -> None:
        """Checks the fields and stores ``members`` as a frozenset; raises ValueError if bad."""
        _check_text(self.group_id, "PreviousGroup.group_id")
        _check_date(self.created_on, f"PreviousGroup {self.group_id!r} created_on")
        members = _check_members(self.members, f"PreviousGroup {self.group_id!r} members", min_size=1)
        object.__setattr__(self, "members", members)  # frozen: the only way to normalise a field


@dataclass(frozen=True)
class LineageEvent:
    """One lineage row: ``event`` is "new", "merge", "split" or "gone" (see the module docstring)."""

    group_id: str  # the group the event is about (tonight's id, or the gone id)
    event: str
    other_group_id: str | None


@dataclass(frozen=True)
class IdAssignment:
    """Tonight's ids (one per input component, in input order), their creation dates and lineage."""

    group_ids: list[str]
    created_on: list[str]  # per component: when its id was first given (run_date for new ids)
    lineage: list[LineageEvent]  # sorted by (group_id, event, other_group_id)


def make_new_group_id(supplier_id: str, run_date: str, members: Collection[str]) -> str:
    """Returns the id a group gets when it inherits none: ``"g-"`` + 16 hex digits.

    The digits are the first 16 of ``sha256("\\x1f".join([supplier_id, run_date, *sorted(members)]))``
    over UTF-8; ``members`` are the group's listing ids (>= 2, distinct, any order).

    Raises:
        ValueError: If an argument is of the wrong type, empty, contains ``"\\x1f"``, or
            ``members`` has fewer than two distinct ids or repeats one.

    Examples:
        >>> make_new_group_id("s1", "2024-03-01", ["b", "a"]) == make_new_group_id("s1", "2024-03-01", {"a", "b"})
        True
        >>> len(make_new_group_id("s1", "2024-03-01", ["a", "b"]))
        18
    """
    _check_text(supplier_id, "supplier_id")
    _check_date(run_date, "run_date")
    return _hash_id(supplier_id, run_date, _check_members(members, "members", min_size=2))


def assign_group_ids(
    previous: Sequence[PreviousGroup],
    components: Sequence[Collection[str]],
    first_seen: Mapping[str, str],
    supplier_id: str,
    run_date: str,
) -> IdAssignment:
    """Names tonight's groups of one supplier by the rules in the module docstring.

    Args:
        previous: The supplier's groups of the previous night (disjoint, distinct ids; any order).
        components: Tonight's groups, each a collection of >= 2 distinct listing ids, disjoint.
        first_seen: ISO date each listing first entered the catalogue, for every member of
            ``previous`` and ``components``.
        supplier_id: The supplier (goes into new ids).
        run_date: Tonight's ISO date (goes into new ids and is their ``created_on``).

    Returns:
        An ``IdAssignment``: ids and ``created_on`` per component in input order, and the
        night's lineage events sorted by ``(group_id, event, other_group_id)``.

    Raises:
        ValueError: On bad input types, overlapping or too-small components, overlapping or
            repeated previous groups, a listing without ``first_seen``, or two groups that would
            share an id.
    """
    _check_text(supplier_id, "supplier_id")
    _check_date(run_date, "run_date")
    if not isinstance(first_seen, Mapping):
        raise ValueError(f"first_seen must be a mapping listing_id -> ISO date, got {type(first_seen).__name__}")
    if isinstance(previous, (str, bytes)) or not isinstance(previous, Sequence):
        raise ValueError(f"previous must be a sequence of PreviousGroup, got {type(previous).__name__}")
    if isinstance(components, (str, bytes)) or not isinstance(components, Sequence):
        raise ValueError(f"components must be a sequence of listing-id collections, got {type(components).__name__}")

    comps = [_check_members(c, f"component {i}", min_size=2) for i, c in enumerate(components)]
    owner: dict[str, int] = {}  # listing -> index of tonight's component holding it
    for i, comp in enumerate(comps):
        for m in comp:
            j = owner.setdefault(m, i)
            if j != i:
                raise ValueError(
                    f"listing {m!r} is in components {j} and {i}; components must be disjoint "
                    "(pass the connected components of one supplier's pair graph)"
                )

    _check_previous(previous)
    age = _age_key(first_seen, comps, previous)

    heirs_of: list[list[PreviousGroup]] = [[] for _ in comps]  # component -> groups it is the heir of
    split_from: list[list[str]] = [[] for _ in comps]  # component -> ids of groups it took members of
    touched = [False] * len(comps)  # component holds a member of some previous group
    events: list[LineageEvent] = []
    for g in previous:
        present = [m for m in g.members if m in owner]
        if not present:
            events.append(LineageEvent(g.group_id, "gone", None))
            continue
        heir = owner[min(present, key=age)]
        heirs_of[heir].append(g)
        for c in {owner[m] for m in present}:
            touched[c] = True
            if c != heir:
                split_from[c].append(g.group_id)

    group_ids: list[str] = []
    created_on: list[str] = []
    n_new_ids = 0
    for i, comp in enumerate(comps):
        claims = heirs_of[i]
        if not claims:
            gid, since = _hash_id(supplier_id, run_date, comp), run_date
            n_new_ids += 1
            if not touched[i]:
                events.append(LineageEvent(gid, "new", None))
        else:
            # oldest id wins; the oldest member over all members breaks ties between groups born the same night
            kept = min(claims, key=lambda g: (g.created_on, min(map(age, g.members)), g.group_id))
            gid, since = kept.group_id, kept.created_on
            events.extend(LineageEvent(gid, "merge", g.group_id) for g in claims if g is not kept)
        events.extend(LineageEvent(gid, "split", other) for other in split_from[i])
        group_ids.append(gid)
        created_on.append(since)

    _check_unique(group_ids, previous, heirs_of)
    events.sort(key=lambda e: (e.group_id, e.event, e.other_group_id or ""))
    counts = {name: 0 for name in EVENTS}
    for e in events:
        counts[e.event] += 1
    logger.info(
        "supplier %s on %s: %d groups (%d new ids) from %d previous; lineage %s",
        supplier_id,
        run_date,
        len(comps),
        n_new_ids,
        len(previous),
        counts,
    )
    return IdAssignment(group_ids=group_ids, created_on=created_on, lineage=events)


def _hash_id(supplier_id: str, run_date: str, members: Collection[str]) -> str:
    """The new-id formula on already checked arguments."""
    text = _SEP.join([supplier_id, run_date, *sorted(members)])
    return "g-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_text(value: object, name: str) -> None:
    """Raises ValueError unless ``value`` is a non-empty str without the unit separator."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    if _SEP in value:
        raise ValueError(f"{name} must not contain the unit separator '\\x1f' (it delimits hashed ids), got {value!r}")


def _check_date(value: object, name: str) -> None:
    """Raises ValueError unless ``value`` is a YYYY-MM-DD date string (so str order is date order)."""
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            dt.date.fromisoformat(value)
            return
        except ValueError:
            pass
    raise ValueError(f"{name} must be an ISO date string 'YYYY-MM-DD', got {value!r}; format dates with .isoformat()")


def _check_members(members: object, name: str, min_size: int) -> frozenset[str]:
    """Returns ``members`` as a frozenset of checked listing ids, or raises ValueError."""
    if isinstance(members, (str, bytes)) or not isinstance(members, Collection):
        raise ValueError(
            f"{name} must be a collection of listing ids (list, set, frozenset), got {type(members).__name__}"
        )
    values = list(members)
    for m in values:
        _check_text(m, f"{name}: listing id")
    out = frozenset(values)
    if len(out) != len(values):
        raise ValueError(f"{name} repeats a listing id; pass each member once")
    if len(out) < min_size:
        raise ValueError(
            f"{name} has {len(out)} member(s), needs at least {min_size}; drop singletons before naming groups"
        )
    return out


def _check_previous(previous: Sequence[PreviousGroup]) -> None:
    """Raises ValueError unless ``previous`` holds PreviousGroups with distinct ids and disjoint members."""
    seen_ids: set[str] = set()
    holder: dict[str, str] = {}  # listing -> previous group id
    for g in previous:
        if not isinstance(g, PreviousGroup):
            raise ValueError(f"previous must hold PreviousGroup objects, got {type(g).__name__}")
        if g.group_id in seen_ids:
            raise ValueError(f"previous lists group {g.group_id!r} twice; pass one night's groups of one supplier")
        seen_ids.add(g.group_id)
        for m in g.members:
            other = holder.setdefault(m, g.group_id)
            if other != g.group_id:
                raise ValueError(
                    f"listing {m!r} is in previous groups {other!r} and {g.group_id!r}; "
                    "pass one night's groups of one supplier (they are disjoint)"
                )


def _age_key(first_seen: Mapping[str, str], comps: list[frozenset[str]], previous: Sequence[PreviousGroup]):
    """Returns ``listing -> (first_seen, listing)`` after checking every member has a valid date."""
    dates: set[str] = set()
    for members in [*comps, *(g.members for g in previous)]:
        for m in members:
            try:
                dates.add(first_seen[m])
            except KeyError:
                raise ValueError(
                    f"first_seen has no date for listing {m!r}; pass the first-seen date of every member "
                    "of tonight's and the previous night's groups"
                ) from None
            except TypeError:  # an unhashable value is not a date either
                raise ValueError(f"first_seen[{m!r}] must be an ISO date string") from None
    for d in dates:  # few distinct dates, so checking each once is cheap
        _check_date(d, "first_seen value")

    def age(listing: str) -> tuple[str, str]:
        return (first_seen[listing], listing)

    return age


def _check_unique(group_ids: list[str], previous: Sequence[PreviousGroup], heirs_of: list[list[PreviousGroup]]) -> None:
    """Raises ValueError if two components share an id or a new id reuses a previous group's id."""
    where: dict[str, int] = {}
    for i, gid in enumerate(group_ids):
        j = where.setdefault(gid, i)
        if j != i:
            raise ValueError(
                f"components {j} and {i} would both get id {gid!r} (a 64-bit hash collision or inconsistent "
                "previous groups); check that previous holds the previous night's groups of this supplier"
            )
    kept = {gid for gid, claims in zip(group_ids, heirs_of, strict=True) if claims}
    for g in previous:
        if g.group_id in where and g.group_id not in kept:
            raise ValueError(
                f"a new group id {g.group_id!r} equals the id of a previous group it did not inherit; "
                "check that previous holds the previous night's groups of this supplier"
            )
