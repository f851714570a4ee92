"""The rollback DAG's tasks: who may roll back, the signed plan, the restore, and its check."""

from __future__ import annotations

import logging
from typing import Any

from include.promotion.airflow_run import RunRef
from include.promotion.audit import log as audit
from include.promotion.config import get_model_config
from include.promotion.errors import InvariantViolation, NotAuthorized, RollbackTargetInvalid
from include.promotion.inputs import clean_reason
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle, rollback
from include.promotion.registry.invariants import verify_invariant
from include.promotion.run_note import leave
from include.promotion.signing import Kind, sign, verify
from include.promotion.states import CHAMPION_ALIAS

log = logging.getLogger(__name__)


def require_on_call(model_name: str, user: str | None, doing: str, outcome: str) -> None:
    """``NotAuthorized`` unless ``user`` is on call for the model (``rollback.on_call``, default: its reviewers), as
    its config says: ``doing`` what was refused ("roll back 'm'"), ``outcome`` what that left ("Nothing was ...")."""
    on_call = get_model_config(model_name).rollback_on_call  # only a config that loads says who is on call
    if user is None or user not in on_call:
        who = f"'{user}'" if user else "a run nobody triggered from the UI or API"
        raise NotAuthorized(f"{who} may not {doing}: only its on-call ({', '.join(on_call)}) may. {outcome}")


def may_roll_back(model_name: str, user: str | None) -> None:
    """Only the model's on-call may roll it back."""
    require_on_call(
        model_name,
        user,
        f"roll back '{model_name}'",
        "Nothing was changed. Ask one of them, or add the user under rollback.on_call in the model config.",
    )


def validate_rollback(params: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Check a rollback request (who, limits, target); return the signed plan, changing nothing."""
    model_name = (params.get("model_name") or "").strip()
    reason = clean_reason(params.get("reason"), "reason")
    get_model_config(model_name)  # UnknownModel lists the configured ones
    may_roll_back(model_name, run.triggered_by)
    if audit.run_has_rows(model_name, run.dag_id, run.run_id):
        # Clearing a finished run re-runs it as the user who first triggered it, whoever clicked Clear.
        raise RollbackTargetInvalid(
            f"rollback run {run.run_id} already changed '{model_name}' (see its audit rows); a cleared rollback run "
            "is never replayed. Nothing was changed: trigger a new rollback run instead."
        )
    allow = bool(params.get("restore_rolled_back"))
    plan = rollback.plan_rollback(model_name, params.get("target_version"), allow_rolled_back=allow)
    log.info("rollback of %s: v%s -> v%s", model_name, plan.current_version, plan.target_version)
    return sign(
        Kind.ROLLBACK_PLAN,
        run,
        {
            "model_name": plan.model_name,
            "current_version": plan.current_version,
            "target_version": plan.target_version,
            "restores_rolled_back": plan.restores_rolled_back,
            "current_deleted": plan.current_deleted,
            "reason": reason,
        },
    )


def restore_previous_champion(signed_plan: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Restore the target as champion under the model's lock; the actor is who triggered the run."""
    plan = verify(Kind.ROLLBACK_PLAN, run, signed_plan)
    may_roll_back(plan["model_name"], run.triggered_by)
    rollback.rollback(
        rollback.RollbackPlan(
            plan["model_name"],
            plan["current_version"],
            plan["target_version"],
            plan["restores_rolled_back"],
            plan.get("current_deleted", False),
        ),
        plan["reason"],
        lifecycle.Change.by(run, run.triggered_by),
    )
    log.info("%s: champion restored to v%s by %s", plan["model_name"], plan["target_version"], run.triggered_by)
    return {**plan, "actor": run.triggered_by}


def verify_rollback(signed_plan: dict[str, Any], run: RunRef) -> str:
    """The invariant holds and ``models:/<name>@champion`` is the target."""
    plan = verify(Kind.ROLLBACK_PLAN, run, signed_plan)
    client = mlflow_client.client()
    name, target = plan["model_name"], plan["target_version"]
    champion = verify_invariant(name, client)
    resolved = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    if champion != target or str(resolved.version) != target:
        raise InvariantViolation(
            f"'{name}': expected the champion to be v{target} after the rollback, found v{champion}."
        )
    leave(f"Rolled back {name}: v{target} is the champion again, v{plan['current_version']} is rolled back.")
    return champion
