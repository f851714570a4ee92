"""The four-eyes approval gate: Airflow's Human-in-the-loop ``ApprovalOperator``, governed.

Reviewers answer under *Required Actions* in the Airflow UI. Only the model's configured reviewers,
minus the user who triggered the run, are assigned; the answer is checked again when it arrives;
a rejection or a timeout is recorded in the registry and the audit log, and nothing is promoted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from include.promotion import tracking
from include.promotion.config import ModelConfig
from include.promotion.errors import ApprovalRefused
from include.promotion.evaluation import Evaluation, comparison_markdown

APPROVE_TASK_ID = "approve"
TIMEOUT_REASON = "timed out: no reviewer answered within {hours:g} h"
NO_REASON = "(no reason given)"


def eligible_reviewers(reviewers: list[str], triggered_by: str | None) -> list[str]:
    """The configured reviewers who may answer: everyone but the run's triggerer (four eyes)."""
    eligible = [r for r in reviewers if r != (triggered_by or None)]
    if not eligible:
        raise ApprovalRefused(
            f"no reviewer can approve this run: the only configured reviewer(s) {reviewers} triggered it "
            "themselves. Add another reviewer under approval.reviewers in the model config, or have someone "
            "else trigger the run."
        )
    return eligible


def check_responder(responder: str | None, reviewers: list[str], triggered_by: str | None) -> None:
    """Refuse an answer from anyone but an eligible reviewer, whatever the auth manager allowed."""
    if responder is None:
        return  # the scheduler's timeout default, not a person
    if responder == triggered_by:
        raise ApprovalRefused(f"'{responder}' triggered this run and cannot also approve it; ask another reviewer.")
    if responder not in reviewers:
        raise ApprovalRefused(
            f"'{responder}' is not a configured reviewer ({', '.join(reviewers)}); their answer is ignored and "
            "nothing was promoted. Ask a reviewer to answer a new run."
        )


def evidence_markdown(
    cfg: ModelConfig, staged: dict[str, Any], evaluation: dict[str, Any], trained: dict[str, Any]
) -> str:
    """What a reviewer needs to decide, in Markdown: metrics side by side, gates, data, links."""
    version = staged["version"]
    champion_version = evaluation.get("champion_version")
    table = comparison_markdown(Evaluation(**evaluation)).splitlines()
    gates = [
        f"- {'PASS' if g['passed'] else 'FAIL'} `{g['gate']}` (value {g['value']:.4f})"
        for g in evaluation["gate_results"]
    ]
    champion_line = (
        f"the current champion is **v{champion_version}** ([open]({tracking.version_url(cfg.name, champion_version)}))"
        if champion_version
        else "there is **no champion yet**: this would be the first production version"
    )
    return "\n".join(
        [
            f"### {cfg.name} v{version}: promote to production?",
            "",
            f"Candidate **v{version}** passed its automatic gates; {champion_line}. Both were scored on the "
            "same holdout.",
            "",
            *table,
            "",
            "**Gates**",
            *gates,
            "",
            f"- data version: `{trained['data_version']}`",
            f"- MLflow run: [{trained['run_id']}]({tracking.run_url(trained['run_id'], trained['experiment_id'])}) "
            "(comparison table, ROC and PR curves under *Artifacts → evaluation*)",
            f"- model version: [{cfg.name} v{version}]({tracking.version_url(cfg.name, version)})",
            "",
            "**Approve** makes it the champion and archives the current one. **Reject** keeps the current "
            "champion serving. Either way, write your reason: it goes into the audit log.",
        ]
    )


def build_approval_task(cfg: ModelConfig, **kwargs: Any) -> Any:
    """The ``approve`` task of a model's promotion DAG."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk import Param
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.sdk.execution_time.hitl import HITLUser

    from include.promotion import steps
    from include.promotion.notifiers import approval_notifiers

    class GovernedApprovalOperator(ApprovalOperator):
        """``ApprovalOperator`` that assigns eligible reviewers at run time and records rejections."""

        def execute(self, context: Any) -> Any:
            triggered_by = steps.triggering_user(context)
            try:
                eligible = eligible_reviewers(cfg.approval.reviewers, triggered_by)
            except ApprovalRefused as exc:
                raise AirflowFailException(str(exc)) from None
            ti = context["ti"]
            staged = ti.xcom_pull(task_ids="promote_to_staging")
            self.assigned_users = [HITLUser(id=r, name=r) for r in eligible]
            self.subject = f"Promote {cfg.name} v{staged['version']} to production?"
            self.body = evidence_markdown(
                cfg, staged, ti.xcom_pull(task_ids="evaluate"), ti.xcom_pull(task_ids="train")
            )
            self.log.info(
                "Waiting for one of %s to approve %s v%s (Required Actions in the Airflow UI); timeout %s.",
                eligible,
                cfg.name,
                staged["version"],
                self.response_timeout,
            )
            return super().execute(context)

        def validate_params_input(self, params_input: Any) -> None:
            # The UI form requires a reason; an API caller may omit it, and that must not lose the answer.
            super().validate_params_input({"reason": (params_input or {}).get("reason") or NO_REASON})

        def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
            responder = (event.get("responded_by_user") or {}).get("id") if "error" not in event else None
            triggered_by = steps.triggering_user(context)
            try:
                check_responder(responder, cfg.approval.reviewers, triggered_by)
            except ApprovalRefused as exc:
                raise AirflowFailException(str(exc)) from None
            if "error" not in event:
                approved = event.get("chosen_options") == [self.APPROVE] and responder is not None
                reason = ((event.get("params_input") or {}).get("reason") or "").strip() or NO_REASON
                if responder is None:
                    reason = TIMEOUT_REASON.format(hours=cfg.approval.timeout_hours)
                steps.record_answer(cfg.name, context, responder, approved, reason)
            return super().execute_complete(context, event)

    return GovernedApprovalOperator(
        task_id=APPROVE_TASK_ID,
        subject=f"Promote {cfg.name} to production?",
        body="The evidence is written when the candidate reaches this step.",
        assigned_users=[HITLUser(id=r, name=r) for r in cfg.approval.reviewers],
        defaults=[ApprovalOperator.REJECT],  # no answer in time is a rejection
        response_timeout=timedelta(hours=cfg.approval.timeout_hours),
        params={
            # A default is needed: Airflow validates task params when the task starts, before anyone answers.
            "reason": Param(
                None,
                type=["null", "string"],
                minLength=1,
                title="Reason",
                description="Why you approve or reject this version. Please always fill it in: it goes into "
                "the audit log.",
            )
        },
        notifiers=approval_notifiers(cfg),
        doc_md="A configured reviewer (not the run's triggerer) approves or rejects the candidate.",
        # A retry would ask again (a new request, the recorded answer lost); transient errors while recording
        # the answer are retried inside the task instead.
        retries=0,
        **kwargs,
    )
