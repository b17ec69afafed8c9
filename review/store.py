"""The ``review_decisions`` store: reviewers' confirm / reject decisions on duplicate groups.

A decision is keyed by the stable group id, the group *version* (a digest of its member ids as the
reviewer saw them), the listing (``""`` for the whole group) and the reviewer. Recording the same
decision again changes nothing; a changed mind replaces that reviewer's decision. Decisions made
on an earlier version of a group stay, so the app can say that a group changed since.

SQLite is the store because the review app must write while the nightly holds the embedded Derby
metastore (one JVM at a time); every write is one transaction, so a reader never sees half a
decision. (Not yet copied into the Hive warehouse: calibration reads it here.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

DECISIONS = ("confirm", "reject")
COLUMNS = (
    "supplier_id",
    "group_id",
    "group_version",
    "listing_id",
    "decision",
    "reviewer",
    "decided_at",
    "run_date",
    "members",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_decisions (
    supplier_id   TEXT NOT NULL,
    group_id      TEXT NOT NULL,
    group_version TEXT NOT NULL,
    listing_id    TEXT NOT NULL DEFAULT '',
    decision      TEXT NOT NULL CHECK (decision IN ('confirm', 'reject')),
    reviewer      TEXT NOT NULL CHECK (length(reviewer) > 0),
    decided_at    TEXT NOT NULL,
    run_date      TEXT NOT NULL,
    members       TEXT NOT NULL,
    PRIMARY KEY (group_id, group_version, listing_id, reviewer)
);
CREATE TABLE IF NOT EXISTS review_revision (n INTEGER NOT NULL);
INSERT INTO review_revision SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM review_revision);
"""


def group_version(member_ids: Iterable[str]) -> str:
    """Returns the version digest of a group: 12 hex digits of sha1 over its sorted member ids."""
    return hashlib.sha1("\n".join(sorted(member_ids)).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on a group version, or on one member of it (``listing_id``)."""

    supplier_id: str
    group_id: str
    group_version: str
    listing_id: str
    decision: str
    reviewer: str
    decided_at: str
    run_date: str
    members: tuple[str, ...]

    @property
    def member_count(self) -> int:
        """Members of the group version the decision was made on."""
        return len(self.members)


class DecisionStore:
    """The SQLite file holding ``review_decisions``; created with its table on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def record(
        self,
        *,
        supplier_id: str,
        group_id: str,
        members: Sequence[str],
        decision: str,
        reviewer: str,
        run_date: str,
        listing_id: str = "",
        now: dt.datetime | None = None,
    ) -> Decision:
        """Records a decision idempotently and returns the stored row.

        Args:
            supplier_id, group_id: the group.
            members: the group's member listing ids as the reviewer saw them (its version).
            decision: "confirm" or "reject".
            reviewer: who decided; must not be empty.
            run_date: the night whose groups the reviewer saw.
            listing_id: "" for the whole group, else the member the decision is about.
            now: the decision time (UTC); defaults to the clock.

        Raises:
            ValueError: on an unknown decision, an empty reviewer or a listing not in the group.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} must be one of {DECISIONS}")
        if not reviewer or not reviewer.strip():
            raise ValueError("a decision needs a reviewer identity")
        ids = sorted(set(members))
        if listing_id and listing_id not in ids:
            raise ValueError(f"listing {listing_id!r} is not a member of group {group_id!r}")
        version = group_version(ids)
        stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
        with self._connect() as db:
            # The same decision again keeps its first time (idempotent); a new one replaces it.
            stored = db.execute(
                "INSERT INTO review_decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (group_id, group_version, listing_id, reviewer) DO UPDATE SET "
                "decision = excluded.decision, decided_at = excluded.decided_at, run_date = excluded.run_date "
                "WHERE decision != excluded.decision",
                (
                    supplier_id,
                    group_id,
                    version,
                    listing_id,
                    decision,
                    reviewer.strip(),
                    stamp,
                    run_date,
                    json.dumps(ids),
                ),
            )
            if stored.rowcount:
                db.execute("UPDATE review_revision SET n = n + 1")
            row = db.execute(
                "SELECT * FROM review_decisions WHERE group_id = ? AND group_version = ? AND listing_id = ? "
                "AND reviewer = ?",
                (group_id, version, listing_id, reviewer.strip()),
            ).fetchone()
        return _as_decision(row)

    def revision(self) -> int:
        """Returns a counter that grows with every stored change (for caches of derived data)."""
        with self._connect() as db:
            return int(db.execute("SELECT n FROM review_revision").fetchone()[0])

    def decided_versions(self) -> set[tuple[str, str]]:
        """Returns the (group id, group version) pairs that have a whole-group decision."""
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT group_id, group_version FROM review_decisions WHERE listing_id = ''")
            return {(r[0], r[1]) for r in rows}

    def for_groups(self, group_ids: Iterable[str]) -> dict[str, list[Decision]]:
        """Returns group id -> its decisions (every version, newest first)."""
        ids = sorted(set(group_ids))
        out: dict[str, list[Decision]] = {g: [] for g in ids}
        with self._connect() as db:
            for start in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
                chunk = ids[start : start + 500]
                rows = db.execute(
                    f"SELECT * FROM review_decisions WHERE group_id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY decided_at DESC, reviewer, listing_id",
                    chunk,
                ).fetchall()
                for row in rows:
                    out[row["group_id"]].append(_as_decision(row))
        return out

    def frame(self) -> pd.DataFrame:
        """Returns every decision as a DataFrame with ``COLUMNS`` (``members`` as JSON text)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM review_decisions ORDER BY decided_at, group_id, listing_id, reviewer"
            ).fetchall()
        return pd.DataFrame([tuple(r) for r in rows], columns=list(COLUMNS))


def _as_decision(row: sqlite3.Row) -> Decision:
    values = dict(row)
    values["members"] = tuple(json.loads(values["members"]))
    return Decision(**values)
