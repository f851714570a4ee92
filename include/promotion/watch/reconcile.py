"""The registry watch: notice anything that changed production outside the pipeline, and repair it on request.

The audit log says what the registry should be (``audit_state``); the watch reads the registry, compares,
and records each difference once (an audit row ``drift_detected``, actor ``registry-watch``) and alerts.
It reads and writes under each model's lock, so a promotion or rollback in flight is never mistaken
for drift. With ``on_drift: restore`` it puts the audited state back (champion through the same code as
a rollback) and records ``drift_restore`` rows. A difference the watch finds gone on a later run (someone
put it back by hand) gets a ``drift_restore`` row too, so every change of the registry is on record. Nothing
is restored from an audit log whose hash chain is broken, or onto versions created after the pipeline
registered them (a registered model deleted or renamed and re-created), and production is never taken away
when the audit log records no champion.

Registry reads per model: one ``find_registered_model`` search (aliases) and ``search_model_versions`` a page of
1,000 versions at a time (tags and stages of every version: each one is checked against the audit log, so this read
grows with the number of versions; docs/scale.md has the figures).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from include.promotion import settings
from include.promotion.audit import log as audit
from include.promotion.audit.replay import (
    STAGE_OF,
    AuditedState,
    audited_state,
    completed,
    deleted_reason,
    version_order,
)
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.client import set_stage, set_tags
from include.promotion.registry.lifecycle import Change
from include.promotion.registry.rollback import restore_champion
from include.promotion.states import CHALLENGER_ALIAS, CHAMPION_ALIAS, AuditAction, Stage, Status, Tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

WATCH_ACTOR = "registry-watch"
# the actor of a ``drift_restore`` row for a difference on record that the watch no longer finds, without
# having repaired it: put back by hand, or cleared by a later change of the pipeline
NO_LONGER_FOUND = "registry-watch (no longer found)"
PAGE_SIZE = 1000


@dataclass(frozen=True)
class RegistrySnapshot:
    """What the registry holds for one model: its aliases, and each version's status tag and stage."""

    exists: bool
    aliases: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)
    created_ms: dict[str, int] = field(default_factory=dict)  # set by the server: no client can choose it
    # each version's (run id, source): what registry retention needs to find the version's own logged model
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Drift:
    """One difference between the registry and the audit log.

    ``reason`` is the audit row's reason: the same text while the same difference lasts (that is how it is
    recorded once). ``serving`` differences touch what serves or awaits approval: every watch run fails
    while one lasts. The others (an old version deleted) fail only the run that first records them.
    """

    version: str
    reason: str
    serving: bool = True
    advice: str = ""
    # the audit log or the versions themselves cannot be trusted (edited rows, replaced versions): nothing is
    # restored from them
    blocks_repair: bool = False


@dataclass
class WatchReport:
    """What one watch run found and did for one model."""

    model_name: str
    drifts: list[Drift] = field(default_factory=list)  # what the registry shows now (after any repair)
    recorded: list[Drift] = field(default_factory=list)  # newly recorded by this run (alerted)
    restored: list[Drift] = field(default_factory=list)  # repaired by this run
    resolved: list[Drift] = field(default_factory=list)  # on record before, gone now without this run's repair
    skipped: str = ""  # why the model was not checked (e.g. never registered)
    # changes announced (``intent``) and not yet recorded, that the registry already shows: their retry completes them
    in_progress: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether the watch run should fail for this model (new differences, or serving ones still there)."""
        return bool(self.recorded) or any(d.serving for d in self.drifts)


def read_registry(client: MlflowClient, name: str) -> RegistrySnapshot:
    """The model's aliases, tags and stages in one call plus one paged search."""
    model = mlflow_client.find_registered_model(client, name)
    if model is None:
        return RegistrySnapshot(exists=False)
    aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    statuses: dict[str, str] = {}
    stages: dict[str, str] = {}
    created: dict[str, int] = {}
    origins: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        page = client.search_model_versions(
            f"name = {mlflow_client.quote(name)}", max_results=PAGE_SIZE, page_token=token
        )
        for mv in page:
            statuses[str(mv.version)] = mlflow_client.status_of(mv)
            stages[str(mv.version)] = mv.current_stage or Stage.NONE
            created[str(mv.version)] = int(mv.creation_timestamp or 0)
            origins[str(mv.version)] = (mv.run_id or "", mv.source or "")
        token = page.token
        if not token:
            break
    return RegistrySnapshot(
        exists=True, aliases=aliases, statuses=statuses, stages=stages, created_ms=created, origins=origins
    )


def _shown(status: str) -> str:
    """A status as a drift reason may quote it: a known one by name, anything else (any length, any bytes,
    written by whoever had EDIT) only by its size, so the audit row and the alert stay short and plain."""
    return f"'{status}'" if status in set(Status) else f"an unknown value ({len(status)} characters)"


def differences(expected: AuditedState, found: RegistrySnapshot, mirror_stages: bool) -> list[Drift]:
    """Every way the registry differs from what the audit log records (audit chain aside).

    Every reason names the version(s) it is about: the same text means the same difference.
    """
    name = expected.model_name
    if not found.exists:
        if not expected.statuses:
            return []
        return [
            Drift(
                expected.champion or max(expected.statuses, key=version_order),
                "the registered model was deleted from the registry",
                advice=f"re-create '{name}' by running its retraining DAG; its audited versions are gone.",
            )
        ]
    drifts: list[Drift] = []
    champion, challenger = expected.champion, expected.challenger
    # a version the retention policy deleted is not in ``expected.statuses``: its absence is on record, not drift
    for version in sorted(expected.statuses, key=version_order):
        if version not in found.statuses:
            advice = ""
            if version == champion:
                target = expected.previous_champion(found.statuses.__contains__)
                advice = (
                    f"the champion v{version} cannot be restored: its version is gone. On-call: trigger "
                    f"model_rollback with model_name={name}"
                    + (f" and target_version={target}." if target else " and a target_version that served before.")
                )
            serving = version in (champion, challenger)
            if not serving:
                advice = (
                    f"its on-call may accept the loss: trigger model_registry_watch with model_name={name}, "
                    f"acknowledge_deleted_version={version} and acknowledge_reason."
                )
            drifts.append(Drift(version, deleted_reason(version), serving, advice))
        elif version in expected.registered_at:
            registered = expected.registered_at[version]
            created = datetime.fromtimestamp(found.created_ms[version] / 1000, UTC)
            # the row is written right after the version is created: a version the server created later than
            # that (beyond the clocks' difference) is not the one the pipeline registered
            if created > registered + timedelta(seconds=settings.clock_skew_seconds()):
                drifts.append(
                    Drift(
                        version,
                        f"v{version} was replaced: created {created:%Y-%m-%d %H:%M:%S} UTC, after the pipeline "
                        f"registered it at {registered:%Y-%m-%d %H:%M:%S} UTC",
                        advice="the registered model was deleted or renamed and re-created outside the pipeline: "
                        "the watch restores nothing from it; investigate.",
                        blocks_repair=True,
                    )
                )
    alias_drift = [
        (CHAMPION_ALIAS, champion, "production version"),
        (CHALLENGER_ALIAS, challenger, "version awaiting approval"),
    ]
    for alias, audited, role in alias_drift:
        actual = found.aliases.get(alias)
        if actual == audited or (actual is None and audited not in found.statuses):
            continue  # a deleted audited version is reported above
        if audited is None:
            reason = f"alias '{alias}' points at v{actual}; the audit log records no {role}"
        elif actual is None:
            reason = f"alias '{alias}' was deleted; the audit log records v{audited} as the {role}"
        else:
            reason = f"alias '{alias}' points at v{actual}; the audit log records v{audited} as the {role}"
        drifts.append(Drift(actual or audited or "", reason))
    for version, status in sorted(found.statuses.items(), key=lambda item: version_order(item[0])):
        audited = expected.statuses.get(version)
        if audited is None and version in expected.deleted:
            reason = f"v{version} is recorded as deleted by the retention policy but is still in the registry"
            advice = "a retention run stopped between its audit row and the deletion: the next one finishes it."
            drifts.append(Drift(version, reason, False, advice))
        elif audited is None:
            reason = f"v{version} was created outside the pipeline (status {_shown(status)})"
            drifts.append(Drift(version, reason, False))
        elif status != audited:
            serving = Status.PRODUCTION in (status, audited) or Status.STAGING in (status, audited)
            reason = f"v{version} promotion_status is {_shown(status)}; the audit log records '{audited}'"
            drifts.append(Drift(version, reason, serving))
    if mirror_stages:
        in_production = {v for v, stage in found.stages.items() if stage == Stage.PRODUCTION}
        audited_champion = f"v{champion} as champion" if champion else "no champion"
        for version in sorted(in_production - {champion}, key=version_order):
            reason = f"v{version} is in stage Production; the audit log records {audited_champion}"
            drifts.append(Drift(version, reason))
        if champion in found.stages and champion not in in_production:
            stage = found.stages[champion]
            shown = f"'{stage}'" if stage in set(Stage) else f"an unknown stage ({len(stage)} characters)"
            drifts.append(Drift(champion, f"the champion v{champion} is in stage {shown}, not Production"))
    return drifts


def repair(client: MlflowClient, expected: AuditedState, found: RegistrySnapshot, mirror_stages: bool) -> None:
    """Put the registry back to the audited state, writing only what differs (alias, stage, tags)."""
    name = expected.model_name
    for version, status in found.statuses.items():
        audited = expected.statuses.get(version)
        if audited is not None and status != audited:
            set_tags(client, name, version, {Tag.STATUS: audited})
    champion = expected.champion
    if champion is None:
        # No audited champion (a log started anew, versions older than the log): whatever serves keeps serving.
        # Taking production away is a decision for a person, not for a repair.
        return _repair_challenger(client, expected, found)
    if mirror_stages:
        for version, stage in found.stages.items():
            audited = expected.statuses.get(version, Status.REGISTERED)
            if stage == Stage.PRODUCTION and version != champion:
                set_stage(client, name, version, STAGE_OF[audited])
    unstaged = mirror_stages and found.stages.get(champion) != Stage.PRODUCTION
    moved = found.aliases.get(CHAMPION_ALIAS) != champion or unstaged
    if champion in found.statuses and moved:
        restore_champion(client, name, champion)  # the rollback's own step: stage, alias, status
    _repair_challenger(client, expected, found)


def _repair_challenger(client: MlflowClient, expected: AuditedState, found: RegistrySnapshot) -> None:
    name = expected.model_name
    challenger = expected.challenger
    if challenger is not None and challenger in found.statuses:
        if found.aliases.get(CHALLENGER_ALIAS) != challenger:
            client.set_registered_model_alias(name, CHALLENGER_ALIAS, challenger)
    elif challenger is None and CHALLENGER_ALIAS in found.aliases:
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS)


def watch_model(name: str, change: Change, restore: bool, client: MlflowClient | None = None) -> WatchReport:
    """Compare one model's registry with its audit log under its lock; record, and repair when asked."""
    client = client or mlflow_client.client()
    mirror = settings.mirror_stages()
    report = WatchReport(name)
    with audit.model_lock(name, change.change_id) as log_:
        rows = log_.rows()
        verdict = log_.verdict(rows, client)
        # only rows that verify say what the registry should hold: a forged row must not become the expected state
        upto = verdict.trusted_upto
        trusted = rows if verdict.intact else [r for r in rows if upto is not None and r["id"] <= upto]
        expected = audited_state(name, trusted)
        # what the watch itself has on record (recorded once, closed once): every row, its own after a break included
        on_record = expected.open_drift if verdict.intact else audited_state(name, rows).open_drift
        found = read_registry(client, name)
        if not rows and not found.exists:
            report.skipped = "never registered"
            return report
        drifts = differences(expected, found, mirror)
        if drifts and verdict.intact and (announced := _announced(name, trusted, expected)):
            # the registry shows a change whose rows are not written yet (a crash between them, its retry to come)
            intended, report.in_progress = announced
            if not differences(intended, found, mirror):
                drifts = []
            else:
                report.in_progress = []
        if not verdict.intact:
            row = verdict.row or (rows[-1] if rows else {"version": "0"})
            drifts.insert(
                0,
                Drift(
                    str(row["version"]),
                    verdict.problem or "",
                    advice="the audit log was forged or edited through a database role: investigate; the watch "
                    "restores nothing from a log that does not verify (`python -m include.promotion.audit.schema "
                    "verify`).",
                    blocks_repair=True,
                ),
            )
        fixable = restore and found.exists and bool(drifts) and not any(d.blocks_repair for d in drifts)
        for drift in drifts:
            if drift.reason not in on_record:
                entry = change.entry(name, drift.version, AuditAction.DRIFT_DETECTED, None, None, drift.reason)
                log_.record(entry, detail=drift.reason)
                report.recorded.append(drift)
        if fixable:
            drifts = _repair_and_record(client, expected, found, mirror, drifts, on_record, log_, change, report)
        now = {d.reason for d in drifts}
        # a log that does not verify closes nothing: a rewritten history must not read as a resolved one
        gone = sorted(on_record - now - {d.reason for d in report.restored}) if verdict.intact else []
        for reason in gone:
            version = next((str(r["version"]) for r in reversed(rows) if r["reason"] == reason), "0")
            entry = change.entry(name, version, AuditAction.DRIFT_RESTORE, None, None, reason, actor=NO_LONGER_FOUND)
            log_.record(entry, detail=reason)
            report.resolved.append(Drift(version, reason))
        report.drifts = drifts
    return report


def _announced(name: str, rows: list[dict[str, Any]], expected: AuditedState) -> tuple[AuditedState, list[str]] | None:
    """The state the model's pending intents announce (as if their changes had written their rows), and what they are;
    None without a pending intent younger than ``PROMOTION_INTENT_GRACE_MINUTES`` (an older one is drift: its task
    gave up)."""
    since = datetime.now(UTC) - timedelta(minutes=settings.intent_grace_minutes())
    fresh = [row for row in expected.pending if row.get("created_at") is None or row["created_at"] >= since]
    if not fresh:
        return None
    intended = audited_state(name, [*rows, *(completed(row) for row in fresh)])
    return intended, [f"{row['reason']} (run {row['run_id']}, announced {row['created_at']:%H:%M:%S})" for row in fresh]


def _repair_and_record(
    client: MlflowClient,
    expected: AuditedState,
    found: RegistrySnapshot,
    mirror: bool,
    drifts: list[Drift],
    on_record: set[str],
    log_: audit.AuditLog,
    change: Change,
    report: WatchReport,
) -> list[Drift]:
    """Repair, read the registry again, and record what was restored; return the differences that remain.

    A difference the repair wrote away can be back on the re-read because someone made it again in between (an
    out-of-band move right after the watch restored the previous one: the benchmark's "lost wake-up", whose webhook
    run then found that difference still on record and recorded no ``drift_detected``). One more repair tells the two
    apart: what it puts right was made anew, a new incident (restored, detected again, restored again); what stays is
    beyond the repair (a deleted version) and stays on record. Any other difference that appeared meanwhile is
    recorded as detected; the run its webhook woke (or the next one) repairs it.
    """
    name = expected.model_name

    def record(action: AuditAction, drift: Drift, again: bool = False) -> None:
        # the same difference twice in one run: its second rows need keys of their own (a retry still writes none)
        detail = f"{drift.reason} (made again)" if again else drift.reason
        log_.record(change.entry(name, drift.version, action, None, None, drift.reason), detail=detail)

    repaired = {d.reason for d in drifts}
    repair(client, expected, found, mirror)
    remaining = differences(expected, read_registry(client, name), mirror)
    back = [d for d in remaining if d.reason in repaired]
    if back:
        repair(client, expected, read_registry(client, name), mirror)
        remaining = differences(expected, read_registry(client, name), mirror)
    kept = {d.reason for d in remaining}
    again = {d.reason for d in back} - kept
    for drift in drifts:
        if drift.reason in kept:
            continue
        record(AuditAction.DRIFT_RESTORE, drift)
        report.restored.append(drift)
        if drift.reason in again:
            record(AuditAction.DRIFT_DETECTED, drift, again=True)
            record(AuditAction.DRIFT_RESTORE, drift, again=True)
            report.recorded.append(drift)
    known = on_record | repaired
    for drift in remaining:
        if drift.reason not in known:
            record(AuditAction.DRIFT_DETECTED, drift)
            report.recorded.append(drift)
    return remaining


def acknowledge_deleted(name: str, version: str, why: str, change: Change, client: MlflowClient | None = None) -> str:
    """Record that ``change.actor`` accepts the loss of ``version``, deleted from the registry out of band: an audit row
    ``drift_acknowledged``; the watch then reports it no more. Refused (``RegistryStateError``, nothing written) for
    a version the audit log does not record, one still in the registry, the champion or the candidate (a rollback or
    a new candidate decides those), and under an audit log that does not verify. Returns the finding it closed."""
    from include.promotion.errors import RegistryStateError

    client = client or mlflow_client.client()
    with audit.model_lock(name, change.change_id) as log_:
        rows = log_.rows()
        verdict = log_.verdict(rows, client)
        if not verdict.intact:
            raise RegistryStateError(f"the audit log of '{name}' does not verify ({verdict.problem}); nothing recorded")
        expected = audited_state(name, rows)
        found = read_registry(client, name)
        if version not in expected.statuses:
            raise RegistryStateError(
                f"the audit log of '{name}' records no v{version} still expected in the registry; nothing recorded"
            )
        if version in found.statuses:
            raise RegistryStateError(f"'{name}' v{version} is still in the registry: nothing to acknowledge")
        if version in (expected.champion, expected.challenger):
            raise RegistryStateError(
                f"v{version} is the audited champion or candidate of '{name}': a deleted champion is replaced by "
                "model_rollback, a candidate by a new retraining run, not acknowledged; nothing recorded"
            )
        reason = f"{deleted_reason(version)}: acknowledged ({why})"
        log_.record(change.entry(name, version, AuditAction.DRIFT_ACKNOWLEDGED, None, None, reason))
        return deleted_reason(version)


def describe(report: WatchReport) -> list[str]:
    """Lines for the task log and the alert: what differs, what was repaired, what to do."""

    def line(drift: Drift, what: str = "") -> str:
        advice = f" — {drift.advice}" if drift.advice else ""
        return f"{report.model_name}: {what}{drift.reason}{advice}"

    lines = [f"{report.model_name}: in progress, its retry completes it: {what}" for what in report.in_progress]
    lines += [line(d) for d in report.recorded]
    lines += [line(d, "repaired: ") for d in report.restored]
    lines += [line(d, "no longer found (put back by hand, or cleared by a later change): ") for d in report.resolved]
    lines += [line(d, "still differs (on record): ") for d in report.drifts if d.serving and d not in report.recorded]
    return lines


def summary(reports: list[WatchReport]) -> dict[str, Any]:
    return {
        "checked": len([r for r in reports if not r.skipped]),
        "drift": {r.model_name: [d.reason for d in r.drifts] for r in reports if r.drifts},
        "recorded": sum(len(r.recorded) for r in reports),
        "restored": sum(len(r.restored) for r in reports),
    }
