"""What each DAG task does, as plain functions: the bodies of the tasks in ``dags/``.

The DAG files call these one per task and pass the earlier tasks' results in as arguments; tests
call them directly. Only ids and small dicts go in and out (they travel as XComs), and each is
signed by the task that wrote it and verified by the task that reads it (``signing``): an Airflow
user can edit an XCom, but not make a decision read an edited one.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from include.promotion import (
    approval,
    audit,
    data,
    evaluation,
    lifecycle,
    mlflow_client,
    notifiers,
    post_promotion,
    rollback,
    training,
    watch,
)
from include.promotion.airflow_run import RunRef
from include.promotion.config import METRICS, get_model_config, load_model_configs
from include.promotion.errors import InvariantViolation, NotAuthorized, RegistryDrift, RollbackTargetInvalid
from include.promotion.inputs import clean_reason
from include.promotion.invariants import verify_invariant
from include.promotion.signing import Kind, sign, verify
from include.promotion.states import CHAMPION_ALIAS

log = logging.getLogger(__name__)


def _change(run: RunRef, actor: str | None = None) -> lifecycle.Change:
    return lifecycle.Change(actor=actor or run.dag_id, dag_id=run.dag_id, run_id=run.run_id)


# -- the promotion DAG -------------------------------------------------------------------------------------
def load_data(model_name: str, run: RunRef) -> dict[str, Any]:
    """Fetch, check and fingerprint the training data; fail here, before MLflow, if it is unusable."""
    cfg = get_model_config(model_name)
    _, summary = data.load(cfg)
    log.info(
        "%s: %d rows, %d positive, data version %s", model_name, summary.rows, summary.positives, summary.data_version
    )
    return sign(Kind.DATA, run, summary.as_dict())


def train(model_name: str, loaded: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Fit the configured pipeline on the snapshot ``load_data`` checked; log it to MLflow."""
    cfg = get_model_config(model_name)
    data_version = verify(Kind.DATA, run, loaded)["data_version"]
    pipeline = training.build_pipeline(cfg)  # a bad estimator fails before the data is even fetched again
    frame = data.load_expected(cfg, data_version)
    trained = training.train_and_log(cfg, pipeline, frame, data_version, run.dag_id, run.run_id)
    log.info("%s: trained run %s, model %s", model_name, trained["run_id"], trained["model_uri"])
    return sign(Kind.TRAINING, run, trained)


def evaluate(model_name: str, trained: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Score candidate and champion on the same holdout; return the verdict and the evidence."""
    cfg = get_model_config(model_name)
    trained = verify(Kind.TRAINING, run, trained)
    frame = data.load_expected(cfg, trained["data_version"])
    verdict = evaluation.evaluate_candidate(cfg, frame, trained)
    log.info("%s gate results:\n%s", model_name, "\n".join(f"  {g}" for g in verdict.gate_results))
    return sign(Kind.EVALUATION, run, verdict.as_dict())


def register(model_name: str, trained: dict[str, Any], verdict: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Register the candidate if it passed every gate; otherwise skip (the run ends "not promoted")."""
    trained = verify(Kind.TRAINING, run, trained)
    verdict = verify(Kind.EVALUATION, run, verdict)
    if not verdict["passed"]:
        message = f"not promoted: {'; '.join(verdict['reasons'])}"
        log.warning("%s NOT PROMOTED: %s. Nothing was registered.", model_name, "; ".join(verdict["reasons"]))
        raise AirflowSkipException(message)
    cfg = get_model_config(model_name)
    tags = {
        **training.lineage_tags(cfg, trained["data_version"], run.dag_id, run.run_id),
        **{f"metric_{m}": f"{verdict['metrics'][m]:.6f}" for m in METRICS},
        "champion_at_evaluation": verdict.get("champion_version") or "",
    }
    tags.pop("model_name")
    gates = ", ".join(f"{g['gate']}: {g['value']:.4f}" for g in verdict["gate_results"])
    description = f"Trained by {run.dag_id} run {run.run_id} on data {trained['data_version']}. Gates passed: {gates}."
    version = lifecycle.register_version(model_name, trained, tags, description, _change(run), cfg.description)
    log.info("%s: registered as version %s", model_name, version)
    return sign(Kind.REGISTRATION, run, {"model_name": model_name, "version": version})


def promote_to_staging(model_name: str, registered: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Make the new version the challenger (Staging), for a reviewer to approve."""
    version = verify(Kind.REGISTRATION, run, registered)["version"]
    lifecycle.promote_to_staging(model_name, version, _change(run))
    log.info("%s v%s is the challenger, awaiting approval", model_name, version)
    return sign(Kind.STAGING, run, {"model_name": model_name, "version": version})


def promote_to_production(model_name: str, staged: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Make the approved version the champion, archive the previous one, check the invariant.

    The approval is the audit row the ``approve`` task wrote for this run (never a tag or an XCom);
    four eyes are checked once more on it.
    """
    cfg = get_model_config(model_name)
    version = verify(Kind.STAGING, run, staged)["version"]

    def four_eyes(approver: str) -> None:
        approval.check_responder(approver, cfg.approval.reviewers, run.triggered_by)

    approver, previous = lifecycle.promote_to_production(model_name, version, _change(run), four_eyes)
    log.info("%s v%s is the champion (approved by %s); archived: %s", model_name, version, approver, previous)
    return {"model_name": model_name, "version": version, "archived": previous, "approver": approver}


def verify_in_production(model_name: str, run: RunRef) -> dict[str, Any]:
    """Load the new champion in a fresh interpreter as a server would; on any failure roll back to the version
    it replaced (``post_promotion.auto_rollback``), alert, and fail. A retry never rolls back twice."""
    return post_promotion.verify_in_production(get_model_config(model_name), run)


# -- the rollback DAG --------------------------------------------------------------------------------------
def may_roll_back(model_name: str, user: str | None) -> None:
    """Only the model's on-call (``rollback.on_call``, default: its reviewers) may roll it back."""
    cfg = get_model_config(model_name)
    on_call = cfg.rollback_on_call
    if user is None or user not in on_call:
        who = f"'{user}'" if user else "a run nobody triggered from the UI or API"
        raise NotAuthorized(
            f"{who} may not roll back '{model_name}': only its on-call ({', '.join(on_call)}) may. Nothing was "
            "changed. Ask one of them, or add the user under rollback.on_call in the model config."
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
        _change(run, run.triggered_by),
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
    return champion


# -- the registry watch ------------------------------------------------------------------------------------
def watch_registry(model_name: str | None, run: RunRef) -> dict[str, Any]:
    """Compare the registry with the audit log for one model (or all); record, alert, repair; fail on drift."""
    configs = load_model_configs().models
    name = (model_name or "").strip()
    models = [get_model_config(name).name] if name else sorted(configs)
    change = lifecycle.Change(actor=watch.WATCH_ACTOR, dag_id=run.dag_id, run_id=run.run_id)
    client = mlflow_client.client()
    reports, errors = [], []
    for model in models:
        try:
            report = watch.watch_model(model, change, configs[model].on_drift == "restore", client)
        except Exception as exc:  # one unreadable model must not keep the others unchecked
            log.exception("registry watch: could not check %s", model)
            errors.append(f"{model}: {exc}")
            continue
        reports.append(report)
        lines = watch.describe(report)
        if report.recorded or report.restored:
            notifiers.alert_drift(configs[model], lines)
        else:
            for line in lines:
                log.warning("%s", line)
    result = watch.summary(reports)
    log.info("registry watch: %s", result)
    problems = []
    if failed := [r.model_name for r in reports if r.failed]:
        problems.append(f"the registry differs from the audit log for {', '.join(failed)} (see the log above)")
    if errors:
        problems.append(f"could not check {'; '.join(errors)}")
    if problems:
        raise RegistryDrift("; ".join(problems))
    return result


__all__ = [
    "evaluate",
    "load_data",
    "may_roll_back",
    "promote_to_production",
    "promote_to_staging",
    "register",
    "restore_previous_champion",
    "train",
    "validate_rollback",
    "verify_in_production",
    "verify_rollback",
    "watch_registry",
]
