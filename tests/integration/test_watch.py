"""The registry watch against a real MLflow server and a real PostgreSQL audit log.

Each kind of drift is made the way it happens in life: a registry write outside the pipeline (the MLflow
admin, or a script holding the service account's password), or an audit row edited through a privileged
database role. The watch is called as its task calls it, once per Airflow run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest

from benchmarks.registry_workload import proxied_client
from include.promotion.audit import log as audit
from include.promotion.audit import queries
from include.promotion.audit.schema import AUDIT_TABLE, connect
from include.promotion.config import load_model_configs
from include.promotion.errors import (
    InputRejected,
    NotAuthorized,
    RegistryDrift,
    RegistryStateError,
    RollbackTargetInvalid,
    UnknownModel,
)
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle, rollback
from include.promotion.registry.accounts import acting_as
from include.promotion.registry.invariants import verify_invariant
from include.promotion.registry.lifecycle import Change
from include.promotion.states import AuditAction
from include.promotion.tasks.watch import CONFIG_MARKER, watch_registry
from include.promotion.watch import coverage
from include.promotion.watch.reconcile import NO_LONGER_FOUND, WATCH_ACTOR, WatchReport, watch_model
from tests.integration.test_lifecycle import WRITES, crash_at
from tests.support import (
    champion,
    change,
    fast_model,
    promote,
    register,
    run_ref,
    snapshot,
    state,
    tiny_model_uri,
    unique,
)

pytestmark = pytest.mark.usefixtures("services")


def watch_run(name: str, restore: bool = False) -> WatchReport:
    """One run of the watch DAG for ``name`` (each run has its own run id)."""
    run = Change(WATCH_ACTOR, "model_registry_watch", f"manual__{uuid.uuid4().hex[:8]}")
    return watch_model(name, run, restore)


def rows_of(name: str, action: str) -> list[dict]:
    return [r for r in audit.rows(name) if r["action"] == action]


@pytest.fixture
def as_admin(services) -> Callable[[], object]:
    """The MLflow admin's client: someone with every right, outside the pipeline."""

    def enter():
        return acting_as("admin", services.passwords()["admin"])

    return enter


def stage(client, name: str, version: str, to: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, version, to, archive_existing_versions=False)


# Each kind of drift: how it is made, and what the watch must say about it.
DRIFTS: dict[str, tuple[Callable[..., None], str]] = {
    "alias moved": (
        lambda c, n, v1, v2: c.set_registered_model_alias(n, "champion", v1),
        "alias 'champion' points at v{v1}; the audit log records v{v2} as the production version",
    ),
    "alias deleted": (
        lambda c, n, v1, v2: c.delete_registered_model_alias(n, "champion"),
        "alias 'champion' was deleted; the audit log records v{v2} as the production version",
    ),
    "status retagged": (
        lambda c, n, v1, v2: c.set_model_version_tag(n, v2, "promotion_status", "archived"),
        "v{v2} promotion_status is 'archived'; the audit log records 'production'",
    ),
    "second production stage": (
        lambda c, n, v1, v2: stage(c, n, v1, "Production"),
        "v{v1} is in stage Production; the audit log records v{v2} as champion",
    ),
    "champion version deleted": (
        lambda c, n, v1, v2: c.delete_model_version(n, v2),
        "v{v2} was deleted from the registry",
    ),
}


@pytest.mark.parametrize("kind", list(DRIFTS))
def test_each_drift_is_detected_recorded_once_and_repaired_on_request(kind: str, as_admin) -> None:
    name = unique("drift")
    v1, v2 = promote(name), promote(name)
    assert watch_run(name).drifts == []  # a governed model as the pipeline left it: nothing to say
    before = len(audit.rows(name))

    make, expected = DRIFTS[kind]
    with as_admin():
        make(mlflow_client.client(), name, v1, v2)

    first = watch_run(name)
    reasons = [d.reason for d in first.recorded]
    assert expected.format(v1=v1, v2=v2) in reasons
    assert first.failed
    recorded = rows_of(name, "drift_detected")
    assert {r["reason"] for r in recorded} == set(reasons) and {r["actor"] for r in recorded} == {WATCH_ACTOR}

    second = watch_run(name)
    assert second.recorded == [] and second.failed  # still red, but not recorded (or alerted) twice
    assert rows_of(name, "drift_detected") == recorded

    repaired = watch_run(name, restore=True)
    if kind == "champion version deleted":
        # nothing can bring a deleted version back: the watch says so, and which rollback to run
        assert repaired.failed and any(f"target_version={v1}" in d.advice for d in repaired.drifts)
        plan = rollback.plan_rollback(name, None)
        assert (plan.current_version, plan.target_version, plan.current_deleted) == (v2, v1, True)
        rollback.rollback(plan, "champion deleted by hand", change("alice"))
        assert champion(name) == v1 and verify_invariant(name) == v1
        after = watch_run(name)
        assert not after.failed and after.recorded == []  # the deleted version is history now, on record
        return
    assert not [d for d in repaired.drifts if d.serving] and {d.reason for d in repaired.restored} >= {
        expected.format(v1=v1, v2=v2)
    }
    assert champion(name) == v2 and verify_invariant(name) == v2
    restored = rows_of(name, "drift_restore")
    assert {r["reason"] for r in restored} == set(reasons) and {r["actor"] for r in restored} == {WATCH_ACTOR}
    clean = watch_run(name, restore=True)
    assert clean.drifts == [] and not clean.failed and len(audit.rows(name)) == before + len(recorded) + len(restored)


def test_a_stray_challenger_and_an_unaudited_version_are_reported(as_admin) -> None:
    name = unique("stray")
    v1 = promote(name)
    with as_admin():
        client = mlflow_client.client()
        source = client.get_model_version(name, v1).source
        planted = client.create_model_version(name, source=source, model_id=source.removeprefix("models:/")).version
        client.set_registered_model_alias(name, "challenger", planted)
    report = watch_run(name, restore=True)
    reasons = {d.reason for d in report.recorded}
    assert f"alias 'challenger' points at v{planted}; the audit log records no version awaiting approval" in reasons
    assert f"v{planted} was created outside the pipeline (status 'registered')" in reasons
    # the alias is taken away; a version nobody audited is left where it is (never deleted), and reported once
    assert "challenger" not in mlflow_client.client().get_registered_model(name).aliases
    assert [d.reason for d in report.drifts] == [f"v{planted} was created outside the pipeline (status 'registered')"]
    again = watch_run(name, restore=True)
    assert not again.failed and again.recorded == []


def test_a_difference_put_back_by_hand_is_on_record_and_a_new_one_is_recorded_again(as_admin) -> None:
    name = unique("back")
    v1, v2 = promote(name), promote(name)
    with as_admin():
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)
    assert watch_run(name).recorded
    with as_admin():
        mlflow_client.client().set_registered_model_alias(name, "champion", v2)
    fixed = watch_run(name)
    assert not fixed.failed and [d.version for d in fixed.resolved] == [v1]
    assert [r["actor"] for r in rows_of(name, "drift_restore")] == [NO_LONGER_FOUND]
    with as_admin():
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)
    assert watch_run(name).recorded  # a new incident
    assert len(rows_of(name, "drift_detected")) == 2


def test_a_move_made_again_right_after_the_watch_restored_the_last_one_is_a_new_incident(as_admin) -> None:
    """Issue 23's lost wake-up: the champion moved out of band again between the watch's repair and its re-read.

    The run found the move still there and left it "on record", so the run its webhook woke recorded no
    ``drift_detected`` for the second move. The second move is made here inside the run, right before the re-read.
    """
    name = unique("again")
    v1, v2 = promote(name), promote(name)
    moved_again = "alias 'champion' points at v{v1}; the audit log records v{v2} as the production version"
    moved_again = moved_again.format(v1=v1, v2=v2)
    with as_admin():
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)
    real_client = mlflow_client.client
    restored: list[tuple] = []

    def move_again_after_the_repair(method: str, args: tuple) -> None:
        if method == "set_registered_model_alias":
            restored.append(args)  # the repair puts the champion back ...
        elif restored and len(restored) == 1 and method == "search_registered_models":
            restored.append(("moved again",))  # ... and before the watch reads the registry again, it moves
            with as_admin():
                real_client().set_registered_model_alias(name, "champion", v1)

    with proxied_client(move_again_after_the_repair, {"set_registered_model_alias", "search_registered_models"}):
        report = watch_run(name, restore=True)
    assert ("moved again",) in restored  # the move really came between the repair and the re-read
    assert [d.reason for d in report.recorded] == [moved_again, moved_again] and report.failed
    detected, restored_rows = rows_of(name, "drift_detected"), rows_of(name, "drift_restore")
    assert [r["reason"] for r in detected] == [moved_again] * 2 and len(restored_rows) == 2
    assert champion(name) == v2 and verify_invariant(name) == v2  # the second move is put back too
    rows_before = len(audit.rows(name))
    after = watch_run(name, restore=True)  # the run the second move's webhook wakes: nothing left, nothing twice
    assert after.drifts == [] and after.recorded == [] and after.restored == []
    assert len(audit.rows(name)) == rows_before


@pytest.mark.parametrize("config", ["broken", "missing"])
def test_a_model_without_a_config_that_loads_is_still_watched_read_only(
    config: str, as_admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23: a model whose file no longer loads, or that has audit rows but no file, was silently not watched.

    It is checked read-only: ``on_drift: restore`` in a file that does not load is not obeyed. A broken file fails
    the run; a missing one is alerted in the log (its drift fails the run as any model's does)."""
    monkeypatch.setenv("PROMOTION_MODELS_DIR", str(tmp_path))  # this test's models folder
    name = unique(config)
    v1, v2 = promote(name), promote(name)
    if config == "broken":  # asks for restore, but does not validate
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\non_drift: restore\nno_such_key: 1\n")
    with as_admin():
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)
    moved = f"alias 'champion' points at v{v1}; the audit log records v{v2} as the production version"

    assert coverage.unconfigured(load_model_configs())[name].kind == config  # in every full sweep, too
    with caplog.at_level(logging.ERROR), pytest.raises(RegistryDrift) as failed:
        watch_registry(name, run_ref(dag_id="model_registry_watch"))
    assert f"the registry differs from the audit log for {name}" in str(failed.value)
    assert (f"its config file {name}.yaml does not load" in str(failed.value)) == (config == "broken")
    assert f"{CONFIG_MARKER} {name}: " in caplog.text and f"REGISTRY DRIFT {name}: {moved}" in caplog.text
    assert [r["reason"] for r in rows_of(name, "drift_detected")] == [moved]
    assert champion(name) == v1 and rows_of(name, "drift_restore") == []  # read-only: nothing put back
    with pytest.raises(UnknownModel):  # a name nothing knows is still refused
        watch_registry(unique("nothing"), run_ref(dag_id="model_registry_watch"))


def test_an_edited_audit_row_is_reported_and_nothing_is_restored_from_it(services, as_admin) -> None:
    name = unique("tamper")
    v1, v2 = promote(name), promote(name)
    promote_row = next(r for r in audit.rows(name) if r["action"] == "promote" and r["version"] == v2)
    conn = psycopg2.connect(services.owner_uri())
    conn.autocommit = True
    with conn, conn.cursor() as cur:  # what the schema owner (or a superuser) can still do, on purpose
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER")
        cur.execute(f"UPDATE {AUDIT_TABLE} SET actor = 'mallory' WHERE id = %s", (promote_row["id"],))
        cur.execute(f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER USER")
    conn.close()
    with as_admin():
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)

    report = watch_run(name, restore=True)
    chain = f"{name}: audit chain broken at row {promote_row['id']} (promote v{v2}): the row was altered after it was"
    chain += " written"
    assert chain in {d.reason for d in report.recorded} and report.failed
    assert report.restored == [] and champion(name) == v1  # an edited log is not trusted to say what to restore
    again = watch_run(name, restore=True)
    assert again.recorded == [] and again.failed


def test_no_false_alarm_while_promotions_and_a_rollback_run_during_the_watch() -> None:
    name = unique("race")
    promote(name)
    stop = threading.Event()
    reports: list[WatchReport] = []
    errors: list[BaseException] = []

    def keep_watching() -> None:
        try:
            while not stop.is_set():
                reports.append(watch_run(name, restore=True))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def then_a_watch_run(step: Callable[[], object]) -> None:
        """``step`` while the watch keeps running, then until a watch run that began after it has ended: the watch
        runs in between every two steps however fast they are (no count left to the machine's speed)."""
        step()
        seen = len(reports)  # a run under way now may have begun before the step ended: wait for the one after it
        deadline = time.monotonic() + 60
        while len(reports) < seen + 2 and not errors and time.monotonic() < deadline:
            time.sleep(0.05)

    watcher = threading.Thread(target=keep_watching)
    watcher.start()
    try:
        then_a_watch_run(lambda: promote(name))
        then_a_watch_run(lambda: promote(name))
        then_a_watch_run(lambda: register(name))  # a candidate in the middle of its lifecycle, too
        then_a_watch_run(
            lambda: rollback.rollback(rollback.plan_rollback(name, None), "bad promotion", change("alice"))
        )
    finally:
        stop.set()
        watcher.join(timeout=120)
    assert not errors, errors
    assert len(reports) >= 8  # two runs after each step at least: the watch really ran in between
    assert rows_of(name, "drift_detected") == [] and rows_of(name, "drift_restore") == []
    assert all(r.drifts == [] for r in reports)
    assert verify_invariant(name) == champion(name)


def test_a_model_never_registered_is_skipped() -> None:
    report = watch_run(unique("never"))
    assert report.skipped and report.drifts == [] and not report.failed


@pytest.mark.parametrize("mirror", [True, False], ids=["stages mirrored", "aliases and tags only"])
def test_every_legitimate_step_leaves_nothing_to_report(mirror: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMOTION_MIRROR_STAGES", str(mirror).lower())
    name = unique("legit")
    v1, v2 = promote(name), promote(name)
    steps: list[Callable[[], object]] = [
        lambda: lifecycle.promote_to_staging(name, register(name), change()),  # a challenger
        lambda: lifecycle.promote_to_staging(name, register(name), change()),  # supersedes it
        lambda: lifecycle.reject(name, champion_or_challenger(name, "challenger"), "bob", "no", change("bob")),
        lambda: promote(name),
        lambda: rollback.rollback(rollback.plan_rollback(name, None), "bad", change("alice")),
        lambda: rollback.rollback(rollback.plan_rollback(name, None), "worse", change("alice")),  # one more step
        lambda: rollback.rollback(rollback.plan_rollback(name, v2, allow_rolled_back=True), "v2 is fine", change()),
    ]
    for step in steps:
        step()
        report = watch_run(name, restore=True)
        assert report.drifts == [] and report.recorded == [] and report.restored == [], report
    assert champion(name) == v2 and verify_invariant(name) == v2 and v1


def champion_or_challenger(name: str, alias: str) -> str:
    return str(mlflow_client.client().get_model_version_by_alias(name, alias).version)


@pytest.mark.parametrize("fail_at", [3, 8])
def test_a_promotion_that_crashed_half_way_and_was_repaired_still_completes_on_retry(fail_at: int) -> None:
    clean, crashed = unique("clean"), unique("crash")
    for name in (clean, crashed):
        promote(name)
        lifecycle.promote_to_staging(name, register(name), change())
    approval = change("bob")
    lifecycle.record_approval(clean, "2", "bob", "ok", approval)
    lifecycle.promote_to_production(clean, "2", approval)

    attempt = change("bob")
    lifecycle.record_approval(crashed, "2", "bob", "ok", attempt)
    with proxied_client(crash_at(fail_at), WRITES), pytest.raises(ConnectionError):
        lifecycle.promote_to_production(crashed, "2", attempt)
    repaired = watch_run(crashed, restore=True)  # the watch runs before the task's retry: puts v1 back
    assert repaired.recorded and champion(crashed) == "1" and verify_invariant(crashed) == "1"
    lifecycle.promote_to_production(crashed, "2", attempt)  # the task's retry

    def without_drift_rows(s: dict) -> dict:
        return {**s, "audit": [row for row in s["audit"] if not row[1].startswith("drift_")]}

    assert without_drift_rows(state(crashed)) == state(clean) and verify_invariant(crashed) == "2"
    assert watch_run(crashed).drifts == []


def crashing_before_row(monkeypatch: pytest.MonkeyPatch, action: str, step: Callable[[], object]) -> None:
    """Run ``step`` with the worker dying right before it writes its first ``action`` row (after its registry
    writes), as a crash between them would."""
    real_record = audit.AuditLog.record

    def crash(log_: audit.AuditLog, entry: audit.AuditEntry, detail: str = "") -> bool:
        if entry.action == action:
            raise ConnectionError(f"injected crash between the registry writes and the {action} row")
        return real_record(log_, entry, detail)

    with monkeypatch.context() as crashing:
        crashing.setattr(audit.AuditLog, "record", crash)
        with pytest.raises(ConnectionError):
            step()


def test_a_promotion_that_crashed_before_its_audit_row_is_in_progress_not_drift(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 23: every registry write of a promotion done, then the worker died before its ``promote`` row. The
    ``intent`` row it wrote before its first write tells the watch that the registry shows a change under way: no
    drift, nothing undone; the task's retry records the promotion once. An intent older than the grace is drift."""
    name = unique("intent")
    v1 = promote(name)
    v2 = register(name)
    lifecycle.promote_to_staging(name, v2, change())
    attempt = change("bob")
    lifecycle.record_approval(name, v2, "bob", "ok", attempt)
    crashing_before_row(monkeypatch, AuditAction.PROMOTE, lambda: lifecycle.promote_to_production(name, v2, attempt))
    assert champion(name) == v2 and [r["version"] for r in rows_of(name, "promote")] == [v1]  # registry ahead of log

    during = watch_run(name, restore=True)
    assert during.drifts == [] and during.recorded == [] and during.restored == [] and not during.failed
    assert during.in_progress and during.in_progress[0].startswith(f"promote v{v2} over v{v1}")
    assert rows_of(name, "drift_detected") == [] and champion(name) == v2  # nothing undone, nothing recorded

    monkeypatch.setenv("PROMOTION_INTENT_GRACE_MINUTES", "0")  # a task that gave up: its intent is stale
    stale = watch_run(name)
    assert stale.recorded and stale.failed and stale.in_progress == []
    monkeypatch.delenv("PROMOTION_INTENT_GRACE_MINUTES")

    lifecycle.promote_to_production(name, v2, attempt)  # the task's retry completes it
    assert [r["version"] for r in rows_of(name, "promote")] == [v1, v2]  # one completed row, not two
    assert [r["version"] for r in rows_of(name, "intent") if r["reason"].startswith("promote")] == [v1, v2]
    after = watch_run(name, restore=True)
    assert after.drifts == [] and after.in_progress == [] and after.recorded == []
    assert champion(name) == v2 and verify_invariant(name) == v2


def test_a_rollback_that_crashed_before_its_audit_rows_is_in_progress_and_restore_mode_does_not_undo_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rollback announces itself like a promotion: the champion already moved back when the worker died, and the
    watch in restore mode must not put the bad version back in production; the retry records the rollback once."""
    name = unique("intentrb")
    v1, v2 = promote(name), promote(name)
    attempt = change("carol")
    plan = rollback.plan_rollback(name, None)  # validate's plan: what the task and its retry act on
    crashing_before_row(
        monkeypatch, AuditAction.ROLLBACK_RESTORE, lambda: rollback.rollback(plan, "v2 misfires", attempt)
    )
    assert champion(name) == v1 and rows_of(name, "rollback_restore") == []  # the registry is ahead of the log

    during = watch_run(name, restore=True)
    assert during.drifts == [] and during.recorded == [] and during.restored == [] and not during.failed
    assert during.in_progress and during.in_progress[0].startswith(f"roll back v{v2} to v{v1}")
    assert champion(name) == v1 and rows_of(name, "drift_detected") == []  # the bad version stays out

    rollback.rollback(plan, "v2 misfires", attempt)  # the task's retry completes it
    assert [r["version"] for r in rows_of(name, "rollback_restore")] == [v1]
    assert [r["version"] for r in rows_of(name, "rollback_demote")] == [v2]
    assert sorted(r["version"] for r in rows_of(name, "intent") if r["reason"].startswith("roll back")) == [v1, v2]
    after = watch_run(name, restore=True)
    assert after.drifts == [] and after.in_progress == [] and after.recorded == []
    assert champion(name) == v1 and verify_invariant(name) == v1


@pytest.mark.parametrize("step", ["stage", "reject"])
def test_staging_or_a_rejection_that_crashed_before_its_audit_row_is_in_progress(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two other changes of a candidate announce their writes too: no drift while the retry is due."""
    name = unique(f"intent{step}")
    v1 = promote(name)
    v2 = register(name)
    attempt = change("bob")
    if step == "reject":
        lifecycle.promote_to_staging(name, v2, attempt)

    def attempt_the_step() -> None:
        if step == "stage":
            lifecycle.promote_to_staging(name, v2, attempt)
        else:
            lifecycle.reject(name, v2, "bob", "drifts", attempt)

    crashing_before_row(monkeypatch, step, attempt_the_step)
    assert [r["version"] for r in rows_of(name, step)] == ([v1] if step == "stage" else [])  # registry ahead of log
    during = watch_run(name, restore=True)
    assert during.drifts == [] and during.recorded == [] and during.restored == [] and not during.failed
    assert during.in_progress and during.in_progress[0].startswith(f"{step} v{v2}"), during.in_progress
    attempt_the_step()  # the task's retry records the row once
    assert [r["version"] for r in rows_of(name, step)] == ([v1, v2] if step == "stage" else [v2])
    after = watch_run(name, restore=True)
    assert after.drifts == [] and after.in_progress == [] and after.recorded == [] and champion(name) == v1


def test_a_registered_model_renamed_and_re_created_is_reported_and_never_restored_from(
    as_admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOTION_CLOCK_SKEW_SECONDS", "0.5")  # one clock here; a real swap comes days later
    name = unique("swap")
    v1, v2 = promote(name), promote(name)
    time.sleep(1)
    with as_admin():
        client = mlflow_client.client()
        source = client.get_model_version(name, v2).source
        client.rename_registered_model(name, f"{name}-old")
        client.create_registered_model(name)
        for _ in (v1, v2):  # look-alikes of the audited versions, tags and alias included
            mv = client.create_model_version(name, source=source, model_id=source.removeprefix("models:/"))
        client.set_model_version_tag(name, v1, "promotion_status", "archived")
        client.set_model_version_tag(name, v2, "promotion_status", "production")
        client.set_registered_model_alias(name, "champion", mv.version)
    time_of_swap = watch_run(name, restore=True)
    replaced = [d.reason for d in time_of_swap.recorded if "was replaced" in d.reason]
    assert len(replaced) == 2 and time_of_swap.failed and time_of_swap.restored == []


def test_each_deleted_version_is_recorded_on_its_own(as_admin) -> None:
    name = unique("deleted")
    v1, v2, v3 = promote(name), promote(name), promote(name)
    with as_admin():
        mlflow_client.client().delete_model_version(name, v1)
    first = watch_run(name)
    assert [d.reason for d in first.recorded] == [f"v{v1} was deleted from the registry"] and first.failed
    assert not watch_run(name).failed  # an old version gone is history: on record once, not red forever
    with as_admin():
        mlflow_client.client().delete_model_version(name, v3)
    second = watch_run(name)
    assert [d.reason for d in second.recorded] == [f"v{v3} was deleted from the registry"]
    assert f"target_version={v2}" in second.recorded[0].advice and second.failed


def test_only_the_on_call_may_acknowledge_a_deleted_old_version_and_it_is_reported_no_more(
    as_admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23: a version deleted out of band stayed "open drift" for good. Its on-call (``rollback.on_call``, from the
    model's config, not whoever triggers) accepts the loss on record; anyone else is refused and nothing is written."""
    monkeypatch.setenv("PROMOTION_MODELS_DIR", str(tmp_path))
    name = fast_model(tmp_path, "ack", rollback={"on_call": ["carol"]})
    v1, v2, _ = promote(name), promote(name), promote(name)
    with as_admin():
        mlflow_client.client().delete_model_version(name, v1)
    deleted = f"v{v1} was deleted from the registry"
    first = watch_run(name)
    assert [d.reason for d in first.recorded] == [deleted] and "acknowledge_deleted_version" in first.recorded[0].advice

    def acknowledge(user: str | None, version: str, why: str = "removed by the cleanup script, INC-42") -> dict:
        run = run_ref(triggered_by=user, dag_id="model_registry_watch")
        return watch_registry(name, run, acknowledge=version, acknowledge_reason=why)

    before = snapshot(name)
    for intruder in ("mallory", "alice", None):  # alice reviews this model but is not its on-call; None: scheduled
        with pytest.raises(NotAuthorized, match="only its on-call \\(carol\\) may"):
            acknowledge(intruder, v1)
    with pytest.raises(RegistryStateError, match="still in the registry"):
        acknowledge("carol", v2)
    with pytest.raises(InputRejected):
        acknowledge("carol", f"{v1} OR 1=1")
    with pytest.raises(InputRejected):
        acknowledge("carol", v1, why="  ")
    assert snapshot(name) == before  # every refusal wrote nothing, in the registry or the audit log

    assert acknowledge("carol", v1)["acknowledged"] == deleted
    (row,) = rows_of(name, "drift_acknowledged")
    assert (row["version"], row["actor"]) == (v1, "carol") and "INC-42" in row["reason"]
    conn = connect()
    try:
        assert queries.open_drift(conn, [name]) == {}  # the page reads the same as the watch
    finally:
        conn.close()
    after = watch_run(name)
    assert after.drifts == [] and after.recorded == [] and after.resolved == [] and not after.failed


def test_without_an_audited_champion_the_serving_version_is_never_taken_away() -> None:
    name = unique("noaudit")
    client = mlflow_client.client()  # versions made before the audit log existed (or after it started anew)
    client.create_registered_model(name)
    source = tiny_model_uri()
    version = client.create_model_version(name, source=source, model_id=source.removeprefix("models:/")).version
    client.set_registered_model_alias(name, "champion", version)
    stage(client, name, version, "Production")
    report = watch_run(name, restore=True)
    assert report.failed and report.recorded
    assert champion(name) == version and client.get_model_version(name, version).current_stage == "Production"


def test_a_rollback_refuses_when_the_registry_disagrees_with_the_audit_log(as_admin) -> None:
    name = unique("forged")
    v1, v2 = promote(name), promote(name)
    v3 = register(name)
    lifecycle.promote_to_staging(name, v3, change())
    lifecycle.reject(name, v3, "bob", "leaks the label", change("bob"))
    with as_admin():  # make the rejected v3 look like an earlier champion, through tags alone
        client = mlflow_client.client()
        client.set_model_version_tag(name, v3, "promotion_status", "archived")
        client.set_model_version_tag(name, v3, "production_timestamp", "2026-01-01T00:00:00+00:00")
    before = snapshot(name)
    with pytest.raises(RollbackTargetInvalid, match="audit log does not record"):
        rollback.plan_rollback(name, v3)
    with as_admin():
        mlflow_client.client().set_registered_model_alias(name, "champion", v1)
    with pytest.raises(RollbackTargetInvalid, match="changed outside the pipeline"):
        rollback.plan_rollback(name, None)
    assert snapshot(name)["audit"] == before["audit"] and v2
