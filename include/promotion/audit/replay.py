"""What the registry should look like, derived from the audit log alone.

Only workers write audit rows (the application role may INSERT and SELECT, nothing else, and rows are
hash-chained), so the log is the package's own record of every decision. ``audited_state`` replays a
model's rows into the state they imply: which version is the champion, which awaits approval, and the
``promotion_status`` of every version. The registry watch compares the registry with it; a rollback
whose champion version was deleted finds its target in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from include.promotion.states import AuditAction, Stage, Status

# The status a version has after each kind of row. Rows not listed change no version's state: a
# ``drift_detected`` row records a difference, a ``drift_restore`` row that it was repaired (back to what
# the earlier rows imply).
STATUS_AFTER: dict[str, Status] = {
    AuditAction.REGISTER: Status.REGISTERED,
    AuditAction.STAGE: Status.STAGING,
    AuditAction.APPROVE: Status.STAGING,
    AuditAction.SUPERSEDE: Status.REJECTED,
    AuditAction.REJECT: Status.REJECTED,
    AuditAction.PROMOTE: Status.PRODUCTION,
    AuditAction.ARCHIVE: Status.ARCHIVED,
    AuditAction.ROLLBACK_RESTORE: Status.PRODUCTION,
    AuditAction.ROLLBACK_DEMOTE: Status.ROLLED_BACK,
}
# The row an ``intent`` announces (``AuditLog.announce``), by the stages it names: a new challenger and the one it
# supersedes, a rejection, a promotion (its champion), a rollback's restored and demoted versions (the rollback
# DAG's, the post-promotion check's, production health's). A supersede leaves the status a rejection does. The
# version a promotion archives needs no intent of its own: one production version at a time archives it.
INTENDED: dict[tuple[str | None, str | None], AuditAction] = {
    (Stage.NONE, Stage.STAGING): AuditAction.STAGE,
    (Stage.STAGING, Stage.NONE): AuditAction.REJECT,
    (Stage.STAGING, Stage.PRODUCTION): AuditAction.PROMOTE,
    (Stage.ARCHIVED, Stage.PRODUCTION): AuditAction.ROLLBACK_RESTORE,
    (Stage.PRODUCTION, Stage.ARCHIVED): AuditAction.ROLLBACK_DEMOTE,
}
# What the legacy stages mirror for each status (when ``settings.mirror_stages``).
STAGE_OF: dict[str, Stage] = {
    Status.REGISTERED: Stage.NONE,
    Status.STAGING: Stage.STAGING,
    Status.PRODUCTION: Stage.PRODUCTION,
    Status.ARCHIVED: Stage.ARCHIVED,
    Status.ROLLED_BACK: Stage.ARCHIVED,
    Status.REJECTED: Stage.NONE,
}


def deleted_reason(version: str) -> str:
    """The watch's finding for an audited version gone from the registry (the reason of its ``drift_detected`` row)."""
    return f"v{version} was deleted from the registry"


def status_after(row: Mapping[str, Any]) -> Status | None:
    """The status a row leaves its version in, or None for rows that change no state.

    A ``post_check_rollback`` row is a rollback made by the post-promotion check: the version it moves to
    Production is restored, the other one is rolled back.
    """
    action = row["action"]
    if action == AuditAction.POST_CHECK_ROLLBACK:
        return Status.PRODUCTION if row.get("to_stage") == Stage.PRODUCTION else Status.ROLLED_BACK
    return STATUS_AFTER.get(action)


@dataclass(frozen=True)
class AuditedState:
    """A model's state as its audit rows record it."""

    model_name: str
    champion: str | None = None
    # every version that became champion, oldest first (a version appears again when restored)
    champion_history: tuple[str, ...] = ()
    challenger: str | None = None
    statuses: dict[str, Status] = field(default_factory=dict)
    # the differences on record and not yet resolved: the reason of each ``drift_detected`` row that no later
    # ``drift_restore`` row names (the watch records each difference once, and records when it is gone)
    open_drift: frozenset[str] = frozenset()
    # when the pipeline registered each version (its ``register`` row): a version created after that was replaced
    registered_at: dict[str, datetime] = field(default_factory=dict)
    # versions with an open production-health finding: a ``health_degraded`` row no later ``health_recovered`` closed
    degraded: frozenset[str] = frozenset()
    # versions the retention policy deleted (a ``retention_delete`` row): gone on purpose, so no longer expected in
    # the registry (not drift) and never a rollback target; their earlier rows stay
    deleted: frozenset[str] = frozenset()
    # ``intent`` rows whose change has not recorded its row on that version yet (it crashed between its registry
    # writes and its rows, or is under way): oldest first
    pending: tuple[Mapping[str, Any], ...] = ()

    def previous_champion(self, exists: Callable[[str], bool]) -> str | None:
        """The latest earlier champion that still exists and was not rolled back: a rollback's default target."""
        for version in reversed(self.champion_history):
            if version != self.champion and self.statuses.get(version) == Status.ARCHIVED and exists(version):
                return version
        return None


def audited_state(model_name: str, rows: Iterable[Mapping[str, Any]]) -> AuditedState:
    """Replay a model's audit rows (oldest first) into the state they record."""
    statuses: dict[str, Status] = {}
    history: list[str] = []
    open_drift: set[str] = set()
    registered_at: dict[str, datetime] = {}
    degraded: set[str] = set()
    deleted: set[str] = set()
    intents: dict[tuple[Any, Any, str], Mapping[str, Any]] = {}
    for row in rows:
        version = str(row["version"])
        change = (row.get("dag_id"), row.get("run_id"), version)
        if row["action"] == AuditAction.INTENT:
            intents[change] = row
            continue
        intents.pop(change, None)  # the change recorded what it did to the version: no longer pending
        if row["action"] == AuditAction.DRIFT_ACKNOWLEDGED:  # on-call accepted the version's deletion: history now
            open_drift.discard(deleted_reason(version))
        if row["action"] in (AuditAction.RETENTION_DELETE, AuditAction.DRIFT_ACKNOWLEDGED):
            deleted.add(version)
            statuses.pop(version, None)
            registered_at.pop(version, None)
            continue
        if row["action"] == AuditAction.HEALTH_DEGRADED:
            degraded.add(version)
            continue
        if row["action"] == AuditAction.HEALTH_RECOVERED:
            degraded.discard(version)
            continue
        if row["action"] == AuditAction.DRIFT_DETECTED:
            open_drift.add(row["reason"] or "")
            continue
        if row["action"] == AuditAction.DRIFT_RESTORE:
            open_drift.discard(row["reason"] or "")
            continue
        status = status_after(row)
        if status is None:
            continue
        deleted.discard(version)  # a re-created model's version of the same number
        if status == Status.PRODUCTION:
            # one production version at a time: the rows that archive the previous one follow in the same
            # change, but a change that crashed between its rows must not read as two champions
            for other, other_status in statuses.items():
                if other_status == Status.PRODUCTION and other != version:
                    statuses[other] = Status.ARCHIVED
            history.append(version)
        statuses[version] = status
        if row["action"] == AuditAction.REGISTER and row.get("created_at") is not None:
            registered_at.setdefault(version, row["created_at"])
    champion = next((v for v in reversed(history) if statuses.get(v) == Status.PRODUCTION), None)
    waiting = [v for v, s in statuses.items() if s == Status.STAGING and v != champion]
    return AuditedState(
        model_name=model_name,
        champion=champion,
        champion_history=tuple(history),
        challenger=max(waiting, key=version_order) if waiting else None,
        statuses=statuses,
        open_drift=frozenset(open_drift),
        registered_at=registered_at,
        degraded=frozenset(degraded),
        deleted=frozenset(deleted),
        pending=tuple(intents.values()),
    )


def completed(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row a pending ``intent`` announces, as its change will write it (``INTENDED``: by its stages)."""
    return {**row, "action": INTENDED.get((row.get("from_stage"), row.get("to_stage")), AuditAction.PROMOTE)}


def version_order(version: str) -> tuple[int, int, str]:
    """Sort key for version numbers; a non-number (only a forged row holds one) sorts last instead of crashing."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
