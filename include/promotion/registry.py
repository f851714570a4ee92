"""Every change the package makes to the MLflow Model Registry, each serialized and audited.

The registry is the source of truth for what is in production: alias ``champion`` is the
production version, alias ``challenger`` the version awaiting approval, and the ``promotion_status``
tag records each version's place in the lifecycle. Legacy stages mirror that state (see
``settings.mirror_stages``) but no decision ever reads them.

Each public function holds the model's advisory lock for its whole change, is written so that running
it again after a crash at any point finishes the change instead of repeating it, and records one
audit row per changed version (idempotently, keyed by the change id).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.promotion import audit, settings, tracking
from include.promotion.audit import AuditEntry, AuditLog
from include.promotion.errors import InvariantViolation, RegistryStateError, RollbackTargetInvalid

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

NONE, STAGING, PRODUCTION, ARCHIVED = "None", "Staging", "Production", "Archived"


@dataclass(frozen=True)
class Change:
    """Who makes a registry change and from which Airflow run (the change id makes retries idempotent)."""

    actor: str
    dag_id: str
    run_id: str

    @property
    def change_id(self) -> str:
        return f"{self.dag_id}/{self.run_id}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def status_of(mv: ModelVersion) -> str:
    return (mv.tags or {}).get("promotion_status", "registered")


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def get_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None if the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # Only "no such model" and "no such alias" mean absent; a network or server error must not read as
        # "no champion" (that would skip archiving it, or skip the champion comparison).
        not_found = getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in str(
            exc
        )
        if _is_missing(exc) or not_found:
            return None
        raise


def get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def _set_stage(client: MlflowClient, name: str, version: str, stage: str, archive_existing: bool = False) -> None:
    """Mirror a lifecycle step into the deprecated stages, when that mirroring is on."""
    if not settings.mirror_stages():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        client.transition_model_version_stage(name, version, stage, archive_existing_versions=archive_existing)


def _set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def _delete_alias_if(client: MlflowClient, name: str, alias: str, version: str) -> None:
    holder = get_alias(client, name, alias)
    if holder is not None and str(holder.version) == str(version):
        client.delete_registered_model_alias(name, alias)


def _ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        try:
            client.create_registered_model(name, description=description, tags={"governed_by": "airflow"})
        except MlflowException as race:
            if getattr(race, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise


def find_version_for_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version registered from an MLflow run (one indexed search, names escaped)."""
    found = client.search_model_versions(f"name = {tracking.quote(name)} and run_id = {tracking.quote(run_id)}")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def register_version(
    name: str,
    trained: dict[str, str],
    tags: dict[str, str],
    description: str,
    change: Change,
    model_description: str = "",
) -> str:
    """Register the run's model once (a retry finds the version it created); return the version."""

    client = tracking.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = find_version_for_run(client, name, trained["run_id"])
        if mv is None:
            _ensure_registered_model(client, name, model_description)
            model_id = (
                trained["model_uri"].removeprefix("models:/") if trained["model_uri"].startswith("models:/m-") else None
            )
            mv = client.create_model_version(
                name,
                source=trained["model_uri"],
                run_id=trained["run_id"],
                tags={**tags, "promotion_status": "registered"},
                description=description,
                model_id=model_id,
            )
        log.record(_entry(name, mv.version, "register", None, NONE, change, "gates passed"))
        return str(mv.version)


def promote_to_staging(name: str, version: str, change: Change) -> None:
    """Make ``version`` the challenger: alias, Staging stage, tags, audit row; supersede an older one."""
    client = tracking.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = _require_version(client, name, version)
        if status_of(mv) not in ("registered", "staging"):
            raise RegistryStateError(
                f"{name} v{version} is '{status_of(mv)}', not a freshly registered candidate; "
                "only a new version can be moved to Staging. Trigger a new retraining run."
            )
        previous = get_alias(client, name, settings.CHALLENGER_ALIAS)
        if previous is not None and str(previous.version) != str(version):
            _set_tags(
                client,
                name,
                previous.version,
                {"promotion_status": "rejected", "rejection_reason": f"superseded by version {version}"},
            )
            _set_stage(client, name, previous.version, NONE)
            log.record(_entry(name, previous.version, "supersede", STAGING, NONE, change, f"superseded by v{version}"))
        _set_stage(client, name, version, STAGING)
        client.set_registered_model_alias(name, settings.CHALLENGER_ALIAS, version)
        _set_tags(
            client,
            name,
            version,
            {"staging_timestamp": mv.tags.get("staging_timestamp") or now_iso(), "promotion_status": "staging"},
        )
        log.record(_entry(name, version, "stage", NONE, STAGING, change, "passed evaluation gates"))


def record_approval(name: str, version: str, reviewer: str, reason: str, change: Change) -> None:
    """Record a reviewer's Approve on the challenger (tags + audit row), where the answer arrives.

    ``promote_to_production`` acts only on an approval recorded here for the same run, never on what
    an XCom claims.
    """
    client = tracking.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = _require_version(client, name, version)
        if mv.tags.get("approval_change") != change.change_id:  # else resumed: only the audit row may be missing
            _require_challenger(client, name, mv)
            _set_tags(client, name, version, {"approved_by": reviewer, "approval_reason": reason})
            _set_tags(client, name, version, {"approval_change": change.change_id})  # last: marks it complete
        log.record(_entry(name, version, "approve", STAGING, STAGING, change, reason, actor=reviewer))


def promote_to_production(name: str, version: str, change: Change) -> str | None:
    """Make the approved challenger the champion and archive the previous one; return its version.

    Refuses unless this run recorded an approval for the version (``record_approval``), the version is
    still the challenger in Staging, and the champion is still the one it was evaluated against. A retry
    after a crash at any point completes the promotion: ``promoted_over`` is written first, so the retry
    still knows which version it archives, and the audit rows are keyed by the change id.
    """
    client = tracking.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = _require_version(client, name, version)
        if mv.tags.get("approval_change") != change.change_id or not mv.tags.get("approved_by"):
            raise RegistryStateError(
                f"{name} v{version} has no approval recorded by this run; nothing was promoted. "
                "A reviewer approves it under Required Actions in the Airflow UI."
            )
        approver, reason = mv.tags["approved_by"], mv.tags.get("approval_reason") or "approved"
        champion = get_alias(client, name, settings.CHAMPION_ALIAS)
        if champion is not None and str(champion.version) == str(version):
            previous = mv.tags.get("promoted_over") or None  # resumed after the alias already moved
        else:
            _require_challenger(client, name, mv)
            previous = str(champion.version) if champion is not None else None
            evaluated_against = mv.tags.get("champion_at_evaluation")
            if evaluated_against is not None and evaluated_against != (previous or ""):
                raise RegistryStateError(
                    f"{name} v{version} was evaluated against champion {evaluated_against or '(none)'}, but the "
                    f"champion is now {previous or '(none)'}; nothing was promoted. Trigger a new retraining run "
                    "so the candidate is compared with the current champion."
                )
            _set_tags(client, name, version, {"promoted_over": previous or ""})

        _set_stage(client, name, version, PRODUCTION, archive_existing=True)
        client.set_registered_model_alias(name, settings.CHAMPION_ALIAS, version)
        _delete_alias_if(client, name, settings.CHALLENGER_ALIAS, version)
        _set_tags(
            client,
            name,
            version,
            {
                "production_approver": approver,
                "production_timestamp": mv.tags.get("production_timestamp") or now_iso(),
                "promotion_status": "production",
            },
        )
        if previous:
            _set_tags(client, name, previous, {"promotion_status": "archived", "archived_timestamp": now_iso()})
        log.record(_entry(name, version, "promote", STAGING, PRODUCTION, change, reason, actor=approver))
        if previous:
            log.record(
                _entry(
                    name, previous, "archive", PRODUCTION, ARCHIVED, change, f"replaced by v{version}", actor=approver
                )
            )
        verify_invariant(name, client)
        return previous


def _require_challenger(client: MlflowClient, name: str, mv: ModelVersion) -> None:
    challenger = get_alias(client, name, settings.CHALLENGER_ALIAS)
    if challenger is None or str(challenger.version) != str(mv.version) or status_of(mv) != "staging":
        holder = f"v{challenger.version}" if challenger is not None else "no version"
        raise RegistryStateError(
            f"{name} v{mv.version} is no longer the challenger in Staging (status '{status_of(mv)}', "
            f"challenger: {holder}); nothing was promoted. Trigger a new retraining run to get a fresh candidate."
        )


def reject(name: str, version: str, reviewer: str, reason: str, change: Change) -> None:
    """Record a rejection: status, reason, reviewer; drop ``challenger``; stage back to None; audit row."""
    client = tracking.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = _require_version(client, name, version)
        if status_of(mv) not in ("staging", "rejected"):
            raise RegistryStateError(
                f"{name} v{version} is '{status_of(mv)}', not awaiting approval; the rejection changes nothing."
            )
        _delete_alias_if(client, name, settings.CHALLENGER_ALIAS, version)
        _set_stage(client, name, version, NONE)
        _set_tags(
            client,
            name,
            version,
            {
                "promotion_status": "rejected",
                "rejection_reason": reason,
                "rejected_by": reviewer,
                "rejection_timestamp": mv.tags.get("rejection_timestamp") or now_iso(),
            },
        )
        log.record(_entry(name, version, "reject", STAGING, NONE, change, reason, actor=reviewer))


@dataclass(frozen=True)
class RollbackPlan:
    model_name: str
    current_version: str
    target_version: str


def plan_rollback(name: str, target_version: str | int | None, client: MlflowClient | None = None) -> RollbackPlan:
    """Resolve and check a rollback's target in O(1) registry calls; raise ``RollbackTargetInvalid``."""
    client = client or tracking.client()
    champion = get_alias(client, name, settings.CHAMPION_ALIAS)
    if champion is None:
        raise RollbackTargetInvalid(
            f"model '{name}' has no champion: nothing is in production, so there is nothing to roll back."
        )
    current = str(champion.version)
    if target_version in (None, ""):
        target = (champion.tags or {}).get("promoted_over") or ""
        if not target:
            raise RollbackTargetInvalid(
                f"{name} v{current} replaced no earlier champion: nothing to roll back to; pass target_version."
            )
    else:
        target = str(target_version).strip()
        if not target.isdigit():
            raise RollbackTargetInvalid(f"target_version must be a version number, got {target_version!r}.")
    mv = get_version(client, name, target)
    if mv is None:
        raise RollbackTargetInvalid(
            f"model '{name}' has no version {target} (version numbers are per model: check that {target} is a "
            f"version of '{name}' and not of another model). Pass an earlier production version of '{name}'."
        )
    if target == current:
        raise RollbackTargetInvalid(
            f"v{target} is already the champion of '{name}'; pass an earlier production version, or leave "
            "target_version empty to go back to the previous champion."
        )
    if status_of(mv) == "rejected":
        raise RollbackTargetInvalid(
            f"{name} v{target} was rejected by a reviewer ({mv.tags.get('rejection_reason', 'no reason')}) "
            "and cannot be restored; pass a version that was in production."
        )
    if not (mv.tags or {}).get("production_timestamp"):
        raise RollbackTargetInvalid(
            f"{name} v{target} was never in production (status '{status_of(mv)}'); a rollback may only restore a "
            "version that served before. Pass one of those, or approve this one through the promotion DAG."
        )
    return RollbackPlan(model_name=name, current_version=current, target_version=target)


def rollback(plan: RollbackPlan, reason: str, change: Change) -> None:
    """Restore ``plan.target_version`` as champion and mark the current one ``rolled_back``.

    The target's own ``promoted_over`` is left as it was, so a second rollback goes one step further
    back. Resumes a crashed attempt of the same change; refuses if the champion moved meanwhile.
    """
    if not reason or not reason.strip():
        raise RollbackTargetInvalid("a rollback needs a reason: say what is wrong with the current model.")
    client = tracking.client()
    name, current, target = plan.model_name, plan.current_version, plan.target_version
    with audit.model_lock(name, change.change_id) as log:
        champion = get_alias(client, name, settings.CHAMPION_ALIAS)
        current_mv = _require_version(client, name, current)
        resumed = (
            champion is not None
            and str(champion.version) == target
            and current_mv.tags.get("rollback_change") == change.change_id
        )
        if not resumed and (champion is None or str(champion.version) != current):
            raise RollbackTargetInvalid(
                f"the champion of '{name}' changed since the rollback was checked (was v{current}, now "
                f"{'v' + str(champion.version) if champion else 'none'}); nothing was changed. "
                "Trigger the rollback again."
            )
        if not resumed:
            plan_rollback(name, target, client)  # the target's checks again, now under the lock
        stamp = current_mv.tags.get("rollback_timestamp") or now_iso()
        _set_tags(
            client,
            name,
            current,
            {
                "rollback_change": change.change_id,
                "rollback_reason": reason,
                "rolled_back_by": change.actor,
                "rollback_timestamp": stamp,
                "promotion_status": "rolled_back",
            },
        )
        _set_stage(client, name, target, PRODUCTION, archive_existing=True)
        client.set_registered_model_alias(name, settings.CHAMPION_ALIAS, target)
        _set_tags(client, name, target, {"promotion_status": "production"})  # who and why: the audit rows
        log.record(_entry(name, target, "rollback_restore", ARCHIVED, PRODUCTION, change, reason))
        log.record(_entry(name, current, "rollback_demote", PRODUCTION, ARCHIVED, change, reason))
        verify_invariant(name, client)


def verify_invariant(name: str, client: MlflowClient | None = None) -> str | None:
    """Exactly one version is in production and holds ``champion``; return it (None: nothing promoted yet)."""
    client = client or tracking.client()
    champion = get_alias(client, name, settings.CHAMPION_ALIAS)
    in_production = client.search_model_versions(
        f"name = {tracking.quote(name)} and tags.promotion_status = 'production'"
    )
    versions = sorted(str(mv.version) for mv in in_production)
    if champion is None:
        if versions:
            raise InvariantViolation(f"'{name}' has production version(s) {versions} but no champion alias.")
        return None
    if versions != [str(champion.version)]:
        raise InvariantViolation(
            f"'{name}' must have exactly one production version holding 'champion' (v{champion.version}); "
            f"versions tagged production: {versions}."
        )
    if settings.mirror_stages() and champion.current_stage != PRODUCTION:
        # get_latest_versions would also catch a stray Production stage set outside the package, but it loads
        # every version of the model; the tags the package writes are what carries the decision.
        raise InvariantViolation(f"'{name}': the champion v{champion.version} is in stage '{champion.current_stage}'.")
    return str(champion.version)


def _require_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    mv = get_version(client, name, version)
    if mv is None:
        raise RegistryStateError(f"model '{name}' has no version {version}; check the model name and version.")
    return mv


def _entry(
    name: str,
    version: str | int,
    action: str,
    from_stage: str | None,
    to_stage: str | None,
    change: Change,
    reason: str | None,
    actor: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        model_name=name,
        version=str(version),
        action=action,
        from_stage=from_stage,
        to_stage=to_stage,
        actor=actor or change.actor,
        reason=reason,
        dag_id=change.dag_id,
        run_id=change.run_id,
    )


__all__ = [
    "AuditLog",
    "Change",
    "RollbackPlan",
    "find_version_for_run",
    "plan_rollback",
    "promote_to_production",
    "promote_to_staging",
    "record_approval",
    "register_version",
    "reject",
    "rollback",
    "verify_invariant",
]
