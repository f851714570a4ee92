"""The audit log read in SQL, for pages that show many models or versions at once: a fixed number of
parameterized queries whatever the length of the history. ``replay`` is the same reading in Python (one model's
rows in order); ``tests/integration/test_audit_agreement.py`` runs generated histories through both and checks they
agree. The rules are replay's: which rows put a version in production and which take it out come from its
``STATUS_AFTER``, so the two cannot drift apart by a new action added to one of them only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.promotion.audit.chain import CHAINED_V2, Anchor, chain_hash
from include.promotion.audit.log import COLUMNS, PROVENANCE
from include.promotion.audit.replay import STATUS_AFTER
from include.promotion.audit.schema import AUDIT_TABLE
from include.promotion.states import AuditAction, Stage, Status

# What puts a version in production and what takes it out: replay's rules (its ``STATUS_AFTER``), so the champion
# reading cannot drift from it. Besides the ends the page shows (``ENDED_BY``), a ``register``, ``stage`` or
# ``approve`` row takes a version out too (a re-created model's version, or a forged row): the registry cannot show a
# version in Production after it.
ENTERS_PRODUCTION = tuple(a for a, s in STATUS_AFTER.items() if s == Status.PRODUCTION)
# (and a ``retention_delete`` row: replay forgets a deleted version; the policy never deletes the champion, but a
# reading of the log must not depend on that)
LEAVES_PRODUCTION = (
    *(a for a, s in STATUS_AFTER.items() if s != Status.PRODUCTION),
    AuditAction.RETENTION_DELETE,
)
# what ends a version's time in service, and what puts one there (audit actions), as the page shows them
ENDED_BY = (AuditAction.ARCHIVE, AuditAction.REJECT, AuditAction.SUPERSEDE, AuditAction.ROLLBACK_DEMOTE)
SERVES_AFTER = (*ENTERS_PRODUCTION, AuditAction.POST_CHECK_ROLLBACK)
# The post-promotion check's rollback writes two rows of one action: the restored version's (to Production) puts it in
# service, the failed version's (out of Production) ends its time there. Events key the second one apart (also in the
# SQL that picks each version's latest row of each action, so the latest of one direction never hides the other).
CHECK_DEMOTED = f"{AuditAction.POST_CHECK_ROLLBACK} (demoted)"
IN_SERVICE, ENDED = "in service", "ended"  # a version's standing on the page (``standing``)
AUDIT_COLUMNS = ("id", *(c for c in COLUMNS if c != "model_name"), *PROVENANCE, "created_at")
_NO_BOUND = 2**63 - 1  # bigint's maximum: every row


@dataclass(frozen=True)
class Event:
    """One audit row as the page shows it: who, when, why."""

    action: str
    actor: str
    at: datetime | None
    reason: str | None = None
    id: int | None = None  # the row's id: the order rows were written in (``at`` is the writer's clock)


@dataclass(frozen=True)
class AuditPage:
    rows: tuple[dict[str, Any], ...]  # AUDIT_COLUMNS, newest first
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def latest_events(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Event]:
    """{(version, action): its latest Event} from audit rows (any order; the newest id wins)."""
    newest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        action = str(row["action"])
        if action == AuditAction.POST_CHECK_ROLLBACK and row.get("to_stage") != Stage.PRODUCTION:
            action = CHECK_DEMOTED
        key = (str(row["version"]), action)
        if key not in newest or row["id"] > newest[key]["id"]:
            newest[key] = row
    return {k: Event(str(r["action"]), r["actor"], r["created_at"], r["reason"], r["id"]) for k, r in newest.items()}


def standing(events: Mapping[tuple[str, str], Event], version: str, champion: str | None) -> str | None:
    """A version's standing on the page: ``IN_SERVICE``, ``ENDED`` (it served, and does no more) or None (never served).

    ``champion`` is the model's ``audited_champions`` reading. A version's own events cannot say it alone: a new
    production row ends every other version's service (replay's rule), also when the change crashed before it wrote
    the ``archive`` (or ``rollback_demote``) row of the version it replaced, so that version has no end event.
    """
    if champion is not None and version == champion:
        return IN_SERVICE
    return ENDED if any((version, str(a)) in events for a in SERVES_AFTER) else None


def _demoted_sql(table: str = "") -> str:
    return f"({table}action = %(check)s AND {table}to_stage IS DISTINCT FROM %(production)s)"


_CHECK = {"check": str(AuditAction.POST_CHECK_ROLLBACK), "production": str(Stage.PRODUCTION)}


def fetch(conn: Any, query: str, params: Sequence[Any] | Mapping[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def table_exists(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,))
        return cur.fetchone()[0] is not None


def version_events(conn: Any, model: str, versions: Sequence[str]) -> dict[tuple[str, str], Event]:
    """The latest row of each (version, action) of the given versions of one model: one query."""
    rows = fetch(
        conn,
        f"SELECT DISTINCT ON (version, action, {_demoted_sql()}) id, version, action, to_stage, actor, reason, "
        f"created_at FROM {AUDIT_TABLE} WHERE model_name = %(model)s AND version = ANY(%(versions)s) "
        f"ORDER BY version, action, {_demoted_sql()}, id DESC",
        {"model": model, "versions": list(versions), **_CHECK},
    )
    return latest_events(rows)


def pair_events(conn: Any, pairs: Sequence[tuple[str, str]]) -> dict[str, dict[tuple[str, str], Event]]:
    """{model: its events} for the given (model, version) pairs only (the overview's champions and challengers)."""
    if not pairs:
        return {}
    demoted = _demoted_sql("a.")
    rows = fetch(
        conn,
        f"SELECT DISTINCT ON (a.model_name, a.version, a.action, {demoted}) a.id, a.model_name, a.version, a.action, "
        f"a.to_stage, a.actor, a.reason, a.created_at FROM {AUDIT_TABLE} a "
        "JOIN unnest(%(models)s::text[], %(versions)s::text[]) AS w(model_name, version) "
        "ON a.model_name = w.model_name AND a.version = w.version "
        f"ORDER BY a.model_name, a.version, a.action, {demoted}, a.id DESC",
        {"models": [m for m, _ in pairs], "versions": [v for _, v in pairs], **_CHECK},
    )
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model_name"], []).append(row)
    return {model: latest_events(model_rows) for model, model_rows in by_model.items()}


def _upto(table: str) -> str:
    """SQL: the row of ``table`` (an alias and its dot: a bare column would name the bound's own) is one the reader
    trusts, at or before its model's bound in ``%(bounds)s`` (if any)."""
    return (
        f"{table}id <= coalesce((SELECT b.upto FROM unnest(%(models)s::text[], %(bounds)s::bigint[]) AS "
        f"b(model_name, upto) WHERE b.model_name = {table}model_name), {_NO_BOUND})"
    )


def _bounds(models: Sequence[str], upto: Mapping[str, int | None] | None) -> list[int]:
    return [(upto or {}).get(m) or _NO_BOUND for m in models]


def audited_champions(conn: Any, models: Sequence[str], upto: Mapping[str, int | None] | None = None) -> dict[str, str]:
    """{model: the version the audit log says serves}: the latest version put in production and not taken out
    since by a row of its own (one query for all models; the same reading as ``replay.audited_state``). ``upto``:
    per model, the last row id to read (the rows that verify, ``integrity``); rows after it are not trusted."""
    models = list(models)
    rows = fetch(
        conn,
        f"SELECT c.model_name, c.version FROM (SELECT DISTINCT ON (model_name) id, model_name, version "
        f"FROM {AUDIT_TABLE} a WHERE model_name = ANY(%(models)s) AND {_upto('a.')} AND (action = ANY(%(serves)s) "
        "OR (action = %(check)s AND to_stage = %(production)s)) ORDER BY model_name, id DESC) c "
        f"WHERE NOT EXISTS (SELECT 1 FROM {AUDIT_TABLE} d WHERE d.model_name = c.model_name AND {_upto('d.')} "
        "AND d.version = c.version AND d.id > c.id AND (d.action = ANY(%(ends)s) "
        "OR (d.action = %(check)s AND d.to_stage IS DISTINCT FROM %(production)s)))",
        {
            "models": models,
            "bounds": _bounds(models, upto),
            "serves": [str(a) for a in ENTERS_PRODUCTION],
            "ends": [str(a) for a in LEAVES_PRODUCTION],
            **_CHECK,
        },
    )
    return {row["model_name"]: str(row["version"]) for row in rows}


def open_drift(conn: Any, models: Sequence[str], upto: Mapping[str, int | None] | None = None) -> dict[str, list[str]]:
    """{model: reasons of its ``drift_detected`` rows that no later ``drift_restore`` row names}.

    No reason and an empty one are the same reason, as in ``replay``. ``upto`` bounds the rows that *close* a
    finding, as in ``audited_champions``; findings are read past it: the watch records a broken chain after the
    break, where the anchor no longer moves, and a forged finding can only raise an alarm, never silence one.
    """
    models = list(models)
    rows = fetch(
        conn,
        f"SELECT DISTINCT d.model_name, coalesce(d.reason, '') AS reason FROM {AUDIT_TABLE} d "
        "WHERE d.model_name = ANY(%(models)s) AND d.action = %(detected)s "
        f"AND NOT EXISTS (SELECT 1 FROM {AUDIT_TABLE} r WHERE r.model_name = d.model_name AND r.action = %(restored)s "
        f"AND coalesce(r.reason, '') = coalesce(d.reason, '') AND r.id > d.id AND {_upto('r.')}) "
        # on-call's acknowledgement of a deleted version closes the watch's finding of its deletion (replay's rule)
        f"AND NOT EXISTS (SELECT 1 FROM {AUDIT_TABLE} a WHERE a.model_name = d.model_name AND a.action = %(acked)s "
        "AND a.version = d.version AND coalesce(d.reason, '') = 'v' || d.version || ' was deleted from the registry' "
        f"AND a.id > d.id AND {_upto('a.')})",
        {
            "acked": str(AuditAction.DRIFT_ACKNOWLEDGED),
            "models": models,
            "bounds": _bounds(models, upto),
            "detected": str(AuditAction.DRIFT_DETECTED),
            "restored": str(AuditAction.DRIFT_RESTORE),
        },
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["model_name"], []).append(row["reason"] or "")
    return found


def open_health_findings(conn: Any, models: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """{model: its ``health_degraded`` rows (id, version, actor, reason, created_at), oldest first, that no later
    ``health_recovered`` row of the same version closed} (``replay``'s ``degraded``, in SQL)."""
    rows = fetch(
        conn,
        f"SELECT d.model_name, d.id, d.version, d.actor, d.reason, d.created_at FROM {AUDIT_TABLE} d "
        "WHERE d.model_name = ANY(%(models)s) AND d.action = %(degraded)s AND NOT EXISTS (SELECT 1 FROM "
        f"{AUDIT_TABLE} r WHERE r.model_name = d.model_name AND r.version = d.version AND r.action = %(recovered)s "
        "AND r.id > d.id) ORDER BY d.model_name, d.id",
        {
            "models": list(models),
            "degraded": str(AuditAction.HEALTH_DEGRADED),
            "recovered": str(AuditAction.HEALTH_RECOVERED),
        },
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row.pop("model_name"), []).append(row)
    return found


def history_page(conn: Any, model: str, page: int, per_page: int) -> AuditPage:
    """One page of a model's audit rows, newest first."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {AUDIT_TABLE} WHERE model_name = %s", (model,))
        total = int(cur.fetchone()[0])
    rows = fetch(
        conn,
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM {AUDIT_TABLE} WHERE model_name = %s "
        "ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
        (model, per_page, (page - 1) * per_page),
    )
    return AuditPage(tuple(rows), page, per_page, total)


@dataclass(frozen=True)
class Integrity:
    """What a reader without the workers' key can tell of one model's audit log: the anchored head checked against
    the registry's anchor, and how many rows came after it (their MACs only the workers can check)."""

    problem: str | None = None  # the log does not match its anchor: rows deleted or rewritten
    trusted_upto: int | None = None  # the anchored row: rows after it are unverified (None: no anchor to bound by)
    unverified: int = 0


def integrity(conn: Any, anchors: Mapping[str, Anchor | None]) -> dict[str, Integrity]:
    """{model: its Integrity} for the given models and their anchors (``chain.ANCHOR_TAG``): two queries for all.

    The full check (every link and MAC) needs the workers' key: ``python -m include.promotion.audit.schema verify``,
    and the registry watch runs it on every model each time; it records what it finds as drift, which the page shows.
    """
    models = list(anchors)
    if not models:
        return {}
    ids = [a.row_id if a is not None else -1 for a in anchors.values()]
    pairs = {"models": models, "ids": ids}
    heads = fetch(
        conn,
        f"SELECT a.* FROM {AUDIT_TABLE} a JOIN unnest(%(models)s::text[], %(ids)s::bigint[]) AS w(model_name, id) "
        "ON a.model_name = w.model_name AND a.id = w.id",
        pairs,
    )
    after = fetch(
        conn,
        "SELECT w.model_name, count(a.id) AS n FROM unnest(%(models)s::text[], %(ids)s::bigint[]) AS w(model_name, id) "
        f"LEFT JOIN {AUDIT_TABLE} a ON a.model_name = w.model_name AND a.id > w.id AND a.mac IS NOT NULL "
        "GROUP BY w.model_name",
        pairs,
    )
    by_model = {row["model_name"]: row for row in heads}
    counts = {row["model_name"]: int(row["n"]) for row in after}
    found = {}
    for model, anchor in anchors.items():
        unverified = counts.get(model, 0)
        if anchor is None:  # never anchored: keyed rows (if any) are unverified, nothing to bound by
            found[model] = Integrity(None, None, unverified)
            continue
        head = by_model.get(model)
        if head is None:
            problem = (
                f"the audit log's anchored chain head (row {anchor.row_id}) is gone: rows were deleted from the log"
            )
        elif head["row_hash"] != chain_hash(head["prev_hash"], head, CHAINED_V2) or (
            head["row_hash"],
            head["mac"],
        ) != (anchor.row_hash, anchor.mac):
            problem = f"the audit log's row {anchor.row_id} differs from the chain head anchored in the registry"
        else:
            problem = None
        found[model] = Integrity(problem, anchor.row_id if problem is None else None, unverified)
    return found


def audited_models(conn: Any, only: str | None = None) -> list[str]:
    """The models the audit log has rows for (``only``: that one, if it has any), by name."""
    if not table_exists(conn):
        return []
    if only is not None:
        rows = fetch(conn, f"SELECT model_name FROM {AUDIT_TABLE} WHERE model_name = %s LIMIT 1", (only,))
    else:
        rows = fetch(conn, f"SELECT DISTINCT model_name FROM {AUDIT_TABLE} ORDER BY model_name", ())
    return [str(r["model_name"]) for r in rows]
