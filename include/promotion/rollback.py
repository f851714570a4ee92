"""Rollback: plan (resolve and check the target) and execute (restore it as champion), on record.

``plan_rollback`` reads only and may run outside the lock (the rollback DAG's ``validate``);
``rollback`` takes the model's lock and checks the plan again under it before changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from include.promotion import audit, mlflow_client
from include.promotion.errors import RollbackTargetInvalid
from include.promotion.inputs import clean_reason, clean_version
from include.promotion.invariants import verify_invariant
from include.promotion.lifecycle import Change, now_iso, require_version
from include.promotion.mlflow_client import get_alias, set_stage, set_tags, status_of
from include.promotion.states import CHAMPION_ALIAS, AuditAction, Stage, Status

if TYPE_CHECKING:
    from mlflow import MlflowClient

RESTORES_ROLLED_BACK = "restores a version that was rolled back earlier"


@dataclass(frozen=True)
class RollbackPlan:
    model_name: str
    current_version: str
    target_version: str
    restores_rolled_back: bool = False


def plan_rollback(
    name: str,
    target_version: str | int | None,
    client: MlflowClient | None = None,
    allow_rolled_back: bool = False,
) -> RollbackPlan:
    """Resolve and check a rollback's target in O(1) registry calls; raise ``RollbackTargetInvalid``."""
    client = client or mlflow_client.client()
    requested = clean_version(target_version)
    champion = get_alias(client, name, CHAMPION_ALIAS)
    if champion is None:
        raise RollbackTargetInvalid(
            f"model '{name}' has no champion: nothing is in production, so there is nothing to roll back."
        )
    current = str(champion.version)
    target = requested or (champion.tags or {}).get("promoted_over") or ""
    if not target:
        raise RollbackTargetInvalid(
            f"{name} v{current} replaced no earlier champion: nothing to roll back to; pass target_version."
        )
    mv = mlflow_client.get_version(client, name, target)
    if mv is None:
        raise RollbackTargetInvalid(
            f"model '{name}' has no version {target} (version numbers are per model: check that {target} is a "
            f"version of '{name}' and not of another model). Pass an earlier production version of '{name}'."
        )
    if target == current:
        raise RollbackTargetInvalid(
            f"v{target} is already the champion of '{name}'; pass an earlier production version, or leave "
            "target_version empty to go back to the previous champion."
        )
    status = status_of(mv)
    if status == Status.REJECTED:
        raise RollbackTargetInvalid(
            f"{name} v{target} was rejected by a reviewer ({mv.tags.get('rejection_reason', 'no reason')}) "
            "and cannot be restored; pass a version that was in production."
        )
    if not (mv.tags or {}).get("production_timestamp"):
        raise RollbackTargetInvalid(
            f"{name} v{target} was never in production (status '{status}'); a rollback may only restore a "
            "version that served before. Pass one of those, or approve this one through the promotion DAG."
        )
    if status == Status.ROLLED_BACK and not allow_rolled_back:
        raise RollbackTargetInvalid(
            f"{name} v{target} was rolled back earlier as bad ({mv.tags.get('rollback_reason', 'no reason')}); "
            "restoring it needs the form's 'restore a rolled-back version' box ticked, and is recorded as such."
        )
    return RollbackPlan(name, current, target, restores_rolled_back=status == Status.ROLLED_BACK)


def rollback(plan: RollbackPlan, reason: str, change: Change) -> None:
    """Restore ``plan.target_version`` as champion and mark the current one ``rolled_back``.

    The target's own ``promoted_over`` is left as it was, so a second rollback goes one step further
    back. Resumes a crashed attempt of the same change; refuses if the champion moved meanwhile.
    """
    reason = clean_reason(reason, "a rollback's reason")
    if plan.restores_rolled_back:
        reason = f"{reason} ({RESTORES_ROLLED_BACK})"
    client = mlflow_client.client()
    name, current, target = plan.model_name, plan.current_version, plan.target_version
    with audit.model_lock(name, change.change_id) as log:
        champion = get_alias(client, name, CHAMPION_ALIAS)
        current_mv = require_version(client, name, current)
        resumed = (
            champion is not None
            and str(champion.version) == target
            and current_mv.tags.get("rollback_change") == change.change_id
        )
        if not resumed and (champion is None or str(champion.version) != current):
            raise RollbackTargetInvalid(
                f"the champion of '{name}' changed since the rollback was checked (was v{current}, now "
                f"{'v' + str(champion.version) if champion else 'none'}); nothing was changed. "
                "Trigger the rollback again."
            )
        if not resumed:
            plan_rollback(name, target, client, allow_rolled_back=plan.restores_rolled_back)  # again, under the lock
        stamp = current_mv.tags.get("rollback_timestamp") or now_iso()
        set_tags(
            client,
            name,
            current,
            {
                "rollback_change": change.change_id,
                "rollback_reason": reason,
                "rolled_back_by": change.actor,
                "rollback_timestamp": stamp,
                "promotion_status": Status.ROLLED_BACK,
            },
        )
        set_stage(client, name, target, Stage.PRODUCTION, archive_existing=True)
        client.set_registered_model_alias(name, CHAMPION_ALIAS, target)
        set_tags(client, name, target, {"promotion_status": Status.PRODUCTION})  # who and why: the audit rows
        log.record(change.entry(name, target, AuditAction.ROLLBACK_RESTORE, Stage.ARCHIVED, Stage.PRODUCTION, reason))
        log.record(change.entry(name, current, AuditAction.ROLLBACK_DEMOTE, Stage.PRODUCTION, Stage.ARCHIVED, reason))
        verify_invariant(name, client)
