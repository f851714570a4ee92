"""The post-promotion check's outcome on record, and the promotions that have none.

The check writes its outcome as an audit row (``post_check_passed``, ``post_check_failed``, or the
``post_check_rollback`` rows of its rollback). A user may set ``verify_in_production`` to success by hand, or skip
it; then no row is written, and ``check_outcome_recorded`` handles the promotion as a failed check: in the promotion
run's own ``notify_deployers``, and in the registry watch once ``settings.unchecked_promotion_minutes`` passed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.promotion.states import AuditAction

if TYPE_CHECKING:
    from include.promotion.airflow_run import RunRef
    from include.promotion.config import ModelConfig
    from include.promotion.registry.lifecycle import Change

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    """What this run changed in production, from its own audit rows: the version it promoted, the one it replaced."""

    model_name: str
    version: str
    previous: str | None


CHECK_OUTCOMES = (AuditAction.POST_CHECK_PASSED, AuditAction.POST_CHECK_FAILED, AuditAction.POST_CHECK_ROLLBACK)


def unchecked_promotion(
    rows: list[dict[str, Any]], since: Any = None, run: RunRef | None = None
) -> dict[str, Any] | None:
    """The ``promote`` row of a promotion that holds production with no check outcome after it, else None.

    ``run``: only that run's promotion (its own ``notify_deployers``); otherwise the champion's, when the latest
    row that put a version in production is a ``promote``. ``since``: promotions recorded earlier are not judged
    (they predate check outcomes: ``audit.schema.CHECK_OUTCOMES_MIGRATION``).
    """
    from include.promotion.audit.replay import status_after
    from include.promotion.states import Status

    if run is not None:
        mine = [r for r in rows if r["dag_id"] == run.dag_id and r["run_id"] == run.run_id]
        promoted = [r for r in mine if r["action"] == AuditAction.PROMOTE]
    else:
        entered = [r for r in rows if status_after(r) == Status.PRODUCTION and r["action"] != AuditAction.APPROVE]
        promoted = entered[-1:] if entered and entered[-1]["action"] == AuditAction.PROMOTE else []
    if not promoted:
        return None
    promote = promoted[-1]
    if since is not None and promote["created_at"] < since:
        return None
    after = [r for r in rows if r["id"] > promote["id"] and str(r["version"]) == str(promote["version"])]
    return None if any(r["action"] in CHECK_OUTCOMES for r in after) else promote


def unchecked(cfg: ModelConfig, run: RunRef | None = None, grace: float = 0.0) -> tuple[Promotion, str] | None:
    """A promotion without a check outcome (``run``'s own, or the champion's once ``grace`` minutes passed) and
    what to say of it; None when there is none or the check is off."""
    from datetime import UTC, datetime, timedelta

    from include.promotion.audit import log as audit
    from include.promotion.audit import schema as audit_schema

    if not cfg.post_promotion.check:
        return None
    conn = audit_schema.connect()
    try:
        since = audit_schema.applied_at(conn, audit_schema.CHECK_OUTCOMES_MIGRATION)
    finally:
        conn.close()
    rows = audit.rows(cfg.name)
    promote = unchecked_promotion(rows, since, run)
    if promote is None or (run is None and promote["created_at"] > datetime.now(UTC) - timedelta(minutes=grace)):
        return None
    version = str(promote["version"])
    archived = [
        str(r["version"])
        for r in rows
        if r["action"] == AuditAction.ARCHIVE
        and (r["dag_id"], r["run_id"]) == (promote["dag_id"], promote["run_id"])
        and str(r["version"]) != version
    ]
    why = (
        f"no check outcome is on record for the promotion of v{version} by run {promote['run_id']}: "
        "verify_in_production never checked it (its state was set by hand, or it was skipped)"
    )
    log.error("%s: %s; handled as a failed check", cfg.name, why)
    return Promotion(cfg.name, version, archived[-1] if archived else None), why


def record_outcome(promotion: Promotion, change: Change, action: AuditAction, reason: str) -> None:
    """The check's outcome as an audit row, written by the check itself: a promotion without one was never checked
    (``unchecked_promotion``), whatever state its task shows."""
    from include.promotion.audit import log as audit

    with audit.model_lock(promotion.model_name, change.change_id) as book:
        book.record(change.entry(promotion.model_name, promotion.version, action, None, None, reason[:1900]))
