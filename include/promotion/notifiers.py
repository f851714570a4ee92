"""Who hears that a candidate awaits approval: the task log always, e-mail when configured."""

from __future__ import annotations

from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from include.promotion.config import ModelConfig


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
