"""The ``approve`` task: Airflow's Human-in-the-loop ``ApprovalOperator``, governed.

Reviewers answer under *Required Actions* in the Airflow UI. Only the model's configured reviewers,
minus the user who triggered the run, are assigned; the answer is checked again when it arrives and
recorded on the spot (an Approve as the audit row ``promote_to_production`` acts on; a Reject, a
timeout, an error or a refused answer as a rejection). Imported at DAG parse time: Airflow only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, ParamsDict
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.hitl import HITLUser

from include.promotion import signing
from include.promotion.airflow_run import RunRef
from include.promotion.approval import review as approval
from include.promotion.approval.restarts import restarts_of
from include.promotion.config import ModelConfig, get_model_config
from include.promotion.errors import ApprovalRefused, InputRejected, RegistryStateError
from include.promotion.inputs import MAX_REASON_CHARS
from include.promotion.notify.alerts import approval_notifiers
from include.promotion.run_note import leave
from include.promotion.signing import Kind
from include.promotion.tasks.boundary import fails_fast


class GovernedApprovalOperator(ApprovalOperator):
    """``ApprovalOperator`` that assigns eligible reviewers at run time and records every answer.

    ``staged``, ``evaluation`` and ``trained`` are the (signed) values of the earlier tasks, passed as
    XComArgs; they are verified before the evidence is shown and again when the answer arrives.
    """

    template_fields = (*ApprovalOperator.template_fields, "staged", "evaluation", "trained", "shadow")

    def __init__(
        self, *, model_name: str, staged: Any, evaluation: Any, trained: Any, shadow: Any = None, **kwargs: Any
    ) -> None:
        # The form is attached when the gate opens and when the answer arrives (``_open_form``), not here: Airflow
        # validates a task's Params against their JSON Schema each time it serializes the DAG (twice per DAG, about
        # 0.6 s of CPU per full parse at 1,000 models) and the reviewers only ever see the form of the open request.
        super().__init__(**kwargs)
        self.model_name = model_name
        self.staged = staged
        self.evaluation = evaluation
        self.trained = trained
        self.shadow = shadow

    def _open_form(self) -> None:
        """Give the request its form (``reason``): what the reviewers fill in, and what their answer is checked
        against."""
        if "reason" not in self.params:
            self.params = ParamsDict({"reason": reason_param()})

    @fails_fast
    def execute(self, context: Any) -> Any:
        self._open_form()
        cfg = get_model_config(self.model_name)
        run = RunRef.from_context(context)
        staged = signing.verify(Kind.STAGING, run, self.staged)
        try:
            restarts = restarts_of(run)
        except ApprovalRefused as exc:  # four eyes cannot be checked now: nothing is decided, the run fails
            raise AirflowFailException(str(exc)) from None
        try:
            eligible = approval.eligible_reviewers(cfg.approval.reviewers, run.triggered_by, restarts)
        except ApprovalRefused as exc:  # nobody may ever answer: never leave a challenger nobody can approve
            why = f"{exc} The candidate is withdrawn."
            try:
                approval.record_answer(cfg.name, staged["version"], run, None, False, why[:1500], restarts)
            except RegistryStateError as answered:  # answered already: that answer stands
                why = f"{why} {answered}"
            leave(f"Not promoted: {why}")
            raise AirflowFailException(why) from None
        if restarts:
            self.log.warning("This run was restarted by %s", "; ".join(r.describe() for r in restarts))
        self.assigned_users = [HITLUser(id=r, name=r) for r in eligible]
        self.subject = f"Promote {cfg.name} v{staged['version']} to production?"
        evaluation = signing.verify(Kind.EVALUATION, run, self.evaluation)
        trained = signing.verify(Kind.TRAINING, run, self.trained)
        self.body = approval.evidence_markdown(
            cfg,
            staged,
            evaluation,
            trained,
            approval.champion_note(approval.champion_tags(cfg.name, evaluation.get("champion_version"))),
            signing.verify(Kind.SHADOW, run, self.shadow) if self.shadow is not None else None,
            approval.who_may_answer(eligible, run.triggered_by, restarts),
            approval.changes_from_champion(trained, evaluation.get("champion_version"), cfg.name),
        )
        if stale := self._question_kept_from_an_earlier_attempt(context):
            why = (
                f"this gate was asked before in this run and Airflow keeps a cleared gate's first question "
                f"(apache/airflow#73235: {stale}), so an answer would not be bound to this attempt's candidate, "
                "evidence and reviewers. The candidate is withdrawn; trigger a new run to review it."
            )
            try:
                approval.record_answer(cfg.name, staged["version"], run, None, False, why[:1500], restarts)
            except RegistryStateError as exc:  # answered already: that answer stands, this attempt changes nothing
                why = f"{why} {exc}"
            leave(f"Not promoted: the approval gate was cleared and does not reopen: {why}")
            raise AirflowFailException(why)
        self.log.info(
            "Waiting for one of %s to approve %s v%s (Required Actions in the Airflow UI); timeout %s.",
            eligible,
            cfg.name,
            staged["version"],
            self.response_timeout,
        )
        return super().execute(context)

    def _question_kept_from_an_earlier_attempt(self, context: Any) -> str | None:
        """What differs between this attempt's question and the one Airflow stores and shows (None: they agree).

        Airflow writes a task instance's question once; a cleared gate keeps the first attempt's subject, body and
        assigned users (``upsert_hitl_detail``), whatever this attempt computed. Asking the same way the operator
        does returns what is stored.
        """
        from airflow.sdk.execution_time.comms import CreateHITLDetailPayload
        from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

        stored = SUPERVISOR_COMMS.send(
            msg=CreateHITLDetailPayload(
                ti_id=context["task_instance"].id,
                options=self.options,
                subject=self.subject,
                body=self.body,
                defaults=self.defaults,
                multiple=self.multiple,
                params=self.serialized_params,
                assigned_users=[{"id": u["id"], "name": u["name"]} for u in self.assigned_users],
            )
        )
        shown = sorted(u.id for u in stored.assigned_users or [])
        if shown != sorted(u["id"] for u in self.assigned_users):
            return f"it still assigns {', '.join(shown) or 'nobody'}"
        if (stored.subject, stored.body) != (self.subject, self.body):
            return "it still shows the first attempt's evidence"
        return None

    def validate_params_input(self, params_input: Mapping) -> None:
        # An API caller may omit the reason (the Param is nullable); that must not lose the answer.
        self._open_form()  # a resumed task is built again from the DAG file, without the form
        super().validate_params_input({"reason": (params_input or {}).get("reason") or approval.NO_REASON})

    @fails_fast
    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        cfg = get_model_config(self.model_name)
        run = RunRef.from_context(context)
        version = signing.verify(Kind.STAGING, run, self.staged)["version"]
        if "error" in event:
            # Never leave a challenger that nobody can approve any more: record it like a rejection.
            why = f"the approval request ended with an error ({event.get('error_type', 'error')}): {event['error']}"
            approval.record_answer(cfg.name, version, run, None, False, why[:MAX_REASON_CHARS])
            leave(f"Not promoted: v{version} rejected: {why}")
            return super().execute_complete(context, event)
        try:
            responder, approved, reason = approval.answer_of(event, self.APPROVE, cfg.approval.timeout_hours)
            # read again: a clear while the gate waited (of this run's tasks) counts as much as one before it
            restarts = restarts_of(run) if responder is not None else []
            approval.check_responder(responder, cfg.approval.reviewers, run.triggered_by, restarts)
        except (ApprovalRefused, InputRejected) as exc:
            approval.record_answer(cfg.name, version, run, None, False, f"answer refused: {exc}"[:MAX_REASON_CHARS])
            leave(f"Not promoted: v{version} rejected, the answer was refused: {exc}")
            raise AirflowFailException(f"{exc} The candidate was rejected; nothing was promoted.") from None
        approval.record_answer(cfg.name, version, run, responder, approved, reason, restarts)
        if not approved:
            leave(
                f"Not promoted: v{version} rejected by {responder}: {reason}"
                if responder
                else f"Not promoted: v{version} {reason}"
            )
        return super().execute_complete(context, event)


def reason_param() -> Param:
    """The approval form's one field, as Airflow's HITL request stores it (a task Param). The form does not insist
    on a reason (``None`` by default); an empty one is recorded as "(no reason given)"."""
    return Param(
        None,
        source="task",
        type=["null", "string"],
        minLength=1,
        maxLength=MAX_REASON_CHARS,
        title="Reason",
        description="Why you approve or reject this version (at most "
        f"{MAX_REASON_CHARS} characters). Please always fill it in: it goes into the audit log.",
    )


def build_approval_task(
    cfg: ModelConfig, staged: Any, evaluation: Any, trained: Any, shadow: Any = None, **kwargs: Any
) -> GovernedApprovalOperator:
    """The approval task of a model's promotion DAG (the DAG file names it)."""
    return GovernedApprovalOperator(
        model_name=cfg.name,
        staged=staged,
        evaluation=evaluation,
        trained=trained,
        shadow=shadow,
        subject=f"Promote {cfg.name} to production?",
        body="The evidence is written when the candidate reaches this step.",
        assigned_users=[HITLUser(id=r, name=r) for r in cfg.approval.reviewers],
        defaults=[ApprovalOperator.REJECT],  # no answer in time is a rejection
        response_timeout=timedelta(hours=cfg.approval.timeout_hours),
        notifiers=approval_notifiers(cfg),
        doc_md="A configured reviewer (not the run's triggerer) approves or rejects the candidate.",
        # A retry would ask again (a new request, the recorded answer lost); transient errors while recording
        # the answer are retried inside the task instead (``retries.retry_transient``).
        retries=0,
        **kwargs,
    )
