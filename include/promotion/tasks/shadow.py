"""The body of the promotion DAG's ``shadow_evaluate`` sensor: one look at the evidence per poke.

Returns ``(done, signed result)``. When the evidence fails a ``shadow.gates`` limit the candidate is rejected
exactly like a refusal at the gate (audit row ``reject`` naming the gate, ``challenger`` removed, status
``rejected``), and the run ends "not promoted" (a skip, so ``approve`` and the promotion are skipped). A retry finds
its own rejection in the audit log and records nothing twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from include.promotion.airflow_run import RunRef
from include.promotion.audit import log as audit
from include.promotion.config import get_model_config
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.retries import retry_transient
from include.promotion.run_note import leave
from include.promotion.shadow import evaluate, evidence
from include.promotion.signing import Kind, sign, verify
from include.promotion.states import CHAMPION_ALIAS, AuditAction

log = logging.getLogger(__name__)


def shadow_evaluate(model_name: str, staged: dict[str, Any], run: RunRef) -> tuple[bool, dict[str, Any] | None]:
    """Wait for (or replay) the shadow evidence of the staged version; record it; reject on a failed shadow gate."""
    cfg = get_model_config(model_name)
    version = verify(Kind.STAGING, run, staged)["version"]
    if earlier := _rejected_by(model_name, version, run):  # a retry after this run rejected it
        leave(f"Not promoted: v{version} rejected by its shadow evaluation: {earlier}")
        raise AirflowSkipException(f"not promoted: {earlier}")
    client = mlflow_client.client()
    champion = (
        retry_transient(mlflow_client.get_alias, client, model_name, CHAMPION_ALIAS) if cfg.shadow.enabled else None
    )
    found = evaluate.poke(cfg, version, str(champion.version) if champion is not None else None)
    if found is None:
        return False, None
    log.info(
        "%s v%s shadow evaluation: %s\n%s", model_name, version, found["note"], "\n".join(evidence.markdown(found))
    )
    if found["source"] in (evaluate.LIVE, evaluate.REPLAY):
        _record(client, model_name, version, found)
    if not found["passed"]:
        reason = "; ".join(found["reasons"])
        retry_transient(lifecycle.reject, model_name, version, run.dag_id, reason, lifecycle.Change.by(run))
        log.warning("%s v%s NOT PROMOTED: %s", model_name, version, reason)
        leave(f"Not promoted: v{version} rejected by its shadow evaluation: {reason}")
        raise AirflowSkipException(f"not promoted: {reason}")
    return True, sign(Kind.SHADOW, run, found)


def _record(client: Any, model_name: str, version: str, found: dict[str, Any]) -> None:
    """Figures as ``shadow_*`` metrics on the version's MLflow run, and as tags for the page."""
    from mlflow.entities import Metric

    mv = retry_transient(lifecycle.require_version, client, model_name, version)
    values = evaluate.metric_values(found)
    if mv.run_id and values:
        stamp = int(time.time() * 1000)
        batch = [Metric(key=k, value=v, timestamp=stamp, step=0) for k, v in values.items()]
        retry_transient(lambda: client.log_batch(mv.run_id, metrics=batch))
    retry_transient(mlflow_client.set_tags, client, model_name, version, evidence.tags(found))


def _rejected_by(model_name: str, version: str, run: RunRef) -> str | None:
    """The reason of a rejection of ``version`` this run already recorded, if any."""
    for row in audit.rows(model_name):
        same_run = (row["dag_id"], row["run_id"]) == (run.dag_id, run.run_id)
        if same_run and row["action"] == AuditAction.REJECT and str(row["version"]) == str(version):
            return row["reason"]
    return None
