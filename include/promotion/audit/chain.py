"""The audit log's chain: what proves a model's rows are the ones the pipeline's workers wrote, all of them.

Two formats, split by migration 8 (``schema``), per model:

* **legacy rows** (written before migration 8): SHA-256 over the previous row's hash and the row's content
  (``chain_hash`` with ``CHAINED``). Anyone who can INSERT can extend such a chain, so migration 8 froze it:
  ``audit_chain_boundary`` records each model's last legacy row (id and hash) and no legacy row may come after it.
* **keyed rows** (after migration 8): the same SHA-256 link over more content (``CHAINED_V2``: the DAG version
  and the package version that acted), plus ``mac`` = HMAC-SHA256 of that hash with ``PROMOTION_AUDIT_KEY``, a
  key only the pipeline's workers hold (not the database roles, not the api-server). A row appended by the
  application role, or a tail re-hashed by the schema owner, has no valid MAC.

A MAC cannot show that rows were *removed* from the end (the owner may ``DISABLE TRIGGER`` and ``DELETE``). So
the head of each model's chain (row id, hash, MAC) is also **anchored** outside PostgreSQL: the registered
model's tag ``promotion.audit_head`` (``ANCHOR_TAG``), written by the pipeline's MLflow service account after
each change (people may only read governed models in MLflow). ``verify`` checks both: every MAC, and that the
anchored row is still there, unchanged.

Who can verify what: the workers (they hold the key) check everything. The api-server has no key: it checks
the SHA-256 links up to the anchored head and that head against the anchor, and calls rows after the anchor
*unverified* (``verify(..., key=None)``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# What a legacy row's hash covers, in this order (the id is not: it is the database's, not the change's).
CHAINED = (
    "model_name",
    "version",
    "action",
    "from_stage",
    "to_stage",
    "actor",
    "reason",
    "dag_id",
    "run_id",
    "created_at",
    "idempotency_key",
)
# ... and a keyed row's: the same, and which code acted (the Airflow DAG version, the package's version and commit)
CHAINED_V2 = (*CHAINED, "dag_version", "package_version")
# the registered model's tag holding the chain head: written by the pipeline's MLflow service account only
ANCHOR_TAG = "promotion.audit_head"
_MAC_CONTEXT = b"promotion-audit-row-v2:"  # domain separation: a MAC made for one purpose stands for no other


def chain_hash(prev_hash: str, row: Mapping[str, Any], columns: tuple[str, ...] = CHAINED) -> str:
    """SHA-256 over the previous row's hash and this row's content: editing any row breaks every later link."""
    values = []
    for column in columns:
        value = row.get(column)
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        values.append(value)
    payload = json.dumps([prev_hash, *values], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def row_mac(key: bytes, row_hash: str) -> str:
    """HMAC-SHA256 of a keyed row's hash (which covers its content and, through ``prev_hash``, every row before)."""
    return hmac.new(key, _MAC_CONTEXT + row_hash.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Boundary:
    """A model's last legacy row when migration 8 ran (id and hash): no legacy row may follow it."""

    last_id: int
    last_hash: str


@dataclass(frozen=True)
class Anchor:
    """A model's chain head as the pipeline last recorded it outside PostgreSQL."""

    row_id: int
    row_hash: str
    mac: str

    def to_tag(self) -> str:
        return json.dumps({"id": self.row_id, "hash": self.row_hash, "mac": self.mac}, separators=(",", ":"))

    @classmethod
    def from_tag(cls, value: str | None) -> Anchor | None:
        """The anchor a tag holds; None when there is no tag. A tag that does not parse is an anchor no row matches
        (``verify`` then reports it): only the MLflow admin could have written it."""
        if value is None:
            return None
        try:
            data = json.loads(value)
            return cls(int(data["id"]), str(data["hash"]), str(data["mac"]))
        except (ValueError, TypeError, KeyError):
            return cls(-1, "", "")


@dataclass(frozen=True)
class Verdict:
    """What ``verify`` found for one model's chain."""

    problem: str | None = None  # the first break, as a sentence naming the row; None: intact
    row: Mapping[str, Any] | None = None  # the row where it breaks (None: the break is rows missing at the end)
    trusted_upto: int | None = None  # the last row id that verified (None: none did)
    unverified: int = 0  # rows after the anchor that a reader without the key cannot check (key=None only)

    @property
    def intact(self) -> bool:
        return self.problem is None


def _breaker(where: str, row: Mapping[str, Any], trusted: int | None) -> Callable[[str], Verdict]:
    return lambda what: Verdict(f"{where}: {what}", row, trusted)


def verify(
    model: str,
    rows: Iterable[Mapping[str, Any]],
    boundary: Boundary | None,
    anchor: Anchor | None,
    key: bytes | None,
) -> Verdict:
    """Check one model's rows (oldest first): legacy links up to the boundary, keyed links and MACs after it, and
    the anchored head. With ``key=None`` (the api-server), MACs are not checked and rows after the anchor are
    counted as unverified instead of trusted."""
    head = ""
    trusted: int | None = None
    unverified = 0
    anchored = anchor is None  # nothing to find
    legacy_ended = boundary is None
    for row in rows:
        where = f"{model}: audit chain broken at row {row['id']} ({row['action']} v{row['version']})"

        broken = _breaker(where, row, trusted)
        if row["prev_hash"] != head:
            what = "a row before it was deleted or changed" if head else "the model's first rows are gone"
            return broken(what)
        legacy = row.get("mac") is None
        if legacy:
            if legacy_ended:
                return broken(
                    "it carries no MAC, yet it was written after the audit log's keyed format began (migration 8): "
                    "it was not written by the pipeline's workers"
                )
            if row["row_hash"] != chain_hash(head, row, CHAINED):
                return broken("the row was altered after it was written")
            assert boundary is not None
            if row["id"] == boundary.last_id:
                if row["row_hash"] != boundary.last_hash:
                    return broken("the last row before the keyed format differs from the one recorded at migration 8")
                legacy_ended = True
            elif row["id"] > boundary.last_id:
                return broken("it carries no MAC, yet it comes after the last row recorded at migration 8")
        else:
            if not legacy_ended:
                return broken(
                    "rows recorded at migration 8 as the model's last legacy rows are missing before it "
                    f"(the last was row {boundary.last_id if boundary else '?'})"
                )
            if row["row_hash"] != chain_hash(head, row, CHAINED_V2):
                return broken("the row was altered after it was written")
            if key is not None and not hmac.compare_digest(str(row["mac"]), row_mac(key, row["row_hash"])):
                return broken(
                    "its MAC does not match: the row was not written by the pipeline's workers (forged with a database "
                    "role, or re-hashed after an edit)"
                )
        if anchor is not None and row["id"] == anchor.row_id:
            if row["row_hash"] != anchor.row_hash or row.get("mac") != anchor.mac:
                return broken(
                    f"it differs from the chain head anchored in the registry ({ANCHOR_TAG}): the history up to it "
                    "was rewritten"
                )
            anchored = True
        elif anchor is not None and row["id"] > anchor.row_id and not anchored:
            return Verdict(
                f"{model}: the row anchored in the registry as the chain head (row {anchor.row_id}) is gone: "
                "rows were deleted from the audit log",
                None,
                trusted,
            )
        if key is None and not legacy and (anchor is None or row["id"] > anchor.row_id):
            unverified += 1  # past the anchor, only the key tells a worker's row from a forged one
        else:
            trusted = row["id"]
        head = row["row_hash"]
    if not legacy_ended:
        assert boundary is not None
        return Verdict(
            f"{model}: the audit log ends before its last legacy row (row {boundary.last_id}, recorded at migration "
            "8): rows were deleted from the end",
            None,
            trusted,
        )
    if not anchored:
        assert anchor is not None
        return Verdict(
            f"{model}: the row anchored in the registry as the chain head (row {anchor.row_id}) is gone: rows were "
            "deleted from the end of the audit log",
            None,
            trusted,
        )
    return Verdict(None, None, trusted, unverified)


def verify_tail(model: str, tail: Sequence[Mapping[str, Any]], anchor: Anchor, key: bytes) -> Verdict:
    """Whether ``tail`` (the rows from the anchored one on, oldest first) starts with the anchored row, unchanged,
    and continues with keyed rows that link and verify: what the anchor may move forward over (the rows before the
    anchored one are not read: the anchor vouched for them when it was written)."""
    if not tail or tail[0]["id"] != anchor.row_id:
        return Verdict(f"{model}: the row anchored in the registry as the chain head (row {anchor.row_id}) is gone")
    first = tail[0]
    unchanged = first["row_hash"] == chain_hash(first["prev_hash"], first, CHAINED_V2)
    if not unchanged or first["row_hash"] != anchor.row_hash or first.get("mac") != anchor.mac:
        return Verdict(f"{model}: row {anchor.row_id} differs from the chain head anchored in the registry", first)
    previous = first["row_hash"]
    for row in tail[1:]:
        mac = row.get("mac")
        good = (
            row["prev_hash"] == previous
            and row["row_hash"] == chain_hash(previous, row, CHAINED_V2)
            and mac is not None
            and hmac.compare_digest(str(mac), row_mac(key, row["row_hash"]))
        )
        if not good:
            return Verdict(f"{model}: row {row['id']}, after the anchored head, does not verify", row)
        previous = row["row_hash"]
    return Verdict(None, None, tail[-1]["id"])
