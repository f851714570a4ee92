"""The tasks of the ``model_rollback`` DAG, as plain functions."""

from __future__ import annotations

import logging
from typing import Any

from include.promotion import registry, settings, tracking
from include.promotion.config import get_model_config
from include.promotion.errors import InvariantViolation, RollbackTargetInvalid
from include.promotion.registry import Change, RollbackPlan
from include.promotion.steps import triggering_user

log = logging.getLogger(__name__)


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check a rollback request; return the resolved plan or raise with what to do instead."""
    model_name = (params.get("model_name") or "").strip()
    reason = (params.get("reason") or "").strip()
    if not reason:
        raise RollbackTargetInvalid("reason is required: say what is wrong with the current model.")
    get_model_config(model_name)  # UnknownModel lists the configured ones
    plan = registry.plan_rollback(model_name, params.get("target_version"))
    log.info("rollback of %s: v%s -> v%s", model_name, plan.current_version, plan.target_version)
    return {
        "model_name": plan.model_name,
        "current_version": plan.current_version,
        "target_version": plan.target_version,
        "reason": reason,
    }


def execute(plan: dict[str, Any], context: Any) -> dict[str, Any]:
    """Restore the target as champion under the model's lock; the actor is who triggered the run."""
    ti = context["ti"]
    actor = triggering_user(context) or ti.dag_id
    registry.rollback(
        RollbackPlan(plan["model_name"], plan["current_version"], plan["target_version"]),
        plan["reason"],
        Change(actor=actor, dag_id=ti.dag_id, run_id=ti.run_id),
    )
    log.info("%s: champion restored to v%s by %s", plan["model_name"], plan["target_version"], actor)
    return {**plan, "actor": actor}


def verify(plan: dict[str, Any]) -> str:
    """The invariant holds and ``models:/<name>@champion`` is the target."""
    client = tracking.client()
    name, target = plan["model_name"], plan["target_version"]
    champion = registry.verify_invariant(name, client)
    resolved = client.get_model_version_by_alias(name, settings.CHAMPION_ALIAS)
    if champion != target or str(resolved.version) != target:
        raise InvariantViolation(
            f"'{name}': expected the champion to be v{target} after the rollback, found v{champion}."
        )
    return champion
