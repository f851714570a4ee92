"""Deploy notifications: tell the model's deployers, at once and verifiably, that production changed.

A production change is an audit row that moved a version into Production: ``promote`` (a promotion),
``rollback_restore`` (the rollback DAG) or ``post_check_rollback`` to Production (the post-promotion check rolled
back by itself). ``notify_deployers`` runs as its own task (``notify_deployers``) after the change, reads the audit
rows of its own Airflow run (never an XCom: only workers write audit rows) and sends one event per such row
(``promotion_client.events.DeployEvent``, the wire contract) to every target in the model's
``deploy_notifications`` (``targets``):

* ``webhook_conn_ids``: Airflow connections (type ``http``) whose host is the receiver's URL and whose password is
  the signing secret: the event is POSTed as JSON, signed with the package's one scheme
  (``promotion_client.signing``). The body names its ``target`` (the connection id) so that a receiver can refuse
  a delivery meant for another target. The delivery id is stable per (target, audit row): a retried task sends the
  same id again (freshly timestamped and signed), so a receiver that already applied the event answers 409 and the
  sender counts that as delivered. ``promotion_client.verify_delivery`` is the receiving side.
* ``slack_conn_id``: a Slack incoming-webhook connection, posted to through ``SlackWebhookHook``.

Newest state only: every event carries the model's ``current_champion`` per the audit log at send time and, when a
later production change of the model exists, ``superseded_by_audit_id``. An event superseded by a change another
run recorded is not sent at all (a task cleared hours later must not re-announce a version that was rolled back
since); the run that made the newer change announces it. Receivers apply an event only if its ``audit_id`` is
above the last one they applied for the model.

Each delivery is retried with exponential backoff on a connection error, a timeout, 408/425/429 or 5xx. A target
that still refuses fails the task naming the target and its last answer (never the secret, nor a URL path that may
hold a token) after every other target was tried, and the model's on-call is alerted (``alerts``); the
production change itself is never undone.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from promotion_client.events import PAYLOAD_VERSION, EventType

from include.promotion.airflow_run import RunRef
from include.promotion.audit.replay import audited_state, status_after
from include.promotion.errors import DeployNotificationFailed
from include.promotion.notify.targets import (
    DEFAULT_RETRY,
    ID_NAMESPACE,
    Notice,
    RetryPolicy,
    SlackTarget,
    Target,
    TargetFailure,
    WebhookTarget,
    delivery_id,
)
from include.promotion.states import CHAMPION_ALIAS, AuditAction, Status

if TYPE_CHECKING:
    from include.promotion.config import DeployNotifications

log = logging.getLogger(__name__)

# audit rows are dated by PostgreSQL, a run's run_after by the api-server: allow for their clocks differing
RUN_CLOCK_SKEW = timedelta(seconds=60)

EVENT_OF_ACTION: dict[str, EventType] = {
    AuditAction.PROMOTE: EventType.PROMOTED,
    AuditAction.ROLLBACK_RESTORE: EventType.ROLLED_BACK,
    AuditAction.POST_CHECK_ROLLBACK: EventType.AUTO_ROLLED_BACK,
}


# -- the events: derived from the audit log ------------------------------------------------------------------
def events_from_rows(model_name: str, rows: Sequence[Mapping[str, Any]], run: RunRef) -> list[dict[str, Any]]:
    """One event per audit row of ``run`` that put a version into Production, oldest first.

    ``rows`` are all the model's audit rows, oldest first (``audit.rows``): the previous champion of each change is
    the last other champion the rows before it record (``audit_state``), whichever way it left production. A row
    dated before the run was created (``run.run_after``) is another run's under a reused run id. Each event names
    the model's ``current_champion`` per all of ``rows`` and, when a later row changed production again,
    ``superseded_by_audit_id`` (see ``stale``).
    """
    current = audited_state(model_name, rows).champion
    earliest = _aware(run.run_after) - RUN_CLOCK_SKEW if run.run_after is not None else None
    events = []
    for index, row in enumerate(rows):
        if (row.get("dag_id"), row.get("run_id")) != (run.dag_id, run.run_id):
            continue
        if row["action"] not in EVENT_OF_ACTION or status_after(row) != Status.PRODUCTION:
            continue
        created_at = row.get("created_at")
        if earliest is not None and isinstance(created_at, datetime) and _aware(created_at) < earliest:
            continue
        version = str(row["version"])
        # the last champion before this row other than this version (rows that demote it may come first)
        history = audited_state(model_name, rows[:index]).champion_history
        previous = next((v for v in reversed(history) if v != version), None)
        later = [r for r in rows[index + 1 :] if _changes_production(r, version)]
        events.append(
            {
                "payload_version": PAYLOAD_VERSION,
                "type": str(EVENT_OF_ACTION[row["action"]]),
                "event_id": str(uuid.uuid5(ID_NAMESPACE, f"{model_name}\n{row['id']}\n{_iso(created_at)}")),
                "model": model_name,
                "version": version,
                "previous_version": previous,
                "current_champion": current,
                "superseded_by_audit_id": later[0]["id"] if later else None,
                "model_uri": f"models:/{model_name}/{version}",
                "champion_uri": f"models:/{model_name}@{CHAMPION_ALIAS}",
                "actor": row.get("actor"),
                "reason": row.get("reason"),
                "audit_id": row["id"],
                "occurred_at": _iso(created_at),
                "dag_id": row.get("dag_id"),
                "run_id": row.get("run_id"),
            }
        )
    return events


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # Airflow and PostgreSQL keep UTC


def _changes_production(row: Mapping[str, Any], version: str) -> bool:
    """Whether ``row`` moved a version into Production, or moved ``version`` out of it."""
    status = status_after(row)
    return status == Status.PRODUCTION or (status is not None and str(row["version"]) == version)


def stale(event: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], run: RunRef) -> Mapping[str, Any] | None:
    """The row of another run that changed production after ``event``'s row, if any: the event is then never sent.

    Re-announcing an older state (a task cleared hours after a rollback) would move a receiver back to it; the run
    that made the newer change announces that. A change superseded within its own run (a promotion the
    post-promotion check rolled back) is still sent: the newer event follows it in the same delivery, in order.
    """
    version = str(event["version"])
    for row in rows:
        if row["id"] <= event["audit_id"] or not _changes_production(row, version):
            continue
        if (row.get("dag_id"), row.get("run_id")) != (run.dag_id, run.run_id):
            return row
    return None


def production_changes(model_name: str, run: RunRef) -> list[dict[str, Any]]:
    """The events to send: the production changes this run recorded, less those another run superseded since."""
    from include.promotion.audit import log as audit

    rows = audit.rows(model_name)
    events = []
    for event in events_from_rows(model_name, rows, run):
        if (newer := stale(event, rows, run)) is not None:
            log.warning(
                "not sending %s: audit row %s (%s, run %s) changed production since; that run announces it",
                _what(event),
                newer["id"],
                newer["action"],
                newer.get("run_id"),
            )
            continue
        events.append(event)
    return events


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value is not None else None)


@dataclass(frozen=True)
class Outcome:
    """What one target did with one event."""

    target: str
    event_type: str
    version: str
    audit_id: int
    delivery_id: str | None
    delivered: bool
    detail: str


def send_production_changes(
    model_name: str,
    run: RunRef,
    notifications: DeployNotifications | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> list[Outcome]:
    """Send every production change ``run`` recorded to every target; ``DeployNotificationFailed`` if any refused.

    ``notifications`` defaults to the model's config. Every target is tried with every event before failing; a
    failure never touches the registry or the audit log.
    """
    if notifications is None:
        from include.promotion.config import get_model_config

        notifications = get_model_config(model_name).deploy_notifications
    builders: list[tuple[str, Callable[[], Target]]] = [
        (f"webhook '{c}'", lambda c=c: WebhookTarget(c)) for c in notifications.webhook_conn_ids
    ]
    if slack := notifications.slack_conn_id:
        builders.append((f"Slack '{slack}'", lambda: SlackTarget(slack, policy)))
    if not builders:
        log.info("%s: no deploy targets configured (deploy_notifications); nothing to send", model_name)
        return []
    events = production_changes(model_name, run)
    if not events:
        log.info("%s: run %s changed no production version; nothing to send", model_name, run.run_id)
        return []
    outcomes: list[Outcome] = []
    for name, build in builders:
        try:
            target = build()
        except DeployNotificationFailed as exc:
            outcomes += [_outcome(name, e, None, False, str(exc)) for e in events]
            log.error("%s", exc)
            continue
        except Exception as exc:  # the Slack hook's and client's errors may print the webhook URL: the type only
            detail = f"deploy target {name}: its connection cannot be used ({type(exc).__name__})"
            outcomes += [_outcome(name, e, None, False, detail) for e in events]
            log.error("%s", detail)
            continue
        for event in events:
            delivery = delivery_id(target.conn_id, event) if isinstance(target, WebhookTarget) else None
            try:
                detail = target.send(Notice(_what(event), event=event), policy)
            except TargetFailure as exc:
                outcomes.append(_outcome(name, event, delivery, False, f"last answer: {exc}"))
                log.error("deploy target %s did not take %s: last answer: %s", name, _what(event), exc)
                continue
            except Exception as exc:  # a bug or a client's own error: this target only; its text may hold a URL
                outcomes.append(_outcome(name, event, delivery, False, f"failed ({type(exc).__name__})"))
                log.error("deploy target %s did not take %s: failed (%s)", name, _what(event), type(exc).__name__)
                continue
            outcomes.append(_outcome(name, event, delivery, True, detail))
            log.info("sent %s to deploy target %s: %s", _what(event), name, detail)
    failed = [o for o in outcomes if not o.delivered]
    if failed:
        lines = "; ".join(f"{o.target}: {_what_of(o)}: {o.detail}" for o in failed)
        delivered = sum(o.delivered for o in outcomes)
        raise DeployNotificationFailed(
            f"{model_name}: {len(failed)} deploy notification(s) not delivered after retries ({lines}). "
            f"{delivered} other(s) were delivered. The production change stands (registry and audit log as they "
            "are); fix the target, then clear this task: it resends the same delivery ids, so receivers that got one "
            "already answer 409."
        )
    return outcomes


def _outcome(name: str, event: Mapping[str, Any], delivery: str | None, delivered: bool, detail: str) -> Outcome:
    return Outcome(name, str(event["type"]), str(event["version"]), int(event["audit_id"]), delivery, delivered, detail)


def _what(event: Mapping[str, Any]) -> str:
    return f"{event['type']} {event['model']} v{event['version']} (audit row {event['audit_id']})"


def _what_of(outcome: Outcome) -> str:
    return f"{outcome.event_type} v{outcome.version} (audit row {outcome.audit_id})"


def notify_deployers(model_name: str, run: RunRef) -> dict[str, Any]:
    """The ``notify_deployers`` task: send this run's production changes to the model's deploy targets.

    Returns ``{"events": [...], "deliveries": [...]}`` (for the task log and XCom; nothing reads it for a decision).
    A delivery that failed after retries is alerted (``notifiers.alert_deploy_notification``: an ERROR line, and
    e-mail to ``approval.notify_emails``), then fails the task: in the promotion DAG it is a teardown, whose
    failure alone would leave the run green.
    """
    from include.promotion.config import get_model_config
    from include.promotion.errors import PostPromotionCheckFailed
    from include.promotion.notify import alerts as notifiers
    from include.promotion.post_promotion import check
    from include.promotion.registry.lifecycle import Change

    cfg = get_model_config(model_name)
    unchecked = None
    try:  # first: a promotion this run made that its check never judged is a failed check (and maybe a rollback)
        check.check_outcome_recorded(cfg, Change.by(run, check.CHECK_ACTOR), run)
    except PostPromotionCheckFailed as exc:
        unchecked = exc
    try:
        outcomes = send_production_changes(model_name, run, cfg.deploy_notifications)
    except DeployNotificationFailed as exc:
        notifiers.alert_deploy_notification(cfg, [str(exc)])
        raise
    if unchecked is not None:
        raise unchecked
    return {
        "events": sorted({f"{o.event_type} v{o.version} (audit row {o.audit_id})" for o in outcomes}),
        "deliveries": [f"{o.target}: {o.detail}" for o in outcomes],
    }
