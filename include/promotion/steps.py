"""What each DAG task does, as plain functions of the model name and the Airflow run.

The DAG files call these one per task; tests call them directly. Only ids and small dicts go in
and out (they travel as XComs), never data frames or models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from include.promotion import data, evaluation, registry, tracking, training
from include.promotion.config import METRICS, get_model_config
from include.promotion.errors import PromotionError
from include.promotion.registry import Change

log = logging.getLogger(__name__)


def triggering_user(context: Any) -> str | None:
    """The Airflow user who triggered the run (None for scheduled runs)."""
    dag_run = context.get("dag_run")
    return getattr(dag_run, "triggering_user_name", None) or None


def load_data(model_name: str) -> dict[str, Any]:
    """Fetch, check and fingerprint the training data; fail here, before MLflow, if it is unusable."""
    cfg = get_model_config(model_name)
    _, summary = data.load(cfg)
    log.info(
        "%s: %d rows, %d positive, data version %s", model_name, summary.rows, summary.positives, summary.data_version
    )
    return summary.as_dict()


def train(model_name: str, loaded: dict[str, Any], dag_id: str, run_id: str) -> dict[str, str]:
    """Fit the configured pipeline on the snapshot ``load_data`` checked; log it to MLflow."""
    cfg = get_model_config(model_name)
    training.build_pipeline(cfg)  # a bad estimator fails before the data is even fetched again
    frame = data.load_expected(cfg, loaded["data_version"])
    trained = training.train_and_log(cfg, frame, loaded["data_version"], dag_id, run_id)
    log.info("%s: trained run %s, model %s", model_name, trained["run_id"], trained["model_uri"])
    return trained


def evaluate(model_name: str, trained: dict[str, str]) -> dict[str, Any]:
    """Score candidate and champion on the same holdout; return the verdict and the evidence."""
    cfg = get_model_config(model_name)
    frame = data.load_expected(cfg, trained["data_version"])
    verdict = evaluation.evaluate_candidate(cfg, frame, trained)
    log.info("%s gate results:\n%s", model_name, "\n".join(f"  {g}" for g in verdict.gate_results))
    return verdict.as_dict()


def register(model_name: str, trained: dict[str, str], verdict: dict[str, Any], dag_id: str, run_id: str) -> str | None:
    """Register the candidate if it passed every gate; ``None`` (nothing registered) if not."""
    if not verdict["passed"]:
        log.warning("%s NOT PROMOTED: %s. Nothing was registered.", model_name, "; ".join(verdict["reasons"]))
        return None
    cfg = get_model_config(model_name)
    tags = {
        **training.lineage_tags(cfg, trained["data_version"], dag_id, run_id),
        **{f"metric_{m}": f"{verdict['metrics'][m]:.6f}" for m in METRICS},
        "champion_at_evaluation": verdict.get("champion_version") or "",
    }
    tags.pop("model_name")
    gates = ", ".join(f"{g['gate']}: {g['value']:.4f}" for g in verdict["gate_results"])
    description = f"Trained by {dag_id} run {run_id} on data {trained['data_version']}. Gates passed: {gates}."
    version = registry.register_version(
        model_name, trained, tags, description, Change(actor=dag_id, dag_id=dag_id, run_id=run_id), cfg.description
    )
    log.info("%s: registered as version %s", model_name, version)
    return version


def promote_to_staging(model_name: str, version: str, dag_id: str, run_id: str) -> dict[str, str]:
    """Make the new version the challenger (Staging), for a reviewer to approve."""
    registry.promote_to_staging(model_name, version, Change(actor=dag_id, dag_id=dag_id, run_id=run_id))
    log.info("%s v%s is the challenger, awaiting approval", model_name, version)
    return {"model_name": model_name, "version": version}


def _with_retries(action: Callable[[], None], attempts: int = 4) -> None:
    """Run a registry change where a human answer arrives: retrying the task would ask again, so retry here."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except PromotionError:
            raise
        except Exception as exc:  # transient: network, MLflow or PostgreSQL restarting
            if attempt == attempts:
                raise PromotionError(
                    f"could not record the reviewer's answer after {attempts} attempts: {exc}"
                ) from exc
            log.warning("recording the answer failed (%s); retrying", exc)
            time.sleep(2**attempt)


def record_answer(model_name: str, context: Any, reviewer: str | None, approved: bool, reason: str) -> None:
    """Called where the approval answer arrives: record it on the version, with an audit row.

    Approve: the approval is tagged on the version (``promote_to_production`` acts only on that).
    Reject or timeout: status ``rejected``, reason, ``challenger`` removed; nothing is promoted.
    """
    ti = context["ti"]
    version = ti.xcom_pull(task_ids="promote_to_staging")["version"]
    actor = reviewer or ti.dag_id
    change = Change(actor=actor, dag_id=ti.dag_id, run_id=ti.run_id)
    if approved:
        _with_retries(lambda: registry.record_approval(model_name, version, actor, reason, change))
        log.info("%s v%s approved by %s: %s", model_name, version, actor, reason)
    else:
        _with_retries(lambda: registry.reject(model_name, version, actor, reason, change))
        log.warning("%s v%s rejected by %s: %s", model_name, version, reviewer or "timeout", reason)


def promote_to_production(
    model_name: str, staged: dict[str, str], triggered_by: str | None, dag_id: str, run_id: str
) -> dict[str, Any]:
    """Make the approved version the champion, archive the previous one, check the invariant."""
    from include.promotion.approval import check_responder

    cfg = get_model_config(model_name)
    version = staged["version"]
    mv = registry.get_version(tracking.client(), model_name, version)  # missing: the registry refuses below
    approved_by = mv.tags.get("approved_by") if mv else None
    check_responder(approved_by, cfg.approval.reviewers, triggered_by)  # four eyes, once more
    previous = registry.promote_to_production(
        model_name, version, Change(actor=approved_by or dag_id, dag_id=dag_id, run_id=run_id)
    )
    log.info("%s v%s is the champion (approved by %s); archived: %s", model_name, version, approved_by, previous)
    return {"model_name": model_name, "version": version, "archived": previous, "approver": approved_by}
