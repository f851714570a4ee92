"""The retention policy applied to one model: planned again under the model's lock, then each removal recorded and made.

Order of one deletion, under the lock: the ``retention_delete`` row first, then the registry call (a deletion cannot
be done again to find out what it was). A run that crashes between the two leaves a version the audit log records as
deleted; the next run (or the retry) finds the row and finishes the deletion without a second row. A version that is
protected by then is left in place and reported. An archive is the registry first, then its row (as the lifecycle's
steps): repeating its writes is harmless, and the row marks it done.

Nothing is written (registry or audit log) while the model's audit chain does not verify, in a dry run, or by a
policy the config loader refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.promotion import settings
from include.promotion.audit import log as audit
from include.promotion.config_sections import Retention
from include.promotion.errors import AuditLogError
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.lifecycle import Change, now_iso
from include.promotion.retention.plan import (
    SHOWN_DECISIONS,
    Decision,
    OpenRuns,
    RegistryVersion,
    RetentionPlan,
    plan_retention,
)
from include.promotion.states import CHAMPION_ALIAS, AuditAction, Stage, Tag
from include.promotion.watch.reconcile import read_registry

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RETENTION_ACTOR = "registry-retention"
BATCH = 200  # removals per hold of the model's lock: a promotion or rollback waits at most one batch
ARCHIVED_TAG = "retention_archived_timestamp"


@dataclass
class RetentionReport:
    """What one run planned and did for one model."""

    model_name: str
    plan: dict[str, Any] = field(default_factory=dict)  # the first plan's summary (what a dry run reports)
    removed: list[str] = field(default_factory=list)
    artifacts_deleted: list[str] = field(default_factory=list)  # logged model ids marked deleted
    conflicts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.plan,
            "removed": len(self.removed),
            "removed_versions": self.removed[:SHOWN_DECISIONS],
            "artifacts_deleted": len(self.artifacts_deleted),
            "conflicts": self.conflicts[:SHOWN_DECISIONS],
        }


def registry_versions(client: MlflowClient, name: str) -> tuple[list[RegistryVersion], str | None]:
    """The model's versions (one aliases read, one paged search) and the champion's ``promoted_over`` tag."""
    found = read_registry(client, name)
    if not found.exists:
        return [], None
    aliases: dict[str, list[str]] = {}
    for alias, version in found.aliases.items():
        aliases.setdefault(version, []).append(alias)
    versions = [
        RegistryVersion(
            version=v,
            created_at=datetime.fromtimestamp(found.created_ms[v] / 1000, UTC),
            stage=found.stages.get(v, Stage.NONE),
            aliases=tuple(sorted(aliases.get(v, []))),
            run_id=found.origins.get(v, ("", ""))[0],
            source=found.origins.get(v, ("", ""))[1],
        )
        for v in found.statuses
    ]
    promoted_over = None
    if champion := found.aliases.get(CHAMPION_ALIAS):
        mv = mlflow_client.get_version(client, name, champion)
        promoted_over = (mv.tags or {}).get(Tag.PROMOTED_OVER) or None if mv is not None else None
    return versions, promoted_over


def apply_retention(
    name: str,
    policy: Retention,
    open_runs: Callable[[], OpenRuns],
    change: Change,
    client: MlflowClient | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RetentionReport:
    """Plan (and, in ``enforce`` mode, apply) the policy to one model; return what was planned and done.

    Each batch of removals is planned under the model's lock from the registry and the audit rows read under that
    same lock, and made before the lock is released: nothing else of the package can change the model in between.
    ``open_runs`` is asked again for each batch (a rollback triggered meanwhile protects its target).
    Raises ``AuditLogError`` (nothing written) while the model's audit chain does not verify.
    """
    client = client or mlflow_client.client()
    report = RetentionReport(name)
    owners: dict[str, str | None] = {}  # logged model id -> the run that logged it (one lookup per model per run)
    while True:
        with audit.model_lock(name, change.change_id) as log_:
            rows = log_.rows()
            if (verdict := log_.verdict(rows, client)).problem is not None:  # links, MACs and the anchored head
                raise AuditLogError(
                    f"{verdict.problem}. The retention policy deletes nothing while the audit log of '{name}' does not "
                    "verify: investigate (`python -m include.promotion.audit.schema verify --model "
                    f"{name}`) and restore the log from a backup; nothing was changed."
                )
            versions, promoted_over = registry_versions(client, name)
            budget = policy.max_per_run - len(report.removed)
            plan = plan_retention(name, policy, versions, rows, open_runs(), now(), promoted_over, budget)
            if not report.plan:
                report.plan = plan.summary()
                _log_plan(plan)
            report.conflicts = [f"v{d.version}: {d.reason}" for d in plan.conflicts]
            batch = plan.removals[:BATCH] if policy.mode == "enforce" else []
            by_number = {v.version: v for v in versions}
            for decision in batch:
                version = by_number[decision.version]
                if policy.action == "delete":
                    if model_id := _delete(client, log_, name, version, decision, change, owners):
                        report.artifacts_deleted.append(model_id)
                else:
                    _archive(client, log_, name, version, decision, change)
                report.removed.append(decision.version)
        if not batch or len(report.removed) >= policy.max_per_run:
            return report


def _log_plan(plan: RetentionPlan) -> None:
    summary = plan.summary()
    verb = "would remove" if plan.policy.mode == "dry_run" else "removes"
    log.info(
        "%s: %s, %s %d of %d versions (%s); kept because: %s",
        plan.model_name,
        plan.policy.mode,
        verb,
        summary["to_remove"],
        summary["versions"],
        plan.policy.action,
        summary["kept_because"],
    )
    for decision in plan.removals[:SHOWN_DECISIONS]:
        log.info("%s v%s: %s %s (%s)", plan.model_name, decision.version, verb, plan.policy.action, decision.reason)
    for decision in plan.conflicts:
        log.warning("%s v%s: %s", plan.model_name, decision.version, decision.reason)


def _delete(
    client: MlflowClient,
    log_: audit.AuditLog,
    name: str,
    version: RegistryVersion,
    decision: Decision,
    change: Change,
    owners: dict[str, str | None],
) -> str | None:
    """Record, then delete one version and mark its own logged model deleted; return that model's id, if any.

    The version is as the registry was read under the lock this runs in (the plan's reading)."""
    if not decision.resume:
        stage = _stage(version.stage)
        log_.record(change.entry(name, version.version, AuditAction.RETENTION_DELETE, stage, None, decision.reason))
    client.delete_model_version(name, version.version)
    return _delete_logged_model(client, version, owners)


def _delete_logged_model(client: MlflowClient, version: RegistryVersion, owners: dict[str, str | None]) -> str | None:
    """Mark the version's logged model deleted (``mlflow gc`` then frees its artifacts), only when it is the version's
    own: logged by the version's run, and no other version of any model registered from that run."""
    from mlflow.exceptions import MlflowException

    model_id = version.source.removeprefix("models:/") if version.source.startswith("models:/m-") else None
    if not model_id or not version.run_id:
        return None
    try:
        if model_id not in owners:
            owners[model_id] = client.get_logged_model(model_id).source_run_id
        if owners[model_id] != version.run_id:
            return None
        if client.search_model_versions(f"run_id = {mlflow_client.quote(version.run_id)}"):
            return None
        client.delete_logged_model(model_id)
    except MlflowException as exc:  # the version is gone either way; its artifacts stay until someone may delete them
        log.warning("v%s: its logged model %s was not deleted (%s)", version.version, model_id, exc)
        return None
    return model_id


def _archive(
    client: MlflowClient, log_: audit.AuditLog, name: str, version: RegistryVersion, decision: Decision, change: Change
) -> None:
    """Move one version to the Archived stage (its ``promotion_status`` stays: it is its history), then record it.

    The registry first, as the lifecycle's steps do: the row is what marks the version done, so a crash before it
    leaves a version the next run archives again (the same writes) and records once."""
    stage = _stage(version.stage)
    if settings.mirror_stages() and stage != Stage.ARCHIVED:
        mlflow_client.set_stage(client, name, version.version, Stage.ARCHIVED)
    mlflow_client.set_tags(client, name, version.version, {ARCHIVED_TAG: now_iso()})
    entry = change.entry(name, version.version, AuditAction.RETENTION_ARCHIVE, stage, Stage.ARCHIVED, decision.reason)
    log_.record(entry)


def _stage(stage: str) -> Stage | None:
    """A legacy stage as the audit row's ``from_stage`` (None: a value the package never writes)."""
    stage = stage or Stage.NONE
    return Stage(stage) if stage in set(Stage) else None
