"""The post-promotion check in-process (its task body), against the real MLflow server and PostgreSQL.

Each test promotes a real trained candidate over a real champion with the tasks' own code, then runs
``verify_in_production`` as the DAG's task does: the champion is loaded in a fresh interpreter through the serving
loader. The bad champions are made the way an attacker with write access to the artifact store would: the model file
of the version is overwritten after evaluate, with another fitted model or with garbage.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest

from include.promotion.audit import log as audit
from include.promotion.errors import PostPromotionCheckFailed, PromotionError
from include.promotion.post_promotion.check import CHECK_ACTOR, SAMPLE_ARTIFACT, SAMPLE_DIGEST_PARAM
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.accounts import acting_as
from include.promotion.registry.invariants import verify_invariant
from include.promotion.tasks import promotion as tasks
from tests.support import champion, fast_model, promote_candidate, run_ref, seed_champion, snapshot

pytestmark = pytest.mark.usefixtures("services")


def overwrite_model_file(services, name: str, version: str, content: bytes | None = None) -> None:
    """As the MLflow admin (write access to every artifact): replace the version's model file in the artifact
    store, with ``content`` or else with another fitted pipeline (same class, same signature, other weights)."""
    import numpy as np
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from include.promotion.pipeline.demo_data import TRANSACTION_FEATURES, synthetic_transactions

    model_id = mlflow_client.client().get_model_version(name, version).source.removeprefix("models:/")  # a LoggedModel
    with acting_as("admin", services.passwords()["admin"]), tempfile.TemporaryDirectory() as tmp:
        client = mlflow_client.client()
        (model_file,) = [a.path for a in client.list_logged_model_artifacts(model_id) if a.path.endswith(".skops")]
        upload = Path(tmp)
        if content is None:
            frame = synthetic_transactions(rows=500, seed=99)
            labels = np.random.default_rng(0).integers(0, 2, size=len(frame))  # another model: it learnt noise
            other = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])
            other.fit(frame[TRANSACTION_FEATURES], labels)
            skops.io.dump(other, upload / model_file)
        else:
            (upload / model_file).write_bytes(content)
        client.log_model_artifacts(model_id, str(upload))


def registry_and_outcome(name: str, before: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The registry as it is (the audit part: the rows before ``before`` was taken), and the rows added since."""
    now = snapshot(name)
    added = [(r["version"], r["action"]) for r in audit.rows(name) if r["id"] not in set(before["audit"])]
    return {**now, "audit": [i for i in now["audit"] if i in set(before["audit"])]}, added


def check_rows(name: str) -> list[tuple[str, str, str, str]]:
    return [
        (r["version"], r["action"], r["to_stage"], r["actor"])
        for r in audit.rows(name)
        if r["action"] == "post_check_rollback"
    ]


def test_a_good_champion_passes_and_a_moved_alias_is_never_undone(services, models_dir: Path) -> None:
    name = fast_model(models_dir, "pcgood")
    previous = seed_champion(name)
    run, version = promote_candidate(name)
    run_id = mlflow_client.client().get_model_version(name, version).run_id
    assert SAMPLE_DIGEST_PARAM in mlflow_client.client().get_run(run_id).data.params
    before = snapshot(name)

    result = tasks.verify_in_production(name, run)
    assert result["passed"] and result["version"] == version and result["rows"] == 200
    assert result["max_abs_diff"] <= 1e-9 and result["signature"] is None
    assert 0 < result["latency_ms_p95"] <= 50
    # a check that passes changes nothing in the registry; it records its outcome (a state set by hand records none)
    assert registry_and_outcome(name, before) == (before, [(version, "post_check_passed")])
    outcome = audit.rows(name)[-1]
    assert outcome["actor"] == CHECK_ACTOR and outcome["reason"].startswith("passed: loaded in")
    before = snapshot(name)

    # the MLflow admin moves champion back by hand: the check fails and never undoes someone else's change
    with acting_as("admin", services.passwords()["admin"]):
        mlflow_client.client().set_registered_model_alias(name, "champion", previous)
    moved = snapshot(name)
    with pytest.raises(PostPromotionCheckFailed, match=f"'champion' now points at v{previous}: someone else"):
        tasks.verify_in_production(name, run)
    assert registry_and_outcome(name, moved) == (moved, [(version, "post_check_failed")])


def test_a_model_replaced_after_evaluation_is_rolled_back_once(services, models_dir: Path, caplog) -> None:
    name = fast_model(models_dir, "pcswap")
    previous = seed_champion(name)
    run, version = promote_candidate(name)
    overwrite_model_file(services, name, version)

    caplog.set_level(logging.ERROR)
    with pytest.raises(PostPromotionCheckFailed) as failed:
        tasks.verify_in_production(name, run)
    message = str(failed.value)
    assert f"v{version} failed its post-promotion check" in message
    assert "differ from the ones evaluate logged" in message
    assert f"v{previous} is the champion again" in message
    assert champion(name) == previous == verify_invariant(name)
    assert check_rows(name) == [
        (previous, "post_check_rollback", "Production", CHECK_ACTOR),
        (version, "post_check_rollback", "Archived", CHECK_ACTOR),
    ]
    reason = audit.rows(name)[-1]["reason"]
    assert reason.startswith("post-promotion check failed: its probabilities")
    mv = mlflow_client.client().get_model_version(name, version)
    assert (mv.tags["promotion_status"], mv.tags["rolled_back_by"]) == ("rolled_back", CHECK_ACTOR)
    assert "POST-PROMOTION CHECK FAILED" in caplog.text  # the alert (e-mailed too when notify_emails is set)

    # the task retried (or the run cleared) after the rollback: the same failure, nothing rolled back twice
    after = snapshot(name)
    with pytest.raises(PostPromotionCheckFailed, match=f"was rolled back to v{previous}"):
        tasks.verify_in_production(name, run)
    assert snapshot(name) == after


def test_a_model_that_fails_to_load_is_rolled_back(services, models_dir: Path) -> None:
    name = fast_model(models_dir, "pccorrupt")
    previous = seed_champion(name)
    run, version = promote_candidate(name)
    overwrite_model_file(services, name, version, content=b"not a model")

    with pytest.raises(PostPromotionCheckFailed, match="the champion could not be loaded") as failed:
        tasks.verify_in_production(name, run)
    assert f"v{previous} is the champion again" in str(failed.value)
    assert champion(name) == previous == verify_invariant(name)
    rows = [row[:2] for row in check_rows(name)]
    assert rows == [(previous, "post_check_rollback"), (version, "post_check_rollback")]


def test_a_latency_breach_is_rolled_back(models_dir: Path) -> None:
    name = fast_model(models_dir, "pcslow", post_promotion={"latency_ms_p95": 0.001})
    previous = seed_champion(name)
    run, _ = promote_candidate(name)

    with pytest.raises(PostPromotionCheckFailed, match=r"p95 .* ms is over post_promotion.latency_ms_p95 = 0.001 ms"):
        tasks.verify_in_production(name, run)
    assert champion(name) == previous
    assert check_rows(name)[0][:2] == (previous, "post_check_rollback")


def test_without_auto_rollback_or_an_earlier_champion_the_check_fails_and_changes_nothing(models_dir: Path) -> None:
    first = fast_model(models_dir, "pcfirst", post_promotion={"latency_ms_p95": 0.001})
    run, version = promote_candidate(first)  # the model's first champion: nothing to go back to
    before = snapshot(first)
    with pytest.raises(PostPromotionCheckFailed, match=r"replaced no earlier champion.*stays in production"):
        tasks.verify_in_production(first, run)
    assert registry_and_outcome(first, before) == (before, [(version, "post_check_failed")])
    assert champion(first) == version

    manual = fast_model(models_dir, "pcmanual", post_promotion={"latency_ms_p95": 0.001, "auto_rollback": False})
    seed_champion(manual)
    run, version = promote_candidate(manual)
    before = snapshot(manual)
    with pytest.raises(PostPromotionCheckFailed, match="auto_rollback is off: nothing was rolled back"):
        tasks.verify_in_production(manual, run)
    assert registry_and_outcome(manual, before) == (before, [(version, "post_check_failed")])
    assert champion(manual) == version


def test_a_check_turned_off_only_says_so(models_dir: Path, caplog) -> None:
    name = fast_model(models_dir, "pcoff", post_promotion={"check": False})
    caplog.set_level(logging.INFO)
    assert tasks.verify_in_production(name, run_ref()) == {"model_name": name, "checked": False}
    assert "the post-promotion check is off" in caplog.text


def test_a_sample_edited_in_the_artifact_store_is_refused(services, models_dir: Path) -> None:
    """Whoever can write the run's artifacts could make the expected numbers match a swapped model: not past the
    digest evaluate logged as a param, which MLflow refuses to change."""
    from mlflow.exceptions import MlflowException

    name = fast_model(models_dir, "pcsample")
    previous = seed_champion(name)
    run, version = promote_candidate(name)
    run_id = mlflow_client.client().get_model_version(name, version).run_id
    with acting_as("admin", services.passwords()["admin"]), tempfile.TemporaryDirectory() as tmp:
        client = mlflow_client.client()
        path = Path(client.download_artifacts(run_id, SAMPLE_ARTIFACT, tmp))
        path.write_bytes(path.read_bytes() + b"\0")
        client.log_artifact(run_id, str(path), str(Path(SAMPLE_ARTIFACT).parent))
        with pytest.raises(MlflowException):
            client.log_param(run_id, SAMPLE_DIGEST_PARAM, "0" * 64)
    with pytest.raises(PostPromotionCheckFailed, match="was changed after evaluate logged it"):
        tasks.verify_in_production(name, run)
    assert champion(name) == previous


def test_a_promotion_whose_check_never_ran_is_handled_as_a_failed_check(models_dir: Path, monkeypatch) -> None:
    """``verify_in_production`` set to success by hand (or skipped) records no outcome: the promotion run's own
    ``notify_deployers`` rolls it back and alerts; once rolled back, nothing is done twice. The watch's backstop finds
    a champion without an outcome once the grace period passed, and not before."""
    from include.promotion.notify.deploy_events import notify_deployers
    from include.promotion.tasks.watch import watch_registry

    name = fast_model(models_dir, "pcunchecked")
    previous = seed_champion(name)
    run, version = promote_candidate(name)  # promoted; its check never ran
    unchecked = f"no check outcome is on record for the promotion of v{version}"
    with pytest.raises(PostPromotionCheckFailed, match=unchecked):
        notify_deployers(name, run)
    assert champion(name) == previous == verify_invariant(name)
    assert check_rows(name) == [
        (previous, "post_check_rollback", "Production", CHECK_ACTOR),
        (version, "post_check_rollback", "Archived", CHECK_ACTOR),
    ]
    after = snapshot(name)
    notify_deployers(name, run)  # a retry: the rollback rows are the outcome now
    assert snapshot(name) == after

    watched = fast_model(models_dir, "pcwatch")
    previous = seed_champion(watched)
    _, version = promote_candidate(watched)
    monkeypatch.setenv("PROMOTION_UNCHECKED_PROMOTION_MINUTES", "30")
    before = snapshot(watched)
    watch_registry(watched, run_ref(dag_id="model_registry_watch"))  # within the grace period: not yet
    assert snapshot(watched) == before
    monkeypatch.setenv("PROMOTION_UNCHECKED_PROMOTION_MINUTES", "0")
    with pytest.raises(PromotionError, match=f"no check outcome is on record for the promotion of v{version}"):
        watch_registry(watched, run_ref(dag_id="model_registry_watch"))
    assert champion(watched) == previous
