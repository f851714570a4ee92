"""Per-model access (include/promotion/access.py): the roles and access_control the FAB auth manager gets from the
model files, and the config key ``team`` validated like the others. The real stack: tests/e2e/test_fab_access.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from include.promotion.access import (
    MEMBER_ROLE,
    ON_CALL_ROLE,
    TEAM_PERMISSIONS,
    model_role,
    promotion_access_control,
    rollback_access_control,
    team_roles,
)
from include.promotion.config import parse_model_config
from include.promotion.errors import ModelConfigError
from include.promotion.fab_accounts import fab_role_of

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


def config(tmp_path: Path, **changes: object):
    data = yaml.safe_load(DEMO.read_text())
    data.update(changes)
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_model_config(path)


def test_a_models_team_is_its_team_reviewers_on_call_and_owner(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        owner="olga",
        team=["dave", "alice"],
        approval={"reviewers": ["alice", "bob"]},
        rollback={"on_call": ["carol"]},
    )
    assert cfg.team_members == ["alice", "bob", "carol", "dave", "olga"]
    other = config(tmp_path, name="other", approval={"reviewers": ["erin"]}, rollback={})
    assert other.team == [] and other.team_members == ["erin", "ml-platform"]  # on-call defaults to the reviewers
    assert team_roles([cfg, other]) == {
        model_role(cfg.name): ["alice", "bob", "carol", "dave", "olga"],
        model_role("other"): ["erin", "ml-platform"],
        ON_CALL_ROLE: ["carol", "erin"],
    }


def test_the_dags_grant_their_role_read_and_run_and_nothing_on_every_dag(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert promotion_access_control(cfg) == {
        "model:fraud-detector": {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}
    }
    assert rollback_access_control() == {ON_CALL_ROLE: {k: set(v) for k, v in TEAM_PERMISSIONS.items()}}
    assert "can_delete" not in set().union(*TEAM_PERMISSIONS.values())


def test_a_long_model_name_still_gets_its_own_role_within_fabs_64_characters() -> None:
    first, second = "m" * 90 + "-a", "m" * 90 + "-b"
    assert len(model_role(first)) == len(model_role(second)) == 64
    assert model_role(first) != model_role(second) and model_role(first).startswith("model:mmm")
    assert model_role("fraud-detector") == "model:fraud-detector"


@pytest.mark.parametrize(
    ("team", "expected"),
    [
        (["dave", "dave"], "field 'team': Value error, user names must be distinct"),
        (["dave", " "], "field 'team': Value error, user names must be non-empty Airflow user names"),
        ("dave", "field 'team': Input should be a valid list"),
    ],
)
def test_a_bad_team_names_the_field_and_the_fix(tmp_path: Path, team: object, expected: str) -> None:
    with pytest.raises(ModelConfigError) as err:
        config(tmp_path, team=team)
    assert expected in str(err.value)


def test_a_misspelt_team_key_suggests_team(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError) as err:
        config(tmp_path, teams=["dave"])
    assert "unknown field 'teams'; did you mean 'team'?" in str(err.value)


def test_people_get_the_member_role_and_programs_their_own() -> None:
    assert fab_role_of("user") == fab_role_of("") == MEMBER_ROLE
    assert (fab_role_of("admin"), fab_role_of("op"), fab_role_of("viewer")) == ("Admin", "Op", "Promotion reader")
    with pytest.raises(ValueError, match="role 'superuser': use one of"):
        fab_role_of("superuser")


def test_the_gate_knows_a_reviewer_by_user_name_under_fab_whose_id_is_a_row_number() -> None:
    from include.promotion.approval.review import answer_of

    fab = {"responded_by_user": {"id": "7", "name": "alice"}, "chosen_options": ["Approve"], "params_input": {}}
    assert answer_of(fab, "Approve", 72)[:2] == ("alice", True)
    simple = {"responded_by_user": {"id": "bob", "name": "bob"}, "chosen_options": ["Reject"], "params_input": {}}
    assert answer_of(simple, "Approve", 72)[:2] == ("bob", False)
    assert answer_of({"responded_by_user": None}, "Approve", 72)[:2] == (None, False)  # a timeout
