"""The promotion DAG's tasks, as plain functions: the bodies of the tasks in ``dags/model_promotion.py``.

The DAG files call these one per task and pass the earlier tasks' results in as arguments; tests
call them directly. Only ids and small dicts go in and out (they travel as XComs), and each is
signed by the task that wrote it and verified by the task that reads it (``signing``): an Airflow
user can edit an XCom, but not make a decision read an edited one.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from include.promotion.airflow_run import RunRef
from include.promotion.approval import review as approval
from include.promotion.config import METRICS, get_model_config
from include.promotion.pipeline import data, evaluation, training
from include.promotion.post_promotion import check as post_promotion
from include.promotion.registry import lifecycle
from include.promotion.run_note import leave
from include.promotion.signing import Kind, sign, verify
from include.promotion.states import METRIC_TAG_PREFIX, Tag

log = logging.getLogger(__name__)


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
    # the outcome and its reason first; then every gate, the failed ones marked
    log.info("%s: %s", model_name, evaluation.outcome_line(verdict))
    log.info("%s gates:\n%s", model_name, "\n".join(evaluation.gate_lines(verdict)))
    return sign(Kind.EVALUATION, run, verdict.as_dict())


def register(model_name: str, trained: dict[str, Any], verdict: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Register the candidate if it passed every gate; otherwise skip (the run ends "not promoted")."""
    trained = verify(Kind.TRAINING, run, trained)
    verdict = verify(Kind.EVALUATION, run, verdict)
    if not verdict["passed"]:
        why = "; ".join(verdict["reasons"])
        log.warning("%s NOT PROMOTED: %s. Nothing was registered.", model_name, why)
        leave(f"Not promoted: {why}. Nothing was registered.")
        raise AirflowSkipException(f"not promoted: {why}")
    cfg = get_model_config(model_name)
    tags = {
        **training.lineage_tags(cfg, trained["data_version"], run.dag_id, run.run_id),
        **{f"{METRIC_TAG_PREFIX}{m}": f"{verdict['metrics'][m]:.6f}" for m in METRICS},
        Tag.CHAMPION_AT_EVALUATION: verdict.get("champion_version") or "",
    }
    tags.pop("model_name")
    gates = ", ".join(f"{g['gate']}: {g['value']:.4f}" for g in verdict["gate_results"])
    description = f"Trained by {run.dag_id} run {run.run_id} on data {trained['data_version']}. Gates passed: {gates}."
    version = lifecycle.register_version(
        model_name, trained, tags, description, lifecycle.Change.by(run), cfg.description
    )
    log.info("%s: registered as version %s", model_name, version)
    return sign(Kind.REGISTRATION, run, {"model_name": model_name, "version": version})


def promote_to_staging(model_name: str, registered: dict[str, Any], run: RunRef) -> dict[str, Any]:
    """Make the new version the challenger (Staging), for a reviewer to approve."""
    version = verify(Kind.REGISTRATION, run, registered)["version"]
    lifecycle.promote_to_staging(model_name, version, lifecycle.Change.by(run))
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

    approver, previous = lifecycle.promote_to_production(model_name, version, lifecycle.Change.by(run), four_eyes)
    log.info("%s v%s is the champion (approved by %s); archived: %s", model_name, version, approver, previous)
    archived = f"; v{previous} archived" if previous else "; the model's first champion"
    leave(f"Promoted v{version} to production (approved by {approver}{archived}).")
    return {"model_name": model_name, "version": version, "archived": previous, "approver": approver}


def verify_in_production(model_name: str, run: RunRef) -> dict[str, Any]:
    """Load the new champion in a fresh interpreter as a server would; on any failure roll back to the version
    it replaced (``post_promotion.auto_rollback``), alert, and fail. A retry never rolls back twice."""
    return post_promotion.verify_in_production(get_model_config(model_name), run)
