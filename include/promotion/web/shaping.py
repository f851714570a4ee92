"""Registry entries and audit events shaped into what the pages show (pure: unit-tested without services).

Who did what comes from the audit log (only workers write it, hash-chained) rather than from tags anyone with
registry write access could set; tags fill in only what the log does not hold (a version's lineage).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.promotion.audit.queries import CHECK_DEMOTED, ENDED_BY, SERVES_AFTER, Event, Integrity
from include.promotion.config import METRICS
from include.promotion.shadow.evidence import page_line
from include.promotion.states import METRIC_TAG_PREFIX, AuditAction, Status, Tag
from include.promotion.web.views import Challenger, Champion, FailedRollback, LastRun, VersionRow

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


def millis(value: Any) -> datetime | None:
    """A registry timestamp (milliseconds since the epoch) as a time in UTC."""
    return datetime.fromtimestamp(int(value) / 1000, UTC) if value else None


def metrics_of(tags: Mapping[str, str]) -> dict[str, float]:
    """The metrics written at registration (tags ``metric_<name>``), as numbers; unreadable ones left out."""
    found = {}
    for metric in METRICS:
        try:
            found[metric] = float(tags[f"{METRIC_TAG_PREFIX}{metric}"])
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _latest(events: Mapping[tuple[str, str], Event], version: str, actions: Iterable[str]) -> Event | None:
    found = [e for a in actions if (e := events.get((version, str(a)))) is not None]
    # the row written last (ids are the audit log's order; ``at`` is only the writer's clock)
    return max(found, key=lambda e: (e.id or 0, e.at or datetime.min.replace(tzinfo=UTC)), default=None)


def version_row(mv: ModelVersion, aliases: Mapping[str, str], events: Mapping[tuple[str, str], Event]) -> VersionRow:
    """One version's line in the report: registry tags for lineage, the audit log for who did what."""
    tags = dict(mv.tags or {})
    version = str(mv.version)
    return VersionRow(
        version=version,
        status=tags.get(Tag.STATUS, Status.REGISTERED),
        stage=mv.current_stage or "None",
        aliases=tuple(sorted(a for a, v in aliases.items() if str(v) == version)),
        metrics=metrics_of(tags),
        data_version=tags.get(Tag.DATA_VERSION),
        git_commit=tags.get(Tag.GIT_COMMIT),
        dag_id=tags.get(Tag.DAG_ID),
        run_id=tags.get(Tag.RUN_ID),
        created_at=millis(mv.creation_timestamp),
        promoted=_latest(events, version, SERVES_AFTER),
        approved=events.get((version, str(AuditAction.APPROVE))),
        ended=_latest(events, version, (*ENDED_BY, CHECK_DEMOTED)),
        shadow=page_line(tags),
    )


def champion_of(
    mv: ModelVersion | None, events: Mapping[tuple[str, str], Event], headline_metric: str
) -> Champion | None:
    """The champion's line on the overview: since when it serves, who approved it and why, its headline metric."""
    if mv is None:
        return None
    version = str(mv.version)
    approved = events.get((version, str(AuditAction.PROMOTE))) or events.get((version, str(AuditAction.APPROVE)))
    serving = _latest(events, version, SERVES_AFTER)
    restored = serving if serving is not None and serving.action != AuditAction.PROMOTE else None
    tags = dict(mv.tags or {})
    return Champion(
        version=version,
        since=serving.at if serving is not None else None,
        approved_by=approved.actor if approved is not None else tags.get(Tag.PRODUCTION_APPROVER),
        approval_reason=approved.reason if approved is not None else None,
        restored=restored,
        headline_metric=headline_metric,
        headline_value=metrics_of(tags).get(headline_metric),
    )


def challenger_of(mv: ModelVersion | None, events: Mapping[tuple[str, str], Event]) -> Challenger | None:
    if mv is None:
        return None
    version, tags = str(mv.version), dict(mv.tags or {})
    staged = events.get((version, str(AuditAction.STAGE)))
    return Challenger(
        version=version,
        waiting_since=staged.at if staged is not None else None,
        dag_id=tags.get(Tag.DAG_ID),
        run_id=tags.get(Tag.RUN_ID),
    )


def alerts_for(
    model: str,
    registry_champion: str | None,
    audited_champion: str | None,
    open_drift: Iterable[str],
    last_run: LastRun | None,
    claim_refused: str | None,
    health_findings: Iterable[Mapping[str, Any]] = (),
    failed_rollback: FailedRollback | None = None,
    checked: Integrity | None = None,
) -> tuple[str, ...]:
    """What someone responsible for the model should look at now."""
    broken = checked is not None and checked.problem
    alerts = []
    if broken:
        alerts.append(
            f"the audit history does not verify: {checked.problem}. What it says is not trusted; on a worker run "
            f"`python -m include.promotion.audit.schema verify --model {model}`"
        )
    alerts += [f"registry drift on record: {reason}" for reason in sorted(open_drift)]
    if checked is not None and checked.unverified:
        alerts.append(
            f"{checked.unverified} audit row(s) after the chain head anchored in the registry: not verified here "
            "(a change in progress, or rows not written by the pipeline); the registry watch checks their MACs"
        )
    alerts += [
        f"production health: the champion v{f['version']} is degraded ({f['reason']})"
        for f in health_findings
        if str(f["version"]) == registry_champion
    ]
    if registry_champion != audited_champion and not broken:  # a log that does not verify says no champion
        alerts.append(
            f"the registry's champion is {_v(registry_champion)} but the audit log's is {_v(audited_champion)}: "
            "see the model_registry_watch DAG"
        )
    if last_run is not None and last_run.state == "failed":
        alerts.append(f"the last retraining run failed ({last_run.run_id})")
    if failed_rollback is not None:
        why = failed_rollback.note or "see its task logs"
        alerts.append(f"the last rollback run failed ({failed_rollback.run_id}): {why}")
    if claim_refused:
        alerts.append(f"the registered model was writable by others ({claim_refused}): an MLflow admin must fix it")
    return tuple(alerts)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"
