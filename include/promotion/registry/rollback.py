"""Rollback: plan (resolve and check the target) and execute (restore it as champion), on record.

``plan_rollback`` reads only and may run outside the lock (the rollback DAG's ``validate``);
``rollback`` takes the model's lock and checks the plan again under it before changing anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.promotion.audit import log as audit
from include.promotion.audit.replay import AuditedState, audited_state
from include.promotion.errors import RollbackTargetInvalid
from include.promotion.inputs import clean_reason, clean_version
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.client import get_alias, set_stage, set_tags, status_of
from include.promotion.registry.invariants import verify_invariant
from include.promotion.registry.lifecycle import Change, now_iso, require_version
from include.promotion.states import CHAMPION_ALIAS, AuditAction, Stage, Status, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

RESTORES_ROLLED_BACK = "restores a version that was rolled back earlier"


@dataclass(frozen=True)
class RollbackPlan:
    model_name: str
    current_version: str
    target_version: str
    restores_rolled_back: bool = False
    # the champion's version was deleted from the registry (outside the pipeline): there is no alias left to
    # move away from, and the audit log, not the registry, says which version it was
    current_deleted: bool = False


def plan_rollback(
    name: str,
    target_version: str | int | None,
    client: MlflowClient | None = None,
    allow_rolled_back: bool = False,
    audit_rows: Sequence[Mapping[str, Any]] | None = None,
) -> RollbackPlan:
    """Resolve and check a rollback's target in O(1) registry calls; raise ``RollbackTargetInvalid``.

    ``audit_rows``: the model's audit rows, oldest first, when the caller read them already (the rollback form
    reads them as the audit log's reader); by default they are read here."""
    client = client or mlflow_client.client()
    requested = clean_version(target_version)
    champion = get_alias(client, name, CHAMPION_ALIAS)
    # what only workers wrote, and verifies: the last word on what served (``audit_rows``: the page's preview, read
    # up to the registry's anchor by the page)
    state = audited_state(name, _verified_rows(name, client) if audit_rows is None else audit_rows)
    current_deleted = False
    if champion is not None:
        current = str(champion.version)
        _check_champion_against_audit(name, current, state)
        target = requested or (champion.tags or {}).get(Tag.PROMOTED_OVER) or ""
    else:
        current, target = _deleted_champion(name, requested, client, state)
        current_deleted = True
    if not target:
        raise RollbackTargetInvalid(
            f"{name} v{current} replaced no earlier champion: nothing to roll back to; pass target_version."
        )
    if target in state.deleted:
        raise RollbackTargetInvalid(
            f"{name} v{target} was deleted by the retention policy (audit log: retention_delete; its earlier rows "
            "stay): it cannot be restored. Pass a version that still exists and served before. Nothing was changed."
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
    if not (mv.tags or {}).get(Tag.PRODUCTION_TIMESTAMP):
        raise RollbackTargetInvalid(
            f"{name} v{target} was never in production (status '{status}'); a rollback may only restore a "
            "version that served before. Pass one of those, or approve this one through the promotion DAG."
        )
    if status == Status.ROLLED_BACK and not allow_rolled_back:
        raise RollbackTargetInvalid(
            f"{name} v{target} was rolled back earlier as bad ({mv.tags.get('rollback_reason', 'no reason')}); "
            "restoring it needs the form's 'restore a rolled-back version' box ticked, and is recorded as such."
        )
    _check_target_against_audit(name, target, state, allow_rolled_back)
    return RollbackPlan(name, current, target, state.statuses.get(target) == Status.ROLLED_BACK, current_deleted)


def _verified_rows(name: str, client: MlflowClient) -> list[dict[str, Any]]:
    """The model's audit rows, if every one verifies (MACs, anchored head); a rollback decided on a forged or
    rewritten history is refused."""
    rows, verdict = audit.verified(name, client)
    if not verdict.intact:
        raise RollbackTargetInvalid(
            f"the audit log of '{name}' does not verify ({verdict.problem}); a rollback is checked against it, so "
            "nothing was changed. Investigate the audit log (`python -m include.promotion.audit.schema verify "
            f"--model {name}`); the registry watch has reported it too."
        )
    return rows


def _check_champion_against_audit(name: str, current: str, state: AuditedState) -> None:
    """The alias says who serves; the audit log must agree (an MLflow admin can move an alias, not write rows)."""
    if state.champion != current:
        audited = f"v{state.champion}" if state.champion else "no champion"
        raise RollbackTargetInvalid(
            f"the registry says v{current} is the champion of '{name}' but the audit log records {audited}: the "
            "registry was changed outside the pipeline. Nothing was changed. Trigger model_registry_watch for "
            f"'{name}' (with on_drift: restore it puts the audited champion back), then roll back if still needed."
        )


def _check_target_against_audit(name: str, target: str, state: AuditedState, allow_rolled_back: bool) -> None:
    """The registry's tags said yes; the audit log must agree (tags can be edited by an MLflow admin, rows not)."""
    audited_status = state.statuses.get(target)
    if target not in state.champion_history or audited_status not in (Status.ARCHIVED, Status.ROLLED_BACK):
        raise RollbackTargetInvalid(
            f"the audit log does not record {name} v{target} as a version that served and was replaced (audited "
            f"status: {audited_status or 'none'}); a rollback restores only such a version. Nothing was changed."
        )
    if audited_status == Status.ROLLED_BACK and not allow_rolled_back:
        raise RollbackTargetInvalid(
            f"{name} v{target} was rolled back earlier as bad (audit log); restoring it needs the form's 'restore a "
            "rolled-back version' box ticked, and is recorded as such."
        )


def _deleted_champion(name: str, requested: str | None, client: MlflowClient, state: AuditedState) -> tuple[str, str]:
    """(the audited champion whose version was deleted, the target): the only rollback without a champion alias."""
    gone = state.champion
    if gone is None:
        raise RollbackTargetInvalid(
            f"model '{name}' has no champion: nothing is in production, so there is nothing to roll back."
        )
    if mlflow_client.get_version(client, name, gone) is not None:
        raise RollbackTargetInvalid(
            f"the 'champion' alias of '{name}' is gone but the audit log records v{gone} as champion: the registry "
            f"was changed outside the pipeline. Nothing was changed. Trigger model_registry_watch for '{name}' (with "
            "on_drift: restore it puts the alias back), then roll back if still needed."
        )
    target = requested or state.previous_champion(lambda v: mlflow_client.get_version(client, name, v) is not None)
    if not target:
        raise RollbackTargetInvalid(
            f"the champion of '{name}', v{gone}, was deleted from the registry and no earlier champion is left to "
            "restore; pass target_version, or run the retraining DAG."
        )
    return gone, target


def restore_champion(client: MlflowClient, name: str, version: str) -> None:
    """Make ``version`` the champion again: Production stage (archiving any other), alias, status tag.

    The one way the package puts an earlier version back, for a rollback and for the registry watch's repair.
    """
    set_stage(client, name, version, Stage.PRODUCTION, archive_existing=True)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    set_tags(client, name, version, {Tag.STATUS: Status.PRODUCTION})


def rollback(plan: RollbackPlan, reason: str, change: Change, action: AuditAction | None = None) -> None:
    """Restore ``plan.target_version`` as champion and mark the current one ``rolled_back``.

    The audit rows are ``rollback_restore`` and ``rollback_demote``, or both ``action`` when given (the
    post-promotion check's ``post_check_rollback``: the stages tell the restored version from the demoted one).

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
        holder = str(champion.version) if champion is not None else None
        current_mv = None if plan.current_deleted else require_version(client, name, current)
        resumed = holder == target and (
            plan.current_deleted or current_mv.tags.get(Tag.ROLLBACK_CHANGE) == change.change_id
        )
        if not resumed and holder != (None if plan.current_deleted else current):
            raise RollbackTargetInvalid(
                f"the champion of '{name}' changed since the rollback was checked (was v{current}, now "
                f"{'v' + holder if holder else 'none'}); nothing was changed. Trigger the rollback again."
            )
        if not resumed:  # check again, under the lock
            again = plan_rollback(name, target, client, allow_rolled_back=plan.restores_rolled_back)
            if again.current_version != current:
                raise RollbackTargetInvalid(
                    f"the champion of '{name}' changed since the rollback was checked (was v{current}, now "
                    f"v{again.current_version}); nothing was changed. Trigger the rollback again."
                )
        restore, demote = (action, action) if action else (AuditAction.ROLLBACK_RESTORE, AuditAction.ROLLBACK_DEMOTE)
        if current_mv is None:
            reason = f"{reason} (v{current} was deleted from the registry)"
        rows = (
            change.entry(name, target, restore, Stage.ARCHIVED, Stage.PRODUCTION, reason),
            change.entry(name, current, demote, Stage.PRODUCTION, Stage.ARCHIVED, reason),
        )
        for row in rows:  # restore mode must not undo a rollback whose rows a crash kept from being written
            log.announce(row, f"roll back v{current} to v{target}")
        if current_mv is not None:
            stamp = current_mv.tags.get(Tag.ROLLBACK_TIMESTAMP) or now_iso()
            set_tags(
                client,
                name,
                current,
                {
                    Tag.ROLLBACK_CHANGE: change.change_id,
                    Tag.ROLLBACK_REASON: reason,
                    Tag.ROLLED_BACK_BY: change.actor,
                    Tag.ROLLBACK_TIMESTAMP: stamp,
                    Tag.STATUS: Status.ROLLED_BACK,
                },
            )
        restore_champion(client, name, target)  # who and why: the audit rows
        for row in rows:
            log.record(row)
        verify_invariant(name, client)
