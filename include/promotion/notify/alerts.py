"""Who hears what: a candidate awaits approval, the registry differs from the audit log, a promotion did not hold.

The task log always. Reviewers are told of a waiting candidate by e-mail to ``approval.notify_emails``; on-call
alerts go to the model's ``alerts`` targets (``targets``: e-mail through Airflow's ``smtp_default``, Slack),
``approval.notify_emails`` when it has none.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from include.promotion.config import ModelConfig
from include.promotion.notify.targets import DEFAULT_RETRY, EmailTarget, Notice, Target

log = logging.getLogger(__name__)


class LogNotifier(BaseNotifier):
    """Writes the reviewers, and where they answer, to the task log."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        task = context["task"]
        users = ", ".join(u["id"] for u in task.assigned_users or [])
        try:
            link = task.generate_link_to_ui_from_context(context=context)
        except ValueError:
            link = "Airflow UI → Browse → Required Actions"
        task.log.info("Approval requested from %s: %s. Answer at %s", users, task.subject, link)


def approval_notifiers(cfg: ModelConfig) -> list[Any]:
    notifiers: list[Any] = [LogNotifier()]
    if cfg.approval.notify_emails:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifiers.append(
            SmtpNotifier(
                to=list(cfg.approval.notify_emails),
                subject=f"[approval needed] {cfg.name}: promote to production?",
                html_content=(
                    "A new version of {{ dag.dag_id }} awaits your approval in Airflow: "
                    "Browse → Required Actions, run {{ run_id }}."
                ),
            )
        )
    return notifiers


def alert_drift(cfg: ModelConfig, lines: list[str]) -> None:
    """Tell the model's people that its registry differs from the audit log (the watch's alert)."""
    _alert(
        cfg,
        "REGISTRY DRIFT",
        f"[registry drift] {cfg.name}: the registry differs from the audit log",
        "The registry watch found:",
        lines,
    )


def alert_post_promotion(cfg: ModelConfig, lines: list[str]) -> None:
    """Tell the model's people that a promotion did not hold (the post-promotion check's alert)."""
    _alert(
        cfg,
        "POST-PROMOTION CHECK FAILED",
        f"[post-promotion check failed] {cfg.name}: the new champion did not pass its check in production",
        "The post-promotion check found:",
        lines,
    )


def alert_deploy_notification(cfg: ModelConfig, lines: list[str]) -> None:
    """Tell the model's people that deployers were not told of a production change (``notify_deployers``)."""
    _alert(
        cfg,
        "DEPLOY NOTIFICATION FAILED",
        f"[deploy notification failed] {cfg.name}: deployers were not told of a production change",
        "The production change stands, but these deploy targets did not take its event:",
        lines,
    )


def alert_health(cfg: ModelConfig, lines: list[str], recovered: bool = False) -> None:
    """Tell on-call that the champion degraded in production (or is healthy again): ``model_health``'s alert."""
    if recovered:
        _alert(
            cfg,
            "PRODUCTION HEALTH RECOVERED",
            f"[production health recovered] {cfg.name}: the champion is healthy again",
            "model_health found:",
            lines,
        )
        return
    _alert(
        cfg,
        "PRODUCTION HEALTH DEGRADED",
        f"[production health degraded] {cfg.name}: the champion breaches its health limits",
        "model_health found:",
        lines,
    )


def alert_targets(cfg: ModelConfig) -> list[Target]:
    """Where the model's on-call alerts go besides the task log (``alerts``; default ``approval.notify_emails``)."""
    targets: list[Target] = []
    if emails := cfg.alert_emails:
        targets.append(EmailTarget(emails))
    if cfg.alerts.slack_conn_id:
        from include.promotion.notify.targets import SlackTarget

        targets.append(SlackTarget(cfg.alerts.slack_conn_id))
    return targets


def _alert(cfg: ModelConfig, marker: str, subject: str, intro: str, lines: list[str]) -> None:
    """Each line in the task log as an error after ``marker`` (what people grep for), then every alert target.

    A target that fails is logged and skipped: the alert is also in the log and the run fails, so a mail or Slack
    outage must not hide it.
    """
    for line in lines:
        log.error("%s %s", marker, line)
    notice = Notice(subject, [intro, *lines])
    try:
        targets = alert_targets(cfg)
    except Exception:
        log.exception("could not reach the alert targets of %s for '%s'", cfg.name, subject)
        return
    for target in targets:
        try:
            target.send(notice, DEFAULT_RETRY)
        except Exception:
            log.exception("could not send the alert '%s' to %s", subject, target.name)
