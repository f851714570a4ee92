"""The bodies of ``model_health``'s tasks: which models to check, one model's check, and the run's verdict."""

from __future__ import annotations

import logging
from typing import Any

from include.promotion.airflow_run import RunRef
from include.promotion.assets import RETRAIN_ALIAS, retrain_asset_name
from include.promotion.config import get_model_config, load_model_configs
from include.promotion.errors import HealthCheckError, HealthDegraded
from include.promotion.health import check

log = logging.getLogger(__name__)


def models_to_check(model_name: str | None) -> list[str]:
    """The governed models with a ``health`` section (or the one asked for, which must have one)."""
    name = (model_name or "").strip()
    if name:
        cfg = get_model_config(name)
        if cfg.health is None:
            raise HealthCheckError(
                f"model '{name}' has no 'health' section in its config: add one (see the README's Production "
                "health) or leave model_name empty to check every model that has one."
            )
        return [name]
    return sorted(n for n, cfg in load_model_configs().models.items() if cfg.health is not None)


def check_model_health(model_name: str, run: RunRef, outlet_events: Any) -> dict[str, Any]:
    """Check one model; on a breach with ``health.on_breach: retrain``, add an event to its retrain Asset (sent
    when this task succeeds, which it does once the finding is on record: the run's verdict fails the run)."""
    result = check.check_model(get_model_config(model_name), run)
    if result["retrain"]:
        from airflow.sdk import Asset, AssetAlias

        outlet_events[AssetAlias(RETRAIN_ALIAS)].add(
            Asset(name=retrain_asset_name(model_name)), extra={"reason": "; ".join(result["findings"])[:500]}
        )
        log.info("%s: retraining requested through Asset %s", model_name, retrain_asset_name(model_name))
    return result


def verdict(results: list[dict[str, Any]] | None, expected: list[str]) -> dict[str, Any]:
    """The run's outcome: fails, naming them, while a checked champion is degraded or a model could not be checked
    (its mapped task failed: no result); otherwise a summary by status."""
    results = [r for r in results or [] if r]
    by_status: dict[str, list[str]] = {}
    for r in results:
        label = f"{r['model']} v{r['version']}" if r.get("version") else r["model"]
        by_status.setdefault(r["status"], []).append(label)
    checked = {r["model"] for r in results}
    unchecked = sorted(set(expected) - checked)
    problems = []
    if degraded := [r for r in results if r["status"] == "degraded"]:
        problems.append(
            "degraded in production: "
            + "; ".join(f"{r['model']} v{r['version']} ({r.get('action') or 'finding open'})" for r in degraded)
        )
    if unchecked:
        problems.append(f"could not be checked (see the failed check_model_health task): {', '.join(unchecked)}")
    summary = {status: sorted(names) for status, names in by_status.items()}
    log.info("model health: %s", summary)
    if problems:
        raise HealthDegraded("; ".join(problems))
    return summary
