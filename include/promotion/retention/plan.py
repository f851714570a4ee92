"""Which versions of a model the retention policy keeps and which it removes, with the reason for each.

A pure function over what the registry holds (``RegistryVersion``), what the audit log records (its rows) and what
Airflow says is still in flight (``OpenRuns``): the same inputs give the same plan, so a dry run shows exactly what an
enforcing run would do, and ``apply`` can plan again under the model's lock before it deletes anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from include.promotion.audit.replay import audited_state, status_after, version_order
from include.promotion.config_sections import Retention
from include.promotion.states import AuditAction, Status

SHOWN_DECISIONS = 200  # the task log and the summary list at most this many versions of each kind


@dataclass(frozen=True)
class RegistryVersion:
    """One version as the registry holds it."""

    version: str
    created_at: datetime  # set by the MLflow server
    stage: str = "None"
    aliases: tuple[str, ...] = ()
    run_id: str = ""  # the MLflow run it was registered from
    source: str = ""  # what it was registered from (``models:/m-<id>``: a logged model)


@dataclass(frozen=True)
class OpenRuns:
    """What Airflow says is still in flight for one model (read when the plan is made)."""

    # ``target_version`` of each queued or running ``model_rollback`` run of this model
    rollback_targets: frozenset[str] = frozenset()
    # run ids of the model's promotion DAG runs not yet finished (one may be waiting at its approval gate)
    promotion_runs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    version: str
    keep: bool
    reason: str
    rule: str  # the reason's kind, for counting: a ``PROTECTIONS`` key, or ``remove`` / ``resume`` / ...
    # an earlier run recorded this version's deletion and stopped before the registry call: finish it, record nothing
    resume: bool = False
    # recorded as deleted by an earlier run, but protected now: left in place; a person looks
    conflict: bool = False


@dataclass(frozen=True)
class RetentionPlan:
    model_name: str
    policy: Retention
    decisions: tuple[Decision, ...]

    @property
    def removals(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def conflicts(self) -> list[Decision]:
        return [d for d in self.decisions if d.conflict]

    def summary(self) -> dict[str, Any]:
        """Counts by reason, and the versions it removes (at most ``SHOWN_DECISIONS``): the run's report."""
        kept: dict[str, int] = {}
        for d in self.decisions:
            if d.keep:
                kept[d.rule] = kept.get(d.rule, 0) + 1
        removals = self.removals
        return {
            "model": self.model_name,
            "mode": self.policy.mode,
            "action": self.policy.action,
            "versions": len(self.decisions),
            "kept": len(self.decisions) - len(removals),
            "kept_because": dict(sorted(kept.items())),
            "to_remove": len(removals),
            "to_remove_versions": [d.version for d in removals[:SHOWN_DECISIONS]],
            "conflicts": [f"v{d.version}: {d.reason}" for d in self.conflicts[:SHOWN_DECISIONS]],
        }


def served_until(rows: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, datetime]:
    """{version: when it last stopped serving in production (``now`` for the version serving)}, from the audit rows
    (oldest first): a version serves from the row that puts it in production to the row that puts another one there
    or takes it out (replay's rules)."""
    until: dict[str, datetime] = {}
    current: str | None = None
    for row in rows:
        status = status_after(row)
        if status is None:
            continue
        version, at = str(row["version"]), row["created_at"]
        if status == Status.PRODUCTION:
            if current is not None and current != version:
                until[current] = at
            current = version
            until[version] = at
        elif version == current:
            until[version] = at
            current = None
    if current is not None:
        until[current] = now
    return until


def plan_retention(
    model_name: str,
    policy: Retention,
    versions: Sequence[RegistryVersion],
    rows: Sequence[Mapping[str, Any]],
    open_runs: OpenRuns,
    now: datetime,
    champion_promoted_over: str | None = None,
    limit: int | None = None,
) -> RetentionPlan:
    """Keep or remove each version in the registry, with the first reason that applies.

    ``rows`` are the model's audit rows, oldest first; ``champion_promoted_over`` the champion's ``promoted_over`` tag
    (the version a rollback without a target restores, as the rollback reads it); ``limit`` caps the removals (default
    ``policy.max_per_run``): the oldest go first, the others wait for the next run.
    """
    state = audited_state(model_name, rows)
    present = {v.version for v in versions}
    default_targets = {t for t in (champion_promoted_over, state.previous_champion(present.__contains__)) if t}
    served = served_until(rows, now)
    registered_by = {str(r["version"]): r.get("run_id") for r in rows if r["action"] == AuditAction.REGISTER}
    archived = {str(r["version"]) for r in rows if r["action"] == AuditAction.RETENTION_ARCHIVE}
    newest = {v.version for v in sorted(versions, key=lambda v: version_order(v.version))[-policy.keep_last :]}
    served_since = now - timedelta(days=policy.keep_served_days)
    young_since = now - timedelta(days=policy.keep_days)

    def protection(v: RegistryVersion) -> tuple[str, str] | None:
        if v.aliases:
            return "alias", f"holds alias {', '.join(repr(a) for a in sorted(v.aliases))}"
        if v.version == state.champion:
            return "champion", "the audited champion"
        if v.version == state.challenger or state.statuses.get(v.version) == Status.STAGING:
            return "awaiting_approval", "awaiting approval"
        if (run_id := registered_by.get(v.version)) and run_id in open_runs.promotion_runs:
            return "open_promotion_run", f"registered by promotion run {run_id}, still open"
        if v.version in open_runs.rollback_targets:
            return "open_rollback_target", "the target of an open model_rollback run"
        if v.version in default_targets:
            return "default_rollback_target", "the version a rollback without target_version restores"
        if v.version in served and served[v.version] >= served_since:
            return (
                "served_recently",
                f"served in production until {served[v.version]:%Y-%m-%d}, within keep_served_days",
            )
        if v.version in newest:
            return "keep_last", f"among the newest {policy.keep_last} (keep_last)"
        if v.created_at >= young_since:
            return "keep_days", f"registered {v.created_at:%Y-%m-%d}, within keep_days"
        return None

    decisions: list[Decision] = []
    for v in sorted(versions, key=lambda v: version_order(v.version)):
        found = protection(v)
        if v.version in state.deleted:
            if found is None:
                why = "deletion recorded by an earlier run: finishing it"
                decisions.append(Decision(v.version, False, why, "resume", resume=True))
            else:
                why = f"recorded as deleted by an earlier run, but now {found[1]}: left in place, investigate"
                decisions.append(Decision(v.version, True, why, "conflict", conflict=True))
        elif found is not None:
            decisions.append(Decision(v.version, True, found[1], found[0]))
        elif policy.action == "archive" and v.version in archived:
            decisions.append(Decision(v.version, True, "archived by retention earlier", "archived"))
        else:
            history = f"served until {served[v.version]:%Y-%m-%d}" if v.version in served else "never served"
            why = f"registered {v.created_at:%Y-%m-%d}, older than keep_days={policy.keep_days:g}; {history}"
            decisions.append(Decision(v.version, False, why, "remove"))
    return RetentionPlan(model_name, policy, tuple(_capped(decisions, policy.max_per_run if limit is None else limit)))


def _capped(decisions: list[Decision], limit: int) -> list[Decision]:
    """At most ``limit`` removals: unfinished deletions first, then the oldest versions; the rest kept for now."""
    order = [d for d in decisions if not d.keep and d.resume] + [d for d in decisions if not d.keep and not d.resume]
    chosen = {d.version for d in order[: max(0, limit)]}
    return [
        d
        if d.keep or d.version in chosen
        else Decision(d.version, True, "over max_per_run: left for the next run", "max_per_run")
        for d in decisions
    ]
