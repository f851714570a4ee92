"""The bodies of ``model_registry_retention``'s tasks: which models have a policy, one model's run, the verdict."""

from __future__ import annotations

import logging
from typing import Any

from include.promotion.airflow_run import RunRef
from include.promotion.config import get_model_config, load_model_configs
from include.promotion.errors import ModelConfigError, RegistryStateError
from include.promotion.registry.lifecycle import Change
from include.promotion.retention import apply, runs

log = logging.getLogger(__name__)


def models_with_policy(model_name: str | None) -> list[str]:
    """The governed models with a ``retention`` section (or the one asked for, which must have one)."""
    name = (model_name or "").strip()
    if name:
        if get_model_config(name).retention is None:
            raise ModelConfigError(
                f"model '{name}' has no 'retention' section in its config, so none of its versions is ever deleted: "
                "add one (see docs/retention.md) or leave model_name empty to apply every model's policy."
            )
        return [name]
    return sorted(n for n, cfg in load_model_configs().models.items() if cfg.retention is not None)


def apply_policy(model_name: str, run: RunRef) -> dict[str, Any]:
    """Plan (dry_run) or apply (enforce) one model's policy; the summary is the task's result."""
    policy = get_model_config(model_name).retention
    if policy is None:  # the config changed since the list was made
        raise ModelConfigError(f"model '{model_name}' no longer has a 'retention' section: nothing was done.")
    change = Change(actor=apply.RETENTION_ACTOR, dag_id=run.dag_id, run_id=run.run_id)
    report = apply.apply_retention(model_name, policy, lambda: runs.open_runs(model_name), change)
    result = report.as_dict()
    log.info("%s: retention %s", model_name, result)
    if report.conflicts:
        raise RegistryStateError(
            f"{model_name}: versions recorded as deleted are protected now and were left in place: "
            f"{'; '.join(report.conflicts)}"
        )
    return result


def verdict(results: list[dict[str, Any]] | None, expected: list[str]) -> dict[str, Any]:
    """The run's outcome: fails, naming them, when a model's policy could not be applied; otherwise the totals."""
    results = [r for r in results or [] if r]
    done = {r["model"] for r in results}
    summary = {
        "models": len(results),
        "removed": sum(r.get("removed", 0) for r in results),
        "would_remove": sum(r.get("to_remove", 0) for r in results if r.get("mode") == "dry_run"),
    }
    log.info("registry retention: %s", summary)
    if missing := sorted(set(expected) - done):
        raise RegistryStateError(
            f"the retention policy could not be applied to {', '.join(missing)} (see its failed apply_retention task)"
        )
    return summary
