"""The FAB auth manager's users and roles (``make run RUN_ARGS=--fab``, the tests' FAB stack, docker-compose.yaml).

Run in Airflow's environment after ``airflow db migrate`` and again whenever a model is added (the dag-processor
refuses a DAG whose ``access_control`` names a role that does not exist)::

    python -m include.promotion.fab_accounts < accounts.json   # {"users": {name: {"role": ..., "password": ...}}}

``role`` is one of ``BASE_ROLES`` (the simple auth manager's names); an empty ``users`` creates the roles only
(people then come from an identity provider: docs/security.md).

It creates ``MEMBER_ROLE`` (FAB's User role without the permissions on every DAG), one role per governed model and
``ON_CALL_ROLE`` (``include/promotion/access.py``), the users with their passwords (read on stdin, never on a command
line), and puts each person in the roles of the models whose team names them. A team member with no account here
(e.g. one who signs in through an identity provider later) is listed on stdout, not created.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULT_PREFIX = "fab_accounts: "
# The read-only role of the pipeline's Airflow account (event-log-reader): FAB's Viewer, plus Airflow's event log,
# which FAB grants no role but Admin (the approval gate reads who cleared or re-ran a run there).
READER_ROLE = "Promotion reader"
# the stack's roles (the simple auth manager's names, StackConfig.users) -> FAB's base role
BASE_ROLES = {"admin": "Admin", "op": "Op", "viewer": READER_ROLE, "user": "member", "": "member"}
# FAB's permissions on every DAG at once: what people outside the admins must not hold (the DAGs menu stays)
_ALL_DAGS = {("can_read", "DAGs"), ("can_edit", "DAGs"), ("can_delete", "DAGs")}


def fab_role_of(stack_role: str) -> str:
    from include.promotion.access import MEMBER_ROLE

    if stack_role not in BASE_ROLES:
        raise ValueError(f"role {stack_role!r}: use one of {sorted(BASE_ROLES)}")
    base = BASE_ROLES[stack_role]
    return MEMBER_ROLE if base == "member" else base


def sync(users: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Create or update the roles and users; return what was done (printed as JSON)."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    from include.promotion.access import MEMBER_ROLE, team_roles
    from include.promotion.config import load_model_configs

    loaded = load_model_configs()
    roles = team_roles(loaded.models.values())
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        if sm.find_role("User") is None:
            sm.sync_roles()
        member = sm.find_role(MEMBER_ROLE) or sm.add_role(MEMBER_ROLE)
        for permission in sm.find_role("User").permissions:
            everywhere = (permission.action.name, permission.resource.name) in _ALL_DAGS
            if not everywhere and permission not in member.permissions:
                sm.add_permission_to_role(member, permission)
        reader = sm.find_role(READER_ROLE) or sm.add_role(READER_ROLE)
        event_log = sm.get_permission("can_read", "Audit Logs") or sm.create_permission("can_read", "Audit Logs")
        for permission in [*sm.find_role("Viewer").permissions, event_log]:
            if permission not in reader.permissions:
                sm.add_permission_to_role(reader, permission)
        for role in roles:
            if sm.find_role(role) is None:
                sm.add_role(role)
        memberships: dict[str, list[str]] = {}
        for name, account in users.items():
            wanted = [fab_role_of(account["role"]), *(role for role, members in roles.items() if name in members)]
            role_objects = [sm.find_role(role) for role in wanted]
            user = sm.find_user(username=name)
            if user is None:
                created = sm.add_user(
                    name, name, "-", f"{name}@example.invalid", role_objects, password=account["password"]
                )
                if not created:
                    raise RuntimeError(f"FAB could not create the user {name!r}")
            else:
                user.roles = role_objects
                sm.update_user(user)
            memberships[name] = wanted
        missing = sorted({m for members in roles.values() for m in members} - set(users))
    return {"roles": sorted(roles), "users": memberships, "team members without an account": missing}


def simple_auth_manager_users() -> dict[str, dict[str, str]]:
    """The users docker-compose.yaml lists for the simple auth manager (``[core] simple_auth_manager_users``,
    ``name:role,...``) with the passwords airflow-init keeps in its passwords file: one list of people for both auth
    managers, and MLflow's accounts get the same passwords."""
    from airflow.configuration import conf

    listed = conf.get("core", "simple_auth_manager_users", fallback="")
    passwords = json.loads(Path(conf.get("core", "simple_auth_manager_passwords_file")).read_text() or "{}")
    users = {}
    for entry in filter(None, (e.strip() for e in listed.split(","))):
        name, _, role = entry.partition(":")
        if name not in passwords:
            raise SystemExit(f"{name}: no password in the passwords file; airflow-init writes them first")
        users[name] = {"role": role, "password": passwords[name]}
    return users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.promotion.fab_accounts", description=__doc__)
    parser.add_argument(
        "--simple-auth-manager-users",
        action="store_true",
        help="take the users and passwords from the simple auth manager's settings (docker-compose.yaml) instead of "
        "a JSON request on stdin",
    )
    args = parser.parse_args(argv)
    users = simple_auth_manager_users() if args.simple_auth_manager_users else json.load(sys.stdin)["users"]
    # one line after a prefix: Airflow's own logging shares stdout (the stack reads this line back)
    print(RESULT_PREFIX + json.dumps(sync(users), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
