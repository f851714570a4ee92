"""Registry changes against a real MLflow server and a real PostgreSQL audit log."""

from __future__ import annotations

import threading

import pytest

from include.promotion import audit, registry, tracking
from include.promotion.errors import RegistryStateError, RollbackTargetInvalid, UnknownModel
from tests.support import champion, change, promote, register, snapshot, state, unique

pytestmark = pytest.mark.usefixtures("services")


def approve_and_promote(name: str, v: str, reviewer: str = "bob") -> None:
    approval = change(reviewer)
    registry.record_approval(name, v, reviewer, "ok", approval)
    registry.promote_to_production(name, v, approval)


def version(name: str, v: str):
    return tracking.client().get_model_version(name, v)


def test_registering_twice_from_one_run_creates_one_version() -> None:
    name = unique("reg")
    from tests.support import new_run, tiny_model_uri

    trained = {"run_id": new_run(name), "model_uri": tiny_model_uri()}
    first = registry.register_version(name, trained, {"data_version": "d1"}, "desc", c := change())
    again = registry.register_version(name, trained, {"data_version": "d1"}, "desc", c)
    assert first == again == "1"
    assert len(tracking.client().search_model_versions(f"name = '{name}'")) == 1
    assert [r["action"] for r in audit.rows(name)] == ["register"]
    mv = version(name, "1")
    assert mv.tags["data_version"] == "d1" and mv.tags["promotion_status"] == "registered"
    assert mv.description == "desc"


def test_staging_makes_the_challenger_with_tags_and_an_audit_row() -> None:
    name = unique("stage")
    v = register(name)
    registry.promote_to_staging(name, v, change())
    mv = version(name, v)
    assert mv.current_stage == "Staging"
    assert mv.tags["promotion_status"] == "staging" and mv.tags["staging_timestamp"]
    assert tracking.client().get_model_version_by_alias(name, "challenger").version == v
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
    assert "challenger" not in tracking.client().get_registered_model(name).aliases
    actions = [(r["version"], r["action"], r["actor"]) for r in audit.rows(name)]
    assert actions[-2:] == [(v2, "promote", "alice"), (v1, "archive", "alice")]
    assert registry.verify_invariant(name) == v2


def test_a_version_that_stopped_being_the_challenger_is_not_promoted() -> None:
    name = unique("moved")
    promote(name)
    v2, v3 = register(name), register(name)
    registry.promote_to_staging(name, v2, change())
    registry.promote_to_staging(name, v3, change())  # v3 supersedes v2 while v2 "waits"
    assert version(name, v2).tags["rejection_reason"] == f"superseded by version {v3}"
    before = snapshot(name)
    with pytest.raises(RegistryStateError, match="no longer the challenger"):
        approve_and_promote(name, v2)
    assert snapshot(name) == before


def test_no_promotion_without_an_approval_recorded_by_the_same_run() -> None:
    name = unique("noapproval")
    promote(name)
    v2 = register(name)
    registry.promote_to_staging(name, v2, change())
    registry.record_approval(name, v2, "bob", "ok", change("bob"))
    before = snapshot(name)
    with pytest.raises(RegistryStateError, match="no approval recorded by this run"):
        registry.promote_to_production(name, v2, change("bob"))  # another run's change id
    assert snapshot(name) == before


def test_a_candidate_is_not_promoted_over_a_champion_it_was_not_compared_with() -> None:
    from tests.support import new_run, tiny_model_uri

    name = unique("stale")
    promote(name)
    promote(name)
    trained = {"run_id": new_run(name), "model_uri": tiny_model_uri()}
    v3 = registry.register_version(name, trained, {"champion_at_evaluation": "2"}, "d", change())
    registry.promote_to_staging(name, v3, change())
    registry.rollback(registry.plan_rollback(name, None), "on-call rolled back meanwhile", change("oncall"))
    approval = change("bob")
    registry.record_approval(name, v3, "bob", "ok", approval)
    before = snapshot(name)
    with pytest.raises(RegistryStateError, match="evaluated against champion 2, but the champion is now 1"):
        registry.promote_to_production(name, v3, approval)
    assert snapshot(name) == before


def test_rejection_clears_the_challenger_and_keeps_the_champion() -> None:
    name = unique("reject")
    v1 = promote(name)
    v2 = register(name)
    registry.promote_to_staging(name, v2, change())
    registry.reject(name, v2, "bob", "recall too low on weekends", change("bob"))
    mv = version(name, v2)
    assert mv.current_stage == "None"
    assert mv.tags["promotion_status"] == "rejected" and mv.tags["rejection_reason"] == "recall too low on weekends"
    assert mv.tags["rejected_by"] == "bob"
    assert "challenger" not in tracking.client().get_registered_model(name).aliases
    assert champion(name) == v1 and registry.verify_invariant(name) == v1
    assert audit.rows(name)[-1]["action"] == "reject"


class FailingClient:
    """A real MlflowClient whose n-th registry write raises, as a crash between two writes would."""

    WRITES = {
        "transition_model_version_stage",
        "set_registered_model_alias",
        "delete_registered_model_alias",
        "set_model_version_tag",
    }

    def __init__(self, real, fail_at: int):
        self._real, self._left = real, fail_at

    def __getattr__(self, attr):
        target = getattr(self._real, attr)
        if attr not in self.WRITES:
            return target

        def write(*args, **kwargs):
            self._left -= 1
            if self._left == 0:
                raise ConnectionError(f"injected crash before {attr}{args[:3]}")
            return target(*args, **kwargs)

        return write


def _promote_two(name: str) -> tuple[str, str]:
    v1 = promote(name)
    v2 = register(name)
    registry.promote_to_staging(name, v2, change())
    return v1, v2


@pytest.mark.parametrize("fail_at", range(1, 10))
def test_a_promotion_retried_after_a_crash_ends_like_a_clean_one(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    clean, crashed = unique("clean"), unique("crash")
    for name in (clean, crashed):
        _promote_two(name)
    approve_and_promote(clean, "2")

    attempt = change("bob")
    registry.record_approval(crashed, "2", "bob", "ok", attempt)
    real_client = tracking.client
    monkeypatch.setattr(registry.tracking, "client", lambda: FailingClient(real_client(), fail_at))
    try:
        registry.promote_to_production(crashed, "2", attempt)
        crashed_midway = False
    except ConnectionError:
        crashed_midway = True
    monkeypatch.setattr(registry.tracking, "client", real_client)
    registry.promote_to_production(crashed, "2", attempt)  # the task's retry: same change id

    assert crashed_midway or fail_at > 8
    assert state(crashed) == state(clean)
    assert registry.verify_invariant(crashed) == "2"


def test_rollback_restores_the_previous_champion_and_goes_further_back_on_repeat() -> None:
    name = unique("rollback")
    v1, v2, v3 = promote(name), promote(name), promote(name)
    registry.rollback(registry.plan_rollback(name, None), "v3 misfires", change("oncall"))
    assert champion(name) == v2
    bad = version(name, v3)
    assert bad.tags["promotion_status"] == "rolled_back" and bad.tags["rollback_reason"] == "v3 misfires"
    assert bad.tags["rolled_back_by"] == "oncall" and bad.current_stage == "Archived"
    assert version(name, v2).current_stage == "Production"
    registry.rollback(registry.plan_rollback(name, None), "v2 too", change("oncall"))
    assert champion(name) == v1 and registry.verify_invariant(name) == v1
    rows = [(r["version"], r["action"], r["actor"], r["reason"]) for r in audit.rows(name)][-4:]
    assert rows == [
        (v2, "rollback_restore", "oncall", "v3 misfires"),
        (v3, "rollback_demote", "oncall", "v3 misfires"),
        (v1, "rollback_restore", "oncall", "v2 too"),
        (v2, "rollback_demote", "oncall", "v2 too"),
    ]


def test_rollback_to_an_explicit_version() -> None:
    name = unique("explicit")
    v1, _, v3 = promote(name), promote(name), promote(name)
    plan = registry.plan_rollback(name, v1)
    assert (plan.current_version, plan.target_version) == (v3, v1)
    registry.rollback(plan, "back to the known good one", change("oncall"))
    assert champion(name) == v1 and registry.verify_invariant(name) == v1


def _rejected(name: str) -> str:
    promote(name)
    promote(name)
    v = register(name)
    registry.promote_to_staging(name, v, change())
    registry.reject(name, v, "bob", "no", change("bob"))
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
        (lambda n: [promote(n), promote(n)], "two", "must be a version number"),
    ],
)
def test_refused_rollbacks_change_nothing(setup, target, message: str) -> None:
    name = unique("refuse")
    setup(name)
    before = snapshot(name)
    with pytest.raises(RollbackTargetInvalid, match=message):
        registry.rollback(registry.plan_rollback(name, target), "reason", change("oncall"))
    assert snapshot(name) == before


def test_a_promotion_and_a_rollback_racing_end_with_one_champion() -> None:
    name = unique("race")
    promote(name)
    promote(name)
    v3 = register(name)
    registry.promote_to_staging(name, v3, change())
    approval = change("bob")
    registry.record_approval(name, v3, "bob", "ok", approval)
    plan = registry.plan_rollback(name, None)
    errors: list[Exception] = []

    def run(fn) -> None:
        try:
            fn()
        except Exception as exc:  # one of the two may be refused; the invariant must hold either way
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(lambda: registry.promote_to_production(name, v3, approval),)),
        threading.Thread(target=run, args=(lambda: registry.rollback(plan, "race", change("oncall")),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(e, RollbackTargetInvalid) for e in errors), errors
    winner = registry.verify_invariant(name)
    assert winner in {"1", v3}
    in_production = [
        mv.version
        for mv in tracking.client().search_model_versions(f"name = '{name}'")
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


def test_the_audit_log_refuses_updates_and_deletes() -> None:
    name = unique("append")
    register(name)
    conn = audit.connect()
    try:
        for statement in (
            f"UPDATE {audit.AUDIT_TABLE} SET reason = 'x' WHERE model_name = %s",
            f"DELETE FROM {audit.AUDIT_TABLE} WHERE model_name = %s",
            f"TRUNCATE {audit.AUDIT_TABLE}",
        ):
            with pytest.raises(Exception, match="append-only"), conn.cursor() as cur:
                cur.execute(statement, (name,) if "%s" in statement else None)
    finally:
        conn.close()
    assert len(audit.rows(name)) == 1


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"model_name": "no-such-model", "reason": "x"}, UnknownModel, "unknown model 'no-such-model'"),
        ({"model_name": "fraud-detector", "reason": "  "}, RollbackTargetInvalid, "reason is required"),
    ],
)
def test_the_rollback_form_refuses_an_unknown_model_or_an_empty_reason(params, error, message: str) -> None:
    from include.promotion import rollback

    before = snapshot(params["model_name"])
    with pytest.raises(error, match=message):
        rollback.validate({"target_version": None, **params})
    assert snapshot(params["model_name"]) == before
