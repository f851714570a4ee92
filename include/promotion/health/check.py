"""One model's production health check: gather the window's figures, judge them, record, alert, act.

What a check does, in order (each step safe to repeat: a retried task adds nothing and resumes what it began):

1. read the champion (``@champion``), its logged predictions in ``health.window``, the labels that arrived for them
   and its training run's reference distribution, and judge them (``health.judge``);
2. record the figures in ``model_health_checks`` (one row per model and run: what the page charts);
3. under the model's lock, open a finding (audit row ``health_degraded``, actor ``model-health``) when the champion
   breaches and none is open for its version, or close it (``health_recovered``) when a judged window is healthy
   again: each finding is recorded and alerted once, however many runs see it;
4. on a new quality or drift finding, apply ``health.on_breach``: ``rollback`` restores the previous champion
   through the rollback DAG's own code (refused when that version was itself degraded or rolled back), ``retrain``
   asks the task to add an event to the model's retrain Asset.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.promotion import settings
from include.promotion.airflow_run import RunRef
from include.promotion.audit import log as audit
from include.promotion.audit.replay import audited_state
from include.promotion.audit.schema import DEFAULT_CONN_ID, connect
from include.promotion.config import ModelConfig
from include.promotion.health import history, queries
from include.promotion.health import judge as judging
from include.promotion.health import reference as ref
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.lifecycle import Change
from include.promotion.states import CHAMPION_ALIAS, AuditAction

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

HEALTH_ACTOR = "model-health"
MIN_VOLUME_WINDOW = 600  # seconds a new champion serves before its volume is judged
MAX_REASON = 1900  # an audit reason holds 2,000 characters


def window_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def load_reference(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The reference distribution the version's training run logged, or None (trained before references)."""
    folder = str(Path(ref.REFERENCE_ARTIFACT).parent)
    if not run_id:  # a version registered from a model with no run: nothing was logged for it
        return None
    if not any(a.path == ref.REFERENCE_ARTIFACT for a in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, ref.REFERENCE_ARTIFACT, tmp)
        return json.loads(Path(path).read_text())


def champion_since(name: str, version: str, rows: list[dict[str, Any]] | None = None) -> datetime | None:
    """When ``version`` last became the champion, by the audit log (not by a tag anyone could edit); ``rows``: the
    model's audit rows when already read."""
    from include.promotion.audit.replay import status_after
    from include.promotion.states import Status

    rows = audit.rows(name) if rows is None else rows
    served = [r for r in rows if str(r["version"]) == version and status_after(r) == Status.PRODUCTION]
    return served[-1]["created_at"] if served else None


def gather(
    cfg: ModelConfig, version: str, run_id: str, now: datetime, client: MlflowClient, served_since: datetime | None
) -> dict[str, Any]:
    """The window's figures of the champion ``version``: volume, live metrics, drift, and the verdict.

    The window starts when the version became champion (``served_since``) if that is later: its predictions only,
    and the volume minimum in proportion to the time it has served (not judged in its first ``MIN_VOLUME_WINDOW``)."""
    health = cfg.health
    assert health is not None
    since = now - timedelta(seconds=health.window)
    served = health.window if served_since is None else (now - served_since).total_seconds()
    if served < health.window:
        since = max(since, served_since)
    conn = connect()
    try:
        predictions = queries.champion_predictions(conn, cfg.name, version, since, now)
        labels_conn = conn if health.conn_id == DEFAULT_CONN_ID else connect(health.conn_id)
        try:
            query = health.labels_query or queries.default_labels_query(settings.labels_table())
            labels = queries.labels_for(labels_conn, cfg.name, query, list(predictions.scores))
        finally:
            if labels_conn is not conn:
                labels_conn.close()
    finally:
        conn.close()
    labelled = [(labels[r], s, d) for r, (s, d) in predictions.scores.items() if r in labels]
    metrics = judging.live_metrics([x[0] for x in labelled], [x[1] for x in labelled], [x[2] for x in labelled])
    reference = load_reference(client, run_id)
    drift = None
    if reference is not None:
        drift = ref.drift(reference, predictions.features, [s for s, _ in predictions.scores.values()])
    share = min(1.0, max(0.0, served / health.window))
    volume_minimum = None if served < MIN_VOLUME_WINDOW else math.ceil(health.min_predictions * share)
    label = window_label(health.window) if share >= 1 else f"{window_label(int(served))} (champion since then)"
    verdict = judging.judge(health, cfg.gates, predictions.total, metrics, drift, label, volume_minimum)
    return {
        "since": since,
        "until": now,
        "predictions": predictions.total,
        "metrics": judging.rounded(metrics),
        "drift": judging.rounded(drift or {}),
        "verdict": verdict,
    }


def check_model(cfg: ModelConfig, run: RunRef, now: datetime | None = None) -> dict[str, Any]:
    """Check one model (its config has a ``health`` section); return what was found and done."""
    client = mlflow_client.client()
    champion = mlflow_client.get_alias(client, cfg.name, CHAMPION_ALIAS)
    if champion is None:
        log.info("%s: no champion, nothing to check", cfg.name)
        return {"model": cfg.name, "status": "no_champion", "findings": [], "retrain": False}
    version = str(champion.version)
    rows = audit.rows(cfg.name)  # read once: this run's earlier finding, and when the champion began to serve
    if (earlier := finding_of_this_run(rows, run)) and earlier["version"] != version:
        # a retry after this run's rollback: the version it found degraded no longer serves; judge nothing new
        log.info(
            "%s: this run already found v%s degraded and acted; v%s serves now", cfg.name, earlier["version"], version
        )
        return {
            "model": cfg.name,
            "version": earlier["version"],
            "status": judging.DEGRADED,
            "findings": [earlier["reason"]],
            "opened": True,
            "closed": False,
            "retrain": False,
            "action": f"done by this run's first try: v{version} is the champion now",
        }
    served_since = champion_since(cfg.name, version, rows)
    figures = gather(cfg, version, champion.run_id, now or datetime.now(UTC), client, served_since)
    verdict: judging.Verdict = figures["verdict"]
    change = Change.by(run, HEALTH_ACTOR)
    conn = connect()
    try:
        history.record(
            conn,
            {
                "model_name": cfg.name,
                "version": version,
                "status": verdict.status,
                "window_start": figures["since"],
                "window_end": figures["until"],
                "predictions": figures["predictions"],
                "labelled": figures["metrics"]["labelled"],
                "metrics": figures["metrics"],
                "drift": figures["drift"],
                "findings": verdict.findings + verdict.notes,
                "dag_id": run.dag_id,
                "run_id": run.run_id,
            },
        )
    finally:
        conn.close()
    for note in verdict.notes:
        log.info("%s v%s: %s", cfg.name, version, note)
    opened, closed = record_judgement(cfg.name, version, verdict, change)
    result: dict[str, Any] = {
        "model": cfg.name,
        "version": version,
        "status": verdict.status,
        "predictions": figures["predictions"],
        "metrics": figures["metrics"],
        "drift": figures["drift"],
        "findings": verdict.findings,
        "notes": verdict.notes,
        "opened": opened,
        "closed": closed,
        "retrain": False,
        "action": None,
    }
    if opened:
        result["action"] = act(cfg, version, verdict, change, run, result)
    elif closed:
        from include.promotion.notify import alerts as notifiers

        notifiers.alert_health(cfg, [f"{cfg.name} v{version} is healthy again: {_summary(figures)}"], recovered=True)
    elif verdict.findings:
        log.warning("%s v%s: still degraded (finding open, alerted before): %s", cfg.name, version, verdict.findings)
    return result


def finding_of_this_run(rows: list[dict[str, Any]], run: RunRef) -> dict[str, Any] | None:
    """The ``health_degraded`` row an earlier try of this run wrote, if any, among the model's audit ``rows``."""
    found = [
        r
        for r in rows
        if r["action"] == AuditAction.HEALTH_DEGRADED and r["dag_id"] == run.dag_id and r["run_id"] == run.run_id
    ]
    return found[-1] if found else None


def record_judgement(name: str, version: str, verdict: judging.Verdict, change: Change) -> tuple[bool, bool]:
    """(opened, closed): whether this run opened a finding on ``version`` (also when a retry of this run finds the
    row it wrote) or closed one. Under the model's lock, so overlapping runs record a finding once."""
    with audit.model_lock(name, change.change_id) as book:
        if book.recorded(AuditAction.HEALTH_DEGRADED, version):
            return True, False
        if book.recorded(AuditAction.HEALTH_RECOVERED, version):
            return False, True
        is_open = version in audited_state(name, book.rows()).degraded
        if verdict.findings and not is_open:
            reason = "; ".join(verdict.findings)[:MAX_REASON]
            book.record(change.entry(name, version, AuditAction.HEALTH_DEGRADED, None, None, reason))
            return True, False
        if verdict.status == judging.HEALTHY and is_open:
            reason = "a judged window without findings"
            book.record(change.entry(name, version, AuditAction.HEALTH_RECOVERED, None, None, reason))
            return False, True
    return False, False


def act(
    cfg: ModelConfig, version: str, verdict: judging.Verdict, change: Change, run: RunRef, result: dict[str, Any]
) -> str:
    """Apply ``health.on_breach`` to a new finding, alert on-call with what was done, and say it."""
    from include.promotion.notify import alerts as notifiers

    assert cfg.health is not None
    on_breach = cfg.health.on_breach
    if not verdict.actionable:
        outcome = "alerted only (a volume finding: neither a rollback nor a retrain brings traffic back)"
    elif on_breach == "rollback":
        outcome = roll_back(cfg, version, verdict, change, run)
    elif on_breach == "retrain":
        result["retrain"] = True
        outcome = f"a retraining run of {cfg.name} was requested (an event on its retrain Asset)"
    else:
        outcome = "alerted only (health.on_breach: alert)"
    lines = [
        f"{cfg.name} v{version} is degraded in production:",
        *(f"  - {f}" for f in verdict.findings),
        f"Done: {outcome}.",
        *how_to_respond(cfg.name),
    ]
    notifiers.alert_health(cfg, lines)
    return outcome


def roll_back(cfg: ModelConfig, version: str, verdict: judging.Verdict, change: Change, run: RunRef) -> str:
    """Restore the previous champion (the rollback DAG's own code, re-checked under the model's lock), unless it
    was itself found degraded; then tell the deployers. Returns what happened, refusals included."""
    from include.promotion.errors import PromotionError
    from include.promotion.notify import deploy_events
    from include.promotion.registry import rollback

    reason = ("model-health: " + "; ".join(verdict.findings))[:MAX_REASON]
    try:
        plan = rollback.plan_rollback(cfg.name, None)
        if plan.target_version in audited_state(cfg.name, audit.rows(cfg.name)).degraded:
            return (
                f"the automatic rollback was refused: the previous champion v{plan.target_version} was itself found "
                "degraded in production and never recovered; choose a version with model_rollback"
            )
        rollback.rollback(plan, reason, change)
    except PromotionError as exc:  # nothing to go back to, a rolled-back target, the champion moved: said, not done
        return f"the automatic rollback was refused: {exc}"
    outcome = f"rolled back automatically: v{plan.target_version} is the champion again (v{version} rolled back)"
    try:
        deploy_events.notify_deployers(cfg.name, run)
    except PromotionError as exc:  # alerted by notify_deployers itself; the rollback stands
        outcome += f"; deployers were not all told: {exc}"
    return outcome


def how_to_respond(name: str) -> list[str]:
    base = (os.environ.get("AIRFLOW__API__BASE_URL") or "").rstrip("/")
    return [
        f"Production health of {name}: {base}/promotion/models/{name}",
        f"Roll back: {base}/promotion/models/{name}/rollback (or trigger model_rollback with model_name={name}).",
    ]


def _summary(figures: dict[str, Any]) -> str:
    metrics = figures["metrics"]
    shown = [f"{k} {metrics[k]:.3f}" for k in ("roc_auc", "recall", "precision") if metrics.get(k) is not None]
    return f"{figures['predictions']} predictions, {metrics['labelled']} labelled" + (
        f", {', '.join(shown)}" if shown else ""
    )
