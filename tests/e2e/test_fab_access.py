"""Per-model access under the FAB auth manager, from the outsider's side, on a real stack (``auth_manager="fab"``).

One stack for the module (the session's PostgreSQL server, its own Airflow database and MLflow) with two models of
its own: ``A`` (team: dave; reviewers alice, bob; on call: carol) and ``B`` (reviewers erin, bob; on call: erin).
mallory is on no team. One real run of ``A`` reaches the approval gate (dave triggers it); every other check is a
REST call that the auth manager answers before anything happens: a trigger or rollback with a malformed body is 422
for who may trigger, 403 for who may not; a task-state change is a dry run.

docs/security.md's role table is parsed and checked row by row.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from include.promotion.access import MEMBER_ROLE, ON_CALL_ROLE, model_role
from include.promotion.config import dag_id_for
from scripts.airflow_api import AirflowAPI, AirflowAPIError
from scripts.stack import ServiceStack
from scripts.stack.config import FAB
from tests.conftest import REVIEWERS, TEST_AIRFLOW_COMPONENTS, TEST_AIRFLOW_ENV
from tests.e2e.conftest import DEMO, ROLLBACK, second_stack, users_of
from tests.support import FAST_DATA, FAST_ESTIMATOR

pytestmark = pytest.mark.e2e

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
USERS = {**REVIEWERS, "dave": "user", "erin": "user"}
# what the role table's columns say, in order
ACTIONS = ("read", "trigger", "task_state", "approve", "rollback")


@dataclass(frozen=True)
class Role:
    """One row of docs/security.md's role table: the test user and, per action, whether the row says "yes"."""

    who: str
    user: str
    may: dict[str, bool]


def role_table(path: Path = SECURITY_DOC) -> list[Role]:
    text = path.read_text()
    table = text.split("<!-- role-table: tests/e2e/test_fab_access.py -->", 1)[1].split("<!-- /role-table -->", 1)[0]
    rows = [line for line in table.strip().splitlines() if line.startswith("|")][2:]  # after header and rule
    roles = []
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        who, answers = cells[0], cells[1:]
        words = [a.split()[0].rstrip(":").lower() for a in answers]
        assert len(words) == len(ACTIONS) and set(words) <= {"yes", "no"}, line
        user = re.search(r"`([^`]+)`", who)
        assert user, f"the row names no test user in backticks: {line}"
        roles.append(Role(who, user.group(1), {a: w == "yes" for a, w in zip(ACTIONS, words, strict=True)}))
    return roles


ROLES = role_table()


def model_file(folder: Path, prefix: str, **sections: object) -> str:
    """A fast model (built-in data, small forest, no shadow or health checks) in ``folder``; its name."""
    cfg = yaml.safe_load(DEMO.read_text())
    for key in ("health", "retention"):
        cfg.pop(key, None)
    cfg.update(
        name=f"{prefix}-{uuid.uuid4().hex[:6]}",
        schedule=None,
        data=dict(FAST_DATA),
        estimator=dict(FAST_ESTIMATOR),
        shadow={"enabled": False},
        **sections,
    )
    (folder / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    return cfg["name"]


@dataclass(frozen=True)
class Models:
    a: str
    b: str


@pytest.fixture(scope="module")
def fab_models(tmp_path_factory) -> tuple[Path, Models]:
    folder = tmp_path_factory.mktemp("fab-models")
    a = model_file(
        folder, "fab-a", team=["dave"], approval={"reviewers": ["alice", "bob"]}, rollback={"on_call": ["carol"]}
    )
    b = model_file(folder, "fab-b", approval={"reviewers": ["erin", "bob"]}, rollback={"on_call": ["erin"]})
    return folder, Models(a, b)


@pytest.fixture(scope="module")
def fab_stack(request, services, fab_models, tmp_path_factory) -> Iterator[ServiceStack]:
    """LocalExecutor under the FAB auth manager, on the session's PostgreSQL server (its own Airflow database,
    its own MLflow); the users, the per-model roles and their members are created at start from the models folder."""
    with second_stack(
        request,
        services,
        tmp_path_factory.mktemp("fab-stack"),
        models_dir=fab_models[0],
        users=USERS,
        airflow_database="airflow_fab",
        extra_env=TEST_AIRFLOW_ENV,
        auth_manager=FAB,
        components=TEST_AIRFLOW_COMPONENTS,
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def as_user(fab_stack) -> Callable[[str], AirflowAPI]:
    return users_of(fab_stack)


@dataclass(frozen=True)
class Run:
    dag_id: str
    run_id: str


@pytest.fixture(scope="module")
def run_of_a(fab_stack, fab_models, as_user) -> Run:
    """The module's one real run: model A's, triggered by dave (a team member, not a reviewer)."""
    dag_id = dag_id_for(fab_models[1].a)
    admin = as_user("admin")
    for dag in (dag_id, dag_id_for(fab_models[1].b), ROLLBACK):
        admin.wait_for_dag(dag, timeout=180)
    return Run(dag_id, as_user("dave").trigger(dag_id))


def status(api: AirflowAPI, method: str, path: str, **kwargs: object) -> int:
    try:
        api.request(method, path, ok=(200, 201, 204), **kwargs)
    except AirflowAPIError as exc:
        return exc.status_code
    return 200


def page_status(stack: ServiceStack, user: str, path: str) -> int:
    token = stack.api_token(user)
    return requests.get(
        f"{stack.airflow_url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60
    ).status_code


def test_the_stack_made_one_role_per_model_with_its_team(fab_stack, fab_models) -> None:
    """Read back through FAB's own API: dave is in A's role only, on-call is carol and erin, mallory in no team."""
    a, b = fab_models[1].a, fab_models[1].b
    admin = {"Authorization": f"Bearer {fab_stack.api_token('admin')}"}

    def roles(user: str) -> set[str]:
        response = requests.get(f"{fab_stack.airflow_url}/auth/fab/v1/users/{user}", headers=admin, timeout=30)
        assert response.status_code == 200, response.text[:300]
        return {role["name"] for role in response.json()["roles"]}

    assert roles("dave") == {MEMBER_ROLE, model_role(a)}
    assert roles("carol") == {MEMBER_ROLE, model_role(a), ON_CALL_ROLE}
    assert roles("bob") == {MEMBER_ROLE, model_role(a), model_role(b)}
    assert roles("erin") == {MEMBER_ROLE, model_role(b), ON_CALL_ROLE}
    assert roles("mallory") == {MEMBER_ROLE}
    assert roles("admin") == {"Admin"}


@pytest.mark.parametrize("role", ROLES, ids=[r.user for r in ROLES])
def test_each_row_of_the_role_table_holds_outside_the_approval(
    role: Role, fab_stack, fab_models, as_user, run_of_a
) -> None:
    """Reading, triggering, changing task states and triggering a rollback, as the table's row says."""
    api = as_user(role.user)
    dag_id, run_id, model = run_of_a.dag_id, run_of_a.run_id, fab_models[1].a
    read = {
        status(api, "GET", f"/dags/{dag_id}/dagRuns"),
        status(api, "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"),
        page_status(fab_stack, role.user, f"/promotion/api/models/{model}"),
        page_status(fab_stack, role.user, f"/promotion/models/{model}"),
    }
    assert read == ({200} if role.may["read"] else {403}), role.who
    # a malformed body: who may trigger is told so (422) and nothing starts; who may not is refused first (403)
    assert status(api, "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": "not a date"}) == (
        422 if role.may["trigger"] else 403
    )
    marked = status(
        api, "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/load_data/dry_run", json={"new_state": "failed"}
    )
    assert marked == (200 if role.may["task_state"] else 403)
    assert status(api, "POST", f"/dags/{ROLLBACK}/dagRuns", json={"logical_date": "not a date"}) == (
        422 if role.may["rollback"] else 403
    )


def test_only_the_reviewers_answer_the_gate_a_team_member_triggered(as_user, run_of_a) -> None:
    """Everyone the table says may not approve gets 403 at the real gate; then a reviewer approves, and the
    run promotes (the gate knows the reviewer by user name under FAB too)."""
    dag_id, run_id = run_of_a.dag_id, run_of_a.run_id
    dave = as_user("dave")
    detail = dave.wait_for_gate(dag_id, run_id)
    assert sorted(u["id"] for u in detail["assigned_users"]) == ["alice", "bob"]
    hitl = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
    body = {"chosen_options": ["Approve"], "params_input": {"reason": "looks fine"}}
    approvers = [r for r in ROLES if r.may["approve"]]
    for role in ROLES:
        if not role.may["approve"]:
            assert status(as_user(role.user), "PATCH", hitl, json=body) == 403, role.who
    assert approvers, "the role table names nobody who may approve"
    answer = as_user(approvers[0].user).request("PATCH", hitl, json=body)
    assert answer["responded_by"]["name"] == approvers[0].user  # its id is FAB's row number
    assert dave.wait_for_task(dag_id, run_id, "promote_to_production", {"success", "failed"}, timeout=240) == "success"


def test_the_page_lists_only_the_models_the_viewer_may_read(fab_stack, fab_models, run_of_a) -> None:
    a, b = fab_models[1].a, fab_models[1].b

    def listed(user: str) -> set[str]:
        token = fab_stack.api_token(user)
        response = requests.get(
            f"{fab_stack.airflow_url}/promotion/api/models", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        assert response.status_code == 200, (user, response.text[:300])
        return {m["name"] for m in response.json()["models"]}

    assert listed("alice") == {a}
    assert listed("erin") == {b}
    assert listed("bob") == listed("admin") == {a, b}
    assert page_status(fab_stack, "mallory", "/promotion/api/models") == 403
    assert page_status(fab_stack, "mallory", f"/promotion/api/models/{b}") == 403
