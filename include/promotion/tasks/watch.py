"""The registry watch's task: reconcile every governed model (or one) and fail while drift lasts."""

from __future__ import annotations

import logging
from typing import Any

from include.promotion.airflow_run import RunRef
from include.promotion.config import get_model_config, load_model_configs
from include.promotion.errors import RegistryDrift
from include.promotion.notify import alerts as notifiers
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.watch import reconcile as watch

log = logging.getLogger(__name__)


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
