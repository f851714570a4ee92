"""Who may see and run each model's DAGs under the FAB auth manager: one FAB role per model, from its config.

A model's role (``model_role``) holds its team: ``team``, ``approval.reviewers``, ``rollback.on_call`` and the
``owner`` (``ModelConfig.team_members``). The promotion DAG grants that role read and edit on the DAG and its runs
(``access_control``); people otherwise hold only ``MEMBER_ROLE`` (FAB's ``User`` role without the permissions on
every DAG), so a model's runs, task instances, Required Actions and Model promotion page are its team's alone.
Within the team, the approval gate still asks only the reviewers (``assigned_users``), and the shared rollback DAG
(granted to ``ON_CALL_ROLE``, everyone on call for some model) still checks on-call per model.

The simple auth manager ignores ``access_control``: there every user may read every DAG, as before.
``include/promotion/fab_accounts.py`` creates the roles and memberships; this module only computes them (imported at DAG
parse time: no Airflow import, no database).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from include.promotion.config import ModelConfig

# FAB's auth manager, answering Required Actions by user name (include/promotion/auth_manager.py)
FAB_AUTH_MANAGER = "include.promotion.auth_manager.PromotionFabAuthManager"
# People's base role: FAB's User role minus every permission on all DAGs ("DAGs", "DAG Runs" as resources); what they
# may do on a DAG comes from the model roles below.
MEMBER_ROLE = "Promotion member"
# Everyone on call for some model: may see and trigger model_rollback, whose validate task checks the model's list.
ON_CALL_ROLE = "Promotion on-call"
# FAB's role names are at most 64 characters; model names up to 100.
_ROLE_NAME_MAX = 64
_PREFIX = "model:"

# What a team may do on its model's DAG (FAB's DAG-level resources): see it, trigger runs, clear and mark tasks,
# answer its Required Actions (the global "Task Instances" / "HITL Detail" permissions of MEMBER_ROLE, plus edit here).
TEAM_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "DAGs": frozenset({"can_read", "can_edit"}),
    "DAG Runs": frozenset({"can_read", "can_create"}),
}


def model_role(model_name: str) -> str:
    """``model:<name>``; a name too long for FAB keeps its start and a digest of the whole (still one per model)."""
    role = _PREFIX + model_name
    if len(role) <= _ROLE_NAME_MAX:
        return role
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:12]
    return f"{role[: _ROLE_NAME_MAX - 13]}~{digest}"


def _grant(role: str) -> dict[str, dict[str, set[str]]]:
    return {role: {resource: set(actions) for resource, actions in TEAM_PERMISSIONS.items()}}


def promotion_access_control(cfg: ModelConfig) -> dict[str, dict[str, set[str]]]:
    """The promotion DAG's ``access_control``: the model's role may read and run it (admins may do all anyway)."""
    return _grant(model_role(cfg.name))


def rollback_access_control() -> dict[str, dict[str, set[str]]]:
    """The shared rollback DAG's ``access_control``: everyone on call for some model (its validate task checks
    that the trigger is on call for the model named)."""
    return _grant(ON_CALL_ROLE)


def team_roles(configs: Iterable[ModelConfig]) -> dict[str, list[str]]:
    """FAB role -> its members' user names: one role per model, and ``ON_CALL_ROLE`` for the union of on-call."""
    roles: dict[str, list[str]] = {}
    on_call: set[str] = set()
    for cfg in configs:
        roles[model_role(cfg.name)] = cfg.team_members
        on_call.update(cfg.rollback_on_call)
    roles[ON_CALL_ROLE] = sorted(on_call)
    return roles
