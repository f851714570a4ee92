"""Lifecycle and rollback changes against a real MLflow server and a real PostgreSQL audit log."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from benchmarks.registry_workload import proxied_client
from include.promotion.audit import log as audit
from include.promotion.errors import (
    ApprovalRefused,
    InputRejected,
    NotAuthorized,
    RegistryStateError,
    RollbackTargetInvalid,
    UnknownModel,
)
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle, rollback
from include.promotion.registry.invariants import verify_invariant
from include.promotion.tasks import rollback as rollback_tasks
from tests.support import champion, change, promote, register, run_ref, snapshot, state, unique

pytestmark = pytest.mark.usefixtures("services")


def approve_and_promote(name: str, v: str, reviewer: str = "bob") -> None:
    approval = change(reviewer)
    lifecycle.record_approval(name, v, reviewer, "ok", approval)
    lifecycle.promote_to_production(name, v, approval)


def version(name: str, v: str):
    return mlflow_client.client().get_model_version(name, v)


def test_registering_twice_from_one_run_creates_one_version() -> None:
    name = unique("reg")
    from tests.support import new_run, tiny_model_uri

    trained = {"run_id": new_run(name), "model_uri": tiny_model_uri()}
    first = lifecycle.register_version(name, trained, {"data_version": "d1"}, "desc", c := change())
    again = lifecycle.register_version(name, trained, {"data_version": "d1"}, "desc", c)
    assert first == again == "1"
    assert len(mlflow_client.client().search_model_versions(f"name = '{name}'")) == 1
    assert [r["action"] for r in audit.rows(name)] == ["register"]
    mv = version(name, "1")
    assert mv.tags["data_version"] == "d1" and mv.tags["promotion_status"] == "registered"
    assert mv.description == "desc"


def test_staging_makes_the_challenger_with_tags_and_an_audit_row() -> None:
    name = unique("stage")
    v = register(name)
    lifecycle.promote_to_staging(name, v, change())
    mv = version(name, v)
    assert mv.current_stage == "Staging"
    assert mv.tags["promotion_status"] == "staging" and mv.tags["staging_timestamp"]
    assert mlflow_client.client().get_model_version_by_alias(name, "challenger").version == v
    assert [(r["action"], r["from_stage"], r["to_stage"]) for r in audit.rows(name)][-1] == ("stage", "None", "Staging")


def test_promotion_archives_the_previous_champion() -> None:
    name = unique("promo")
    v1 = promote(name)
    v2 = promote(name, approver="alice")
    assert champion(name) == v2
    new, old = version(name, v2), version(name, v1)
    assert (new.current_stage, old.current_stage) == ("Production", "Archived")
    assert new.tags["promoted_over"] == v1 and new.tags["production_approver"] == "alice"
    assert new.tags["promotion_status"] == "production" and old.tags["promotion_status"] == "archived"
    assert "challenger" not in mlflow_client.client().get_registered_model(name).aliases
    actions = [(r["version"], r["action"], r["actor"]) for r in audit.rows(name)]
    assert actions[-2:] == [(v2, "promote", "alice"), (v1, "archive", "alice")]
    assert verify_invariant(name) == v2


def test_a_version_that_stopped_being_the_challenger_is_not_promoted() -> None:
    name = unique("moved")
    promote(name)
    v2, v3 = register(name), register(name)
    lifecycle.promote_to_staging(name, v2, change())
    lifecycle.promote_to_staging(name, v3, change())  # v3 supersedes v2 while v2 "waits"
    assert version(name, v2).tags["rejection_reason"] == f"superseded by version {v3}"
    before = snapshot(name)
    with pytest.raises(RegistryStateError, match="no longer the challenger"):
        approve_and_promote(name, v2)
    assert snapshot(name) == before


def test_no_promotion_without_an_approval_recorded_by_the_same_run() -> None:
    name = unique("noapproval")
    promote(name)
    v2 = register(name)
    lifecycle.promote_to_staging(name, v2, change())
    lifecycle.record_approval(name, v2, "bob", "ok", change("bob"))
    before = snapshot(name)
    with pytest.raises(RegistryStateError, match="no approval recorded by this run"):
        lifecycle.promote_to_production(name, v2, change("bob"))  # another run's change id
    assert snapshot(name) == before


def stale_candidate(name: str) -> str:
    """Champion v2 over v1, and v3 staged as the challenger, evaluated against v2."""
    from tests.support import new_run, tiny_model_uri

    promote(name)
    promote(name)
    trained = {"run_id": new_run(name), "model_uri": tiny_model_uri()}
    v3 = lifecycle.register_version(name, trained, {"champion_at_evaluation": "2"}, "d", change())
    lifecycle.promote_to_staging(name, v3, change())
    return v3


def watch_now(name: str) -> list[str]:
    """What a run of the registry watch finds for the model (without repairing): the reasons of its differences."""
    from include.promotion.watch.reconcile import WATCH_ACTOR, watch_model

    report = watch_model(name, lifecycle.Change(WATCH_ACTOR, "model_registry_watch", run_ref().run_id), restore=False)
    return [drift.reason for drift in report.drifts]


def withdrawn(name: str, v: str, approval: lifecycle.Change, champion_now: str) -> None:
    """What a promotion refused because the champion moved must leave: the candidate taken back, one row saying why."""
    mv = version(name, v)
    why = f"the champion moved: evaluated against champion v2, but the champion is now v{champion_now}"
    assert (mv.tags["promotion_status"], mv.tags["rejection_reason"], mv.current_stage) == ("rejected", why, "None")
    assert "challenger" not in mlflow_client.client().get_registered_model(name).aliases
    rows = [(r["version"], r["action"], r["actor"], r["reason"], r["run_id"]) for r in audit.rows(name)]
    assert rows[-1] == (v, "supersede", approval.dag_id, why, approval.run_id)
    assert [r for r in rows if r[0] == v][-2:] == [(v, "approve", "bob", "ok", approval.run_id), rows[-1]]


def test_a_candidate_is_not_promoted_over_a_champion_it_was_not_compared_with() -> None:
    """The champion moved by an audited rollback meanwhile: refused, and the candidate's approval cannot be reused."""
    name = unique("stale")
    v3 = stale_candidate(name)
    rollback.rollback(rollback.plan_rollback(name, None), "on-call rolled back meanwhile", change("oncall"))
    approval = change("bob")
    lifecycle.record_approval(name, v3, "bob", "ok", approval)
    with pytest.raises(RegistryStateError, match="evaluated against champion v2, but the champion is now v1"):
        lifecycle.promote_to_production(name, v3, approval)
    assert champion(name) == "1" and verify_invariant(name) == "1"
    withdrawn(name, v3, approval, champion_now="1")
    assert watch_now(name) == []  # the audit log and the registry agree: no drift
    with pytest.raises(RegistryStateError, match="is no longer the challenger"):  # approving it again: refused
        lifecycle.record_approval(name, v3, "alice", "ok", change("alice"))


def test_a_champion_moved_behind_the_runs_back_withdraws_the_candidate_once(services) -> None:
    """The MLflow admin moves ``champion`` outside the pipeline while v3 waits, approved: the promotion is refused
    with the reason, v3 is no longer the challenger, one audit row says why, and a retry records nothing twice."""
    name = unique("moved")
    v3 = stale_candidate(name)
    approval = change("bob")
    lifecycle.record_approval(name, v3, "bob", "ok", approval)
    champion_moved_by_the_admin(services, name)

    message = r"v3 was not promoted: the champion moved: .* now v1\. It is no longer the challenger"
    with pytest.raises(RegistryStateError, match=message):
        lifecycle.promote_to_production(name, v3, approval)
    withdrawn(name, v3, approval, champion_now="1")
    after = snapshot(name)
    with pytest.raises(RegistryStateError, match=message):  # the task's retry: the same answer, nothing new
        lifecycle.promote_to_production(name, v3, approval)
    assert snapshot(name) == after
    # the watch reports the admin's move, and nothing about the candidate: its record and the registry agree
    assert watch_now(name) == ["alias 'champion' points at v1; the audit log records v2 as the production version"]


def champion_moved_by_the_admin(services, name: str, to: str = "1") -> None:
    """The MLflow admin points ``champion`` at ``to`` outside the pipeline."""
    from include.promotion.registry.accounts import acting_as

    with acting_as("admin", services.passwords()["admin"]):
        mlflow_client.client().set_registered_model_alias(name, "champion", to)


@pytest.fixture(scope="module")
def clean_withdrawal(services) -> dict:
    """What a withdrawal without a crash leaves (``state``: no names, no times), the reference of the crash cases."""
    clean = unique("wclean")
    v3 = stale_candidate(clean)
    champion_moved_by_the_admin(services, clean)
    approval = change("bob")
    lifecycle.record_approval(clean, v3, "bob", "ok", approval)
    with pytest.raises(RegistryStateError, match="the champion moved"):
        lifecycle.promote_to_production(clean, v3, approval)
    return state(clean)


@pytest.mark.parametrize("fail_at", range(1, 6))
def test_a_withdrawal_retried_after_a_crash_ends_like_a_clean_one(services, clean_withdrawal, fail_at: int) -> None:
    """A crash before any registry write of the withdrawal: the retry finishes it, and records nothing twice."""
    crashed = unique("wcrash")
    v3 = stale_candidate(crashed)
    champion_moved_by_the_admin(services, crashed)
    attempt = change("bob")
    lifecycle.record_approval(crashed, v3, "bob", "ok", attempt)
    # its five registry writes (three tags, the stage, the alias), after its audit row: a crash before each
    with proxied_client(crash_at(fail_at), WRITES), pytest.raises(ConnectionError, match="injected crash"):
        lifecycle.promote_to_production(crashed, v3, attempt)
    with pytest.raises(RegistryStateError, match="the champion moved"):
        lifecycle.promote_to_production(crashed, v3, attempt)  # the task's retry: same change id

    assert state(crashed) == clean_withdrawal
    withdrawn(crashed, v3, attempt, champion_now="1")


def test_rejection_clears_the_challenger_and_keeps_the_champion() -> None:
    name = unique("reject")
    v1 = promote(name)
    v2 = register(name)
    lifecycle.promote_to_staging(name, v2, change())
    lifecycle.reject(name, v2, "bob", "recall too low on weekends", change("bob"))
    mv = version(name, v2)
    assert mv.current_stage == "None"
    assert mv.tags["promotion_status"] == "rejected" and mv.tags["rejection_reason"] == "recall too low on weekends"
    assert mv.tags["rejected_by"] == "bob"
    assert "challenger" not in mlflow_client.client().get_registered_model(name).aliases
    assert champion(name) == v1 and verify_invariant(name) == v1
    assert audit.rows(name)[-1]["action"] == "reject"


WRITES = {
    "transition_model_version_stage",
    "set_registered_model_alias",
    "delete_registered_model_alias",
    "set_model_version_tag",
}


def crash_at(n: int):
    """A hook that raises before the n-th registry write, as a crash between two writes would."""
    left = [n]

    def before(method: str, args: tuple) -> None:
        left[0] -= 1
        if left[0] == 0:
            raise ConnectionError(f"injected crash before {method}{args[:3]}")

    return before


def _promote_two(name: str) -> tuple[str, str]:
    v1 = promote(name)
    v2 = register(name)
    lifecycle.promote_to_staging(name, v2, change())
    return v1, v2


@pytest.fixture(scope="module")
def clean_promotion() -> dict:
    """What a promotion over a champion leaves without a crash (``state``), the reference of the crash cases."""
    clean = unique("clean")
    _promote_two(clean)
    approve_and_promote(clean, "2")
    return state(clean)


@pytest.mark.parametrize("fail_at", range(1, 10))
def test_a_promotion_retried_after_a_crash_ends_like_a_clean_one(clean_promotion: dict, fail_at: int) -> None:
    crashed = unique("crash")
    _promote_two(crashed)

    attempt = change("bob")
    lifecycle.record_approval(crashed, "2", "bob", "ok", attempt)
    with proxied_client(crash_at(fail_at), WRITES):
        try:
            lifecycle.promote_to_production(crashed, "2", attempt)
            crashed_midway = False
        except ConnectionError:
            crashed_midway = True
    lifecycle.promote_to_production(crashed, "2", attempt)  # the task's retry: same change id

    assert crashed_midway or fail_at > 8
    assert state(crashed) == clean_promotion
    assert verify_invariant(crashed) == "2"


def test_rollback_restores_the_previous_champion_and_goes_further_back_on_repeat() -> None:
    name = unique("rollback")
    v1, v2, v3 = promote(name), promote(name), promote(name)
    rollback.rollback(rollback.plan_rollback(name, None), "v3 misfires", change("oncall"))
    assert champion(name) == v2
    bad = version(name, v3)
    assert bad.tags["promotion_status"] == "rolled_back" and bad.tags["rollback_reason"] == "v3 misfires"
    assert bad.tags["rolled_back_by"] == "oncall" and bad.current_stage == "Archived"
    assert version(name, v2).current_stage == "Production"
    rollback.rollback(rollback.plan_rollback(name, None), "v2 too", change("oncall"))
    assert champion(name) == v1 and verify_invariant(name) == v1
    rows = [(r["version"], r["action"], r["actor"], r["reason"]) for r in audit.rows(name)][-8:]
    assert rows == [
        (v2, "intent", "oncall", f"roll back v{v3} to v{v2}"),  # announced before the registry writes
        (v3, "intent", "oncall", f"roll back v{v3} to v{v2}"),
        (v2, "rollback_restore", "oncall", "v3 misfires"),
        (v3, "rollback_demote", "oncall", "v3 misfires"),
        (v1, "intent", "oncall", f"roll back v{v2} to v{v1}"),
        (v2, "intent", "oncall", f"roll back v{v2} to v{v1}"),
        (v1, "rollback_restore", "oncall", "v2 too"),
        (v2, "rollback_demote", "oncall", "v2 too"),
    ]


def test_rollback_to_an_explicit_version() -> None:
    name = unique("explicit")
    v1, _, v3 = promote(name), promote(name), promote(name)
    plan = rollback.plan_rollback(name, v1)
    assert (plan.current_version, plan.target_version) == (v3, v1)
    rollback.rollback(plan, "back to the known good one", change("oncall"))
    assert champion(name) == v1 and verify_invariant(name) == v1


def _rejected(name: str) -> str:
    promote(name)
    promote(name)
    v = register(name)
    lifecycle.promote_to_staging(name, v, change())
    lifecycle.reject(name, v, "bob", "no", change("bob"))
    return v


@pytest.mark.parametrize(
    ("setup", "target", "message"),
    [
        (lambda n: register(n), None, "has no champion"),
        (lambda n: promote(n), None, "nothing to roll back to; pass target_version"),
        (lambda n: [promote(n), promote(n)], "9", "has no version 9"),
        (lambda n: [promote(n), promote(n)], "2", "already the champion"),
        (lambda n: [promote(n), promote(n), register(n)], "3", "was never in production"),
        (_rejected, "3", "was rejected by a reviewer"),
    ],
)
def test_refused_rollbacks_change_nothing(setup, target, message: str) -> None:
    name = unique("refuse")
    setup(name)
    before = snapshot(name)
    with pytest.raises(RollbackTargetInvalid, match=message):
        rollback.rollback(rollback.plan_rollback(name, target), "reason", change("oncall"))
    assert snapshot(name) == before


def test_a_promotion_and_a_rollback_racing_end_with_one_champion() -> None:
    name = unique("race")
    promote(name)
    promote(name)
    v3 = register(name)
    lifecycle.promote_to_staging(name, v3, change())
    approval = change("bob")
    lifecycle.record_approval(name, v3, "bob", "ok", approval)
    plan = rollback.plan_rollback(name, None)
    errors: list[Exception] = []

    def run(fn) -> None:
        try:
            fn()
        except Exception as exc:  # one of the two may be refused; the invariant must hold either way
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(lambda: lifecycle.promote_to_production(name, v3, approval),)),
        threading.Thread(target=run, args=(lambda: rollback.rollback(plan, "race", change("oncall")),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(e, RollbackTargetInvalid) for e in errors), errors
    winner = verify_invariant(name)
    assert winner in {"1", v3}
    in_production = [
        mv.version
        for mv in mlflow_client.client().search_model_versions(f"name = '{name}'")
        if mv.current_stage == "Production"
    ]
    assert in_production == [winner]


def test_a_stuck_lock_holder_makes_a_change_refuse_instead_of_hang() -> None:
    name = unique("locked")
    v = register(name)
    holder = audit.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (audit.lock_key(name),))
        before = snapshot(name)
        with pytest.raises(RegistryStateError, match="has held its lock"), audit.model_lock(name, "x", timeout=1):
            pass
        assert snapshot(name) == before
    finally:
        holder.close()
    with audit.model_lock(name, "y", timeout=1):  # released when the holder's session ended
        pass
    assert v == "1"


def test_the_workers_role_cannot_update_delete_or_truncate_the_audit_log() -> None:
    name = unique("append")
    register(name)
    conn = audit.connect()
    try:
        for statement in (
            f"UPDATE {audit.AUDIT_TABLE} SET reason = 'x' WHERE model_name = %s",
            f"DELETE FROM {audit.AUDIT_TABLE} WHERE model_name = %s",
            f"TRUNCATE {audit.AUDIT_TABLE}",
        ):
            with pytest.raises(Exception, match="permission denied"), conn.cursor() as cur:
                cur.execute(statement, (name,) if "%s" in statement else None)
    finally:
        conn.close()
    assert len(audit.rows(name)) == 1


@pytest.fixture(scope="module")
def two_champions() -> str:
    """A model whose v2 replaced v1 in production: what the refused rollbacks below must leave as it is."""
    name = unique("limits")
    promote(name)
    promote(name)
    return name


@pytest.mark.parametrize("target", ["two", "0", "-1", str(2**31), str(10**30), 2**63, "1\x00"])
def test_a_target_version_outside_its_limits_is_refused_before_any_call(two_champions: str, target) -> None:
    name = two_champions
    before = snapshot(name)
    with pytest.raises(InputRejected, match="must be a version number between 1 and 2147483647"):
        rollback.plan_rollback(name, target)
    assert snapshot(name) == before


@pytest.mark.parametrize(
    ("params", "user", "error", "message"),
    [
        ({"model_name": "no-such-model", "reason": "x"}, "carol", UnknownModel, "unknown model 'no-such-model'"),
        ({"model_name": "fraud-detector", "reason": "  "}, "carol", InputRejected, "reason is required"),
        ({"model_name": "fraud-detector", "reason": "x" * 2001}, "carol", InputRejected, "2001 characters long"),
        ({"model_name": "fraud-detector", "reason": "bad\x00model"}, "carol", InputRejected, "NUL character"),
        ({"model_name": "fraud-detector", "reason": "x"}, "mallory", NotAuthorized, "'mallory' may not roll back"),
        ({"model_name": "fraud-detector", "reason": "x"}, None, NotAuthorized, "nobody triggered"),
    ],
)
def test_the_rollback_form_refuses_bad_requests_and_strangers(params, user, error, message: str) -> None:
    before = snapshot(params["model_name"])
    with pytest.raises(error, match=message):
        rollback_tasks.validate_rollback({"target_version": None, **params}, run_ref(user))
    assert snapshot(params["model_name"]) == before


def test_a_version_rolled_back_as_bad_is_restored_only_when_asked_and_on_record() -> None:
    name = unique("rollforward")
    promote(name)
    v2 = promote(name)
    rollback.rollback(rollback.plan_rollback(name, None), "v2 is bad", change("oncall"))
    before = snapshot(name)
    with pytest.raises(RollbackTargetInvalid, match="rolled back earlier as bad"):
        rollback.plan_rollback(name, v2)
    assert snapshot(name) == before
    rollback.rollback(rollback.plan_rollback(name, v2, allow_rolled_back=True), "fixed upstream", change("oncall"))
    assert champion(name) == v2 and verify_invariant(name) == v2
    last = audit.rows(name)[-2]
    assert (last["version"], last["action"]) == (v2, "rollback_restore")
    assert last["reason"] == f"fixed upstream ({rollback.RESTORES_ROLLED_BACK})"


def test_promotion_refuses_an_approval_by_the_runs_triggerer() -> None:
    name = unique("foureyes")
    v = register(name)
    lifecycle.promote_to_staging(name, v, change())
    approval = change("alice")
    lifecycle.record_approval(name, v, "alice", "mine", approval)
    before = snapshot(name)

    def four_eyes(approver: str) -> None:
        from include.promotion.approval.review import check_responder

        check_responder(approver, ["alice", "bob"], "alice")

    with pytest.raises(ApprovalRefused, match="triggered this run"):
        lifecycle.promote_to_production(name, v, approval, four_eyes)
    assert snapshot(name) == before


def test_registry_writes_still_refuse_a_prompt_and_ask_once_per_model() -> None:
    import mlflow
    from mlflow.entities.model_registry import RegisteredModel, RegisteredModelTag
    from mlflow.exceptions import MlflowException
    from mlflow.prompt.constants import IS_PROMPT_TAG_KEY

    client = mlflow_client.client()
    prompt = unique("prompt")
    mlflow.genai.register_prompt(name=prompt, template="Is {{transaction}} fraud?")  # a registry entry, not a model
    with pytest.raises(MlflowException, match="not found"):
        client.set_registered_model_alias(prompt, "champion", "1")
    with pytest.raises(MlflowException, match="not found"):
        client.set_model_version_tag(prompt, "1", "promotion_status", "production")
    # a prompt listed by a search (a file store lists one whose name holds the prompt tag's key) stays a prompt
    client.remember(RegisteredModel(prompt, tags=[RegisteredModelTag(IS_PROMPT_TAG_KEY, "true")]))
    with pytest.raises(MlflowException, match="not found"):
        client.set_registered_model_alias(prompt, "champion", "1")

    name = unique("asked")
    v = register(name)

    def counting_client() -> tuple[Any, list[str]]:
        client, asked = mlflow_client.client(), []
        for method in ("get_registered_model", "search_registered_models"):
            real = getattr(client, method)
            setattr(client, method, lambda *a, _real=real, _name=method, **k: asked.append(_name) or _real(*a, **k))
        return client, asked

    client, asked = counting_client()
    mlflow_client.set_tags(client, name, v, {"a": "1", "b": "2"})
    client.set_registered_model_alias(name, "bench", v)
    assert asked == ["search_registered_models"]  # one cheap question for three writes (MLflow asked three times)
    # a model the client has just read by name (the audit anchor's read, then its write) is not asked about again
    client, asked = counting_client()
    assert mlflow_client.find_registered_model(client, name).name == name
    client.set_registered_model_tag(name, "c", "3")
    assert asked == ["search_registered_models"]
    written = mlflow_client.client().get_model_version(name, v)
    assert (written.tags["a"], written.tags["b"], written.aliases) == ("1", "2", ["bench"])
    assert mlflow_client.client().get_registered_model(name).tags["c"] == "3"
