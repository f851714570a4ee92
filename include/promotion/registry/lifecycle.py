"""The lifecycle of a model version, as a state machine over the MLflow Model Registry.

``register → stage (challenger) → approve → promote (champion; the previous one archived)``, or
``reject`` at the approval gate. Alias ``champion`` is the production version, alias ``challenger``
the version awaiting approval, and the ``promotion_status`` tag each version's state. Legacy stages
mirror that state (``settings.mirror_stages``) but no decision ever reads them.

Each function here holds the model's advisory lock for its whole change, is written so that running it
again after a crash at any point finishes the change instead of repeating it, and records one audit
row per changed version (idempotently, keyed by the change id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.promotion.airflow_run import RunRef
from include.promotion.audit import log as audit
from include.promotion.audit.log import AuditEntry
from include.promotion.errors import RegistryStateError
from include.promotion.registry import accounts as mlflow_accounts
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.client import delete_alias_if, get_alias, set_stage, set_tags, status_of
from include.promotion.registry.invariants import verify_invariant
from include.promotion.states import CHALLENGER_ALIAS, CHAMPION_ALIAS, AuditAction, Stage, Status, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# why a challenger was taken back at promotion (its ``supersede`` row's reason starts so; also the row's key detail)
CHAMPION_MOVED = "the champion moved"


@dataclass(frozen=True)
class Change:
    """Who makes a registry change and from which Airflow run (the change id makes retries idempotent)."""

    actor: str
    dag_id: str
    run_id: str
    dag_version: str | None = None  # the Airflow DAG version that acts (None outside a DAG run: CLI, webhooks)

    @classmethod
    def by(cls, run: RunRef, actor: str | None = None) -> Change:
        """A change made from ``run``, by ``actor`` (default: the DAG itself, for automatic steps)."""
        return cls(actor=actor or run.dag_id, dag_id=run.dag_id, run_id=run.run_id, dag_version=run.dag_version)

    @property
    def change_id(self) -> str:
        return f"{self.dag_id}/{self.run_id}"

    def entry(
        self,
        name: str,
        version: str | int,
        action: AuditAction,
        from_stage: Stage | None,
        to_stage: Stage | None,
        reason: str | None,
        actor: str | None = None,
    ) -> AuditEntry:
        """The audit row of one changed version."""
        return AuditEntry(
            model_name=name,
            version=str(version),
            action=action,
            from_stage=str(from_stage) if from_stage is not None else None,
            to_stage=str(to_stage) if to_stage is not None else None,
            actor=actor or self.actor,
            reason=reason,
            dag_id=self.dag_id,
            run_id=self.run_id,
            dag_version=self.dag_version,
        )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def require_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    mv = mlflow_client.get_version(client, name, version)
    if mv is None:
        raise RegistryStateError(f"model '{name}' has no version {version}; check the model name and version.")
    return mv


def register_version(
    name: str,
    trained: dict[str, str],
    tags: dict[str, str],
    description: str,
    change: Change,
    model_description: str = "",
) -> str:
    """Register the run's model once (a retry finds the version it created); return the version."""
    client = mlflow_client.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = mlflow_client.find_version_for_run(client, name, trained["run_id"])
        if mv is None:
            mlflow_client.ensure_registered_model(client, name, model_description)
            mlflow_accounts.claim_for_pipeline("registered_model", name, f"registered model '{name}'")
            model_uri = trained["model_uri"]
            model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
            mv = client.create_model_version(
                name,
                source=model_uri,
                run_id=trained["run_id"],
                tags={**tags, Tag.STATUS: Status.REGISTERED},
                description=description,
                model_id=model_id,
            )
        log.record(change.entry(name, mv.version, AuditAction.REGISTER, None, Stage.NONE, "gates passed"))
        return str(mv.version)


def promote_to_staging(name: str, version: str, change: Change) -> None:
    """Make ``version`` the challenger: alias, Staging stage, tags, audit row; supersede an older one."""
    client = mlflow_client.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = require_version(client, name, version)
        if status_of(mv) not in (Status.REGISTERED, Status.STAGING):
            raise RegistryStateError(
                f"{name} v{version} is '{status_of(mv)}', not a freshly registered candidate; "
                "only a new version can be moved to Staging. Trigger a new retraining run."
            )
        previous = get_alias(client, name, CHALLENGER_ALIAS)
        superseded = None
        if previous is not None and str(previous.version) != str(version):
            why = f"superseded by version {version}"
            superseded = change.entry(name, previous.version, AuditAction.SUPERSEDE, Stage.STAGING, Stage.NONE, why)
        staged = change.entry(name, version, AuditAction.STAGE, Stage.NONE, Stage.STAGING, "passed evaluation gates")
        summary = f"stage v{version} as challenger" + (f" over v{superseded.version}" if superseded else "")
        for row in (superseded, staged):  # a crash between the registry writes and the rows is then "in progress"
            if row is not None:
                log.announce(row, summary)
        if superseded is not None:
            set_tags(
                client, name, superseded.version, {Tag.STATUS: Status.REJECTED, Tag.REJECTION_REASON: superseded.reason}
            )
            set_stage(client, name, superseded.version, Stage.NONE)
            log.record(superseded)
        set_stage(client, name, version, Stage.STAGING)
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version)
        stamp = mv.tags.get(Tag.STAGING_TIMESTAMP) or now_iso()
        set_tags(client, name, version, {Tag.STAGING_TIMESTAMP: stamp, Tag.STATUS: Status.STAGING})
        log.record(staged)


def record_approval(name: str, version: str, reviewer: str, reason: str, change: Change) -> None:
    """Record a reviewer's Approve of the challenger, where the answer arrives: the audit row, and tags.

    The audit row is what ``promote_to_production`` acts on (only workers can write it); the tags only
    show the approval to people reading the registry, and are written from that row. A gate of this run that was
    answered already and asked again (a cleared ``approve``) changes nothing: ``_answered_once`` refuses it.
    """
    client = mlflow_client.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = require_version(client, name, version)
        row = _answered_once(log, name, version, AuditAction.APPROVE, reviewer, reason)
        if row is None:
            require_challenger(client, name, mv)
            log.record(
                change.entry(name, version, AuditAction.APPROVE, Stage.STAGING, Stage.STAGING, reason, actor=reviewer)
            )
        set_tags(client, name, version, {Tag.APPROVED_BY: reviewer, Tag.APPROVAL_REASON: reason})


def _answered_once(
    log: audit.AuditLog, name: str, version: str, action: AuditAction, reviewer: str, reason: str
) -> dict[str, Any] | None:
    """This change's recorded answer on the version, if any (a retry of the same answer after a crash completes it);
    refused (``RegistryStateError``, nothing written) when this answer is another one: a replayed gate must not
    rewrite, in tags without an audit row, an answer the audit log already holds."""
    answers = [row for a in (AuditAction.APPROVE, AuditAction.REJECT) if (row := log.recorded(a, version))]
    if not answers:
        return None
    row = answers[0]
    if (row["action"], row["actor"], row["reason"]) != (action.value, reviewer, reason):
        raise RegistryStateError(
            f"{name} v{version}: this run's approval was already answered ({row['action']} by {row['actor']}: "
            f"\u201c{row['reason']}\u201d); a second answer to the same gate (a cleared approve task) changes "
            "nothing. Trigger a new run to review again."
        )
    return row


def promote_to_production(
    name: str, version: str, change: Change, check_approver: Callable[[str], None] | None = None
) -> tuple[str, str | None]:
    """Make the approved challenger the champion and archive the previous one.

    Returns (approver, archived version). Refuses unless this run's approval task recorded an approval
    of the version in the audit log, the version is still the challenger in Staging, and the champion is
    still the one it was evaluated against; ``check_approver`` may refuse the approver (four eyes). A
    champion that moved also withdraws the candidate (``_withdraw``: a ``supersede`` row by the DAG, no
    ``challenger`` alias), so its approval cannot be reused. A retry after a crash at any point completes
    the promotion (or the withdrawal): ``promoted_over`` is written first, so the retry still knows which
    version it archives, and the audit rows are keyed by the change id.
    """
    client = mlflow_client.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = require_version(client, name, version)
        approval = log.recorded(AuditAction.APPROVE, version)
        if approval is None:
            raise RegistryStateError(
                f"{name} v{version} has no approval recorded by this run's approval task; nothing was promoted. "
                "A reviewer approves it under Required Actions in the Airflow UI."
            )
        approver, reason = approval["actor"], approval["reason"] or "approved"
        if check_approver is not None:
            check_approver(approver)
        if withdrawn := log.recorded(AuditAction.SUPERSEDE, version, CHAMPION_MOVED):  # a retry of the refusal
            _withdraw(client, log, name, mv, change, withdrawn["reason"])
            raise RegistryStateError(_champion_moved_refusal(name, version, withdrawn["reason"]))
        champion = get_alias(client, name, CHAMPION_ALIAS)
        if champion is not None and str(champion.version) == str(version):
            previous = mv.tags.get(Tag.PROMOTED_OVER) or None  # resumed after the alias already moved
        else:
            require_challenger(client, name, mv)
            previous = str(champion.version) if champion is not None else None
            evaluated_against = mv.tags.get(Tag.CHAMPION_AT_EVALUATION)
            if evaluated_against is not None and evaluated_against != (previous or ""):
                why = (
                    f"{CHAMPION_MOVED}: evaluated against champion {_shown(evaluated_against)}, but the champion "
                    f"is now {_shown(previous)}"
                )
                _withdraw(client, log, name, mv, change, why)
                raise RegistryStateError(_champion_moved_refusal(name, version, why))
        promoted = change.entry(
            name, version, AuditAction.PROMOTE, Stage.STAGING, Stage.PRODUCTION, reason, actor=approver
        )
        log.announce(promoted, f"promote v{version} over {_shown(previous)}")
        if champion is None or str(champion.version) != str(version):
            set_tags(client, name, version, {Tag.PROMOTED_OVER: previous or ""})

        set_stage(client, name, version, Stage.PRODUCTION, archive_existing=True)
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        delete_alias_if(client, name, CHALLENGER_ALIAS, version)
        set_tags(
            client,
            name,
            version,
            {
                Tag.PRODUCTION_APPROVER: approver,
                Tag.PRODUCTION_TIMESTAMP: mv.tags.get(Tag.PRODUCTION_TIMESTAMP) or now_iso(),
                Tag.STATUS: Status.PRODUCTION,
            },
        )
        if previous:
            set_tags(client, name, previous, {Tag.STATUS: Status.ARCHIVED, Tag.ARCHIVED_TIMESTAMP: now_iso()})
        log.record(promoted)
        if previous:
            archived = f"replaced by v{version}"
            log.record(
                change.entry(
                    name, previous, AuditAction.ARCHIVE, Stage.PRODUCTION, Stage.ARCHIVED, archived, actor=approver
                )
            )
        verify_invariant(name, client)
        return approver, previous


def _shown(version: str | None) -> str:
    return f"v{version}" if version else "(none)"


def _champion_moved_refusal(name: str, version: str, why: str) -> str:
    return (
        f"{name} v{version} was not promoted: {why}. It is no longer the challenger (audit log: supersede), so its "
        "approval cannot be reused. Trigger a new retraining run so a candidate is compared with the current champion."
    )


def _withdraw(client: MlflowClient, log: audit.AuditLog, name: str, mv: ModelVersion, change: Change, why: str) -> None:
    """Take back a challenger that can no longer be promoted (the champion moved since it was evaluated): its
    approval was given against another champion. The audit row first (actor: the DAG), then the registry as it says:
    status rejected with the reason, stage None, no ``challenger`` alias. Each step is idempotent: a retry after a
    crash anywhere finishes the same withdrawal, and records nothing twice."""
    version = str(mv.version)
    log.record(
        change.entry(name, version, AuditAction.SUPERSEDE, Stage.STAGING, Stage.NONE, why, actor=change.dag_id),
        CHAMPION_MOVED,
    )
    set_tags(
        client,
        name,
        version,
        {
            Tag.STATUS: Status.REJECTED,
            Tag.REJECTION_REASON: why,
            Tag.REJECTION_TIMESTAMP: mv.tags.get(Tag.REJECTION_TIMESTAMP) or now_iso(),
        },
    )
    set_stage(client, name, version, Stage.NONE)
    delete_alias_if(client, name, CHALLENGER_ALIAS, version)


def require_challenger(client: MlflowClient, name: str, mv: ModelVersion) -> None:
    challenger = get_alias(client, name, CHALLENGER_ALIAS)
    if challenger is None or str(challenger.version) != str(mv.version) or status_of(mv) != Status.STAGING:
        holder = f"v{challenger.version}" if challenger is not None else "no version"
        raise RegistryStateError(
            f"{name} v{mv.version} is no longer the challenger in Staging (status '{status_of(mv)}', "
            f"challenger: {holder}); nothing was promoted. Trigger a new retraining run to get a fresh candidate."
        )


def reject(name: str, version: str, reviewer: str, reason: str, change: Change) -> None:
    """Record a rejection: status, reason, reviewer; drop ``challenger``; stage back to None; audit row."""
    client = mlflow_client.client()
    with audit.model_lock(name, change.change_id) as log:
        mv = require_version(client, name, version)
        _answered_once(log, name, version, AuditAction.REJECT, reviewer, reason)  # a replayed gate writes nothing
        if status_of(mv) not in (Status.STAGING, Status.REJECTED):
            raise RegistryStateError(
                f"{name} v{version} is '{status_of(mv)}', not awaiting approval; the rejection changes nothing."
            )
        rejected = change.entry(name, version, AuditAction.REJECT, Stage.STAGING, Stage.NONE, reason, actor=reviewer)
        log.announce(rejected, f"reject v{version}")
        delete_alias_if(client, name, CHALLENGER_ALIAS, version)
        set_stage(client, name, version, Stage.NONE)
        set_tags(
            client,
            name,
            version,
            {
                Tag.STATUS: Status.REJECTED,
                Tag.REJECTION_REASON: reason,
                "rejected_by": reviewer,
                Tag.REJECTION_TIMESTAMP: mv.tags.get(Tag.REJECTION_TIMESTAMP) or now_iso(),
            },
        )
        log.record(rejected)
