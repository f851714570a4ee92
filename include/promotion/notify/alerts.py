"""Who hears what: a candidate awaits approval, the registry differs from the audit log, a promotion did not hold.

The task log always; e-mail when the model configures ``approval.notify_emails`` (Airflow's ``smtp_default``).
"""

from __future__ import annotations

import html
import logging
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from include.promotion.config import ModelConfig

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


def _alert(cfg: ModelConfig, marker: str, subject: str, intro: str, lines: list[str]) -> None:
    """Each line in the task log as an error after ``marker`` (what people grep for), then the e-mail."""
    for line in lines:
        log.error("%s %s", marker, line)
    _mail_alert(cfg, subject, intro, lines)


def _mail_alert(cfg: ModelConfig, subject: str, intro: str, lines: list[str]) -> None:
    """E-mail an alert to ``approval.notify_emails`` through ``smtp_default``; no addresses: the log only."""
    if not cfg.approval.notify_emails:
        return
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)  # tag values and errors reach these lines
    try:
        with SmtpHook(smtp_conn_id="smtp_default") as hook:
            hook.send_email_smtp(
                to=list(cfg.approval.notify_emails),
                subject=subject,
                html_content=f"<p>{html.escape(intro)}</p><ul>{items}</ul>",
            )
    except Exception:  # the alert is also in the log and the run fails: a mail outage must not hide it
        log.exception("could not e-mail the alert '%s' to %s", subject, cfg.approval.notify_emails)
