"""The registry watch's task: reconcile every governed model (or one) and fail while drift lasts."""

from __future__ import annotations

import logging
from typing import Any

from include.promotion import settings
from include.promotion.airflow_run import RunRef
from include.promotion.config import get_model_config, load_model_configs
from include.promotion.errors import InputRejected, PromotionError, RegistryDrift
from include.promotion.inputs import clean_reason
from include.promotion.notify import alerts as notifiers
from include.promotion.post_promotion.check import CHECK_ACTOR, check_outcome_recorded
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.tasks.rollback import require_on_call
from include.promotion.watch import coverage
from include.promotion.watch import reconcile as watch

log = logging.getLogger(__name__)

CONFIG_MARKER = "MODEL CONFIG"  # what on-call greps for, beside REGISTRY DRIFT: a model watched without its config


def acknowledge_deletion(model_name: str | None, version: str | None, reason: str | None, run: RunRef) -> str:
    """On-call accepts the loss of an old version deleted out of band (``acknowledge_deleted_version``): an audit
    row ``drift_acknowledged`` with who (Airflow's triggering user, checked against the model's on-call:
    ``rollback.on_call``, default its reviewers) and why. Anyone else, or bad input, is refused before anything is
    written."""
    name, version = (model_name or "").strip(), (version or "").strip()
    if not name:
        raise InputRejected("acknowledge_deleted_version needs model_name: whose version it is. Nothing was recorded.")
    if not (version.isdigit() and len(version) <= 10):
        raise InputRejected(f"acknowledge_deleted_version must be a version number, got {version[:20]!r}.")
    why = clean_reason(reason, "acknowledge_reason")
    user = run.triggered_by
    require_on_call(name, user, f"acknowledge a deleted version of '{name}'", "Nothing was recorded.")
    closed = watch.acknowledge_deleted(name, version, why or "", lifecycle.Change.by(run, user))
    log.info("%s: %s, acknowledged by %s: %s", name, closed, user, why)
    return closed


def watch_registry(
    model_name: str | None, run: RunRef, acknowledge: str | None = None, acknowledge_reason: str | None = None
) -> dict[str, Any]:
    """Compare the registry with the audit log for one model (or all); record, alert, repair; fail on drift.

    Models without a config that loads (a broken file, audit rows but no file) are checked too, read-only
    (``watch.coverage``). ``acknowledge``: first record on-call's acceptance of that deleted version
    (``acknowledge_deletion``).
    """
    acknowledged = acknowledge_deletion(model_name, acknowledge, acknowledge_reason, run) if acknowledge else None
    loaded = load_model_configs()
    configs = loaded.models
    name = (model_name or "").strip()
    orphans = coverage.unconfigured(loaded, only=name or None)
    if name and name not in configs and name not in orphans:
        get_model_config(name)  # UnknownModel, naming the models there are
    models = [name] if name else sorted({*configs, *orphans})
    change = lifecycle.Change.by(run, watch.WATCH_ACTOR)
    checker = lifecycle.Change.by(run, CHECK_ACTOR)
    client = mlflow_client.client()
    reports, errors = [], []
    for model in models:
        cfg, orphan = configs.get(model), orphans.get(model)
        try:
            # never restore what no loaded config asks to restore
            report = watch.watch_model(model, change, cfg is not None and cfg.on_drift == "restore", client)
        except Exception as exc:  # one unreadable model must not keep the others unchecked
            log.exception("registry watch: could not check %s", model)
            errors.append(f"{model}: {exc}")
            continue
        reports.append(report)
        lines = watch.describe(report)
        if cfg is None:  # watched without a config (``orphans``): read-only, alerted in this log
            # (a broken file of a model never registered is skipped: model_config_errors shows it)
            if orphan is not None and not report.skipped:
                log.error("%s %s: %s", CONFIG_MARKER, model, orphan.problem)
                for line in lines:
                    log.error("REGISTRY DRIFT %s", line)
                if orphan.fails_the_run:
                    errors.append(f"{model}: {orphan.problem}")
            continue
        try:  # the backstop for a promotion whose check never ran (its run's notify_deployers finds it first)
            check_outcome_recorded(cfg, checker, grace=settings.unchecked_promotion_minutes())
        except PromotionError as exc:
            errors.append(f"{model}: {exc}")
        if report.recorded or report.restored:
            notifiers.alert_drift(cfg, lines)
        else:
            for line in lines:
                log.warning("%s", line)
    result = watch.summary(reports)
    if acknowledged:
        result["acknowledged"] = acknowledged
    if orphans:
        result["unconfigured"] = {model: orphan.kind for model, orphan in sorted(orphans.items())}
    if not name:  # a full sweep, every few minutes: also the prediction log's retention
        result["prediction_log_deleted"] = prune_prediction_log()
    log.info("registry watch: %s", result)
    problems = []
    if failed := [r.model_name for r in reports if r.failed]:
        problems.append(f"the registry differs from the audit log for {', '.join(failed)} (see the log above)")
    if errors:
        problems.append(f"could not check {'; '.join(errors)}")
    if problems:
        raise RegistryDrift("; ".join(problems))
    return result


def prune_prediction_log() -> int | None:
    """Delete prediction-log rows older than ``PROMOTION_PREDICTION_RETENTION_DAYS``, in bounded batches.

    Here because the watch's full sweep already runs on the workers every few minutes whatever the models do (a
    promotion run may not come for weeks), so each sweep deletes a little and the log never piles up; it never fails
    the watch (None: not done this time, the next sweep tries again).
    """
    from datetime import UTC, datetime, timedelta

    from include.promotion import settings
    from include.promotion.audit.schema import connect
    from include.promotion.shadow import queries

    try:
        conn = connect()
        try:
            if not queries.table_readable(conn):
                return None
            cutoff = datetime.now(UTC) - timedelta(days=settings.prediction_retention_days())
            deleted = queries.delete_older_than(conn, cutoff)
        finally:
            conn.close()
    except Exception:  # housekeeping: the registry check's result stands; the next sweep tries again
        log.warning("registry watch: could not prune the prediction log", exc_info=True)
        return None
    if deleted:
        log.info("registry watch: deleted %d prediction-log rows logged before %s", deleted, cutoff.isoformat())
    return deleted
