"""Everything about a reviewer's answer: who may give it (four eyes), what they see, how it is recorded.

The gate itself is ``approval_gate.GovernedApprovalOperator`` (Airflow's Human-in-the-loop
``ApprovalOperator``); this module holds the decisions it applies, as plain functions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote as urlquote

from include.promotion.airflow_run import RunRef
from include.promotion.approval.restarts import Restart
from include.promotion.config import ModelConfig
from include.promotion.errors import ApprovalRefused
from include.promotion.inputs import clean_reason
from include.promotion.pipeline.evaluation import Evaluation, comparison_markdown
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import lifecycle
from include.promotion.retries import retry_transient
from include.promotion.shadow import evidence as shadow_evidence
from include.promotion.states import Tag

log = logging.getLogger(__name__)

TIMEOUT_REASON = "timed out: no reviewer answered within {hours:g} h"
NO_REASON = "(no reason given)"
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def markdown_text(value: object) -> str:
    """Text a person wrote, for the Markdown of the approval body: shown as typed, never as markup.

    Every ASCII punctuation character is backslash-escaped (CommonMark then shows it literally: ``<script>`` is
    text, not a tag the renderer would drop) and line breaks become spaces, so it cannot start a heading or a list.
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(value).split()))


def champion_note(tags: dict[str, str] | None) -> str | None:
    """Who approved the current champion and why, from its tags (shown to the reviewer; decides nothing)."""
    tags = tags or {}
    if not tags.get(Tag.APPROVED_BY):
        return None
    reason = tags.get(Tag.APPROVAL_REASON) or NO_REASON
    return f"approved by {markdown_text(tags['approved_by'])}: \u201c{markdown_text(reason)}\u201d"


def eligible_reviewers(reviewers: list[str], triggered_by: str | None, restarts: Sequence[Restart] = ()) -> list[str]:
    """The configured reviewers who may answer: everyone but the run's triggerer and whoever restarted it (four
    eyes: ``restarts.restarts_of``)."""
    excluded = _makers(triggered_by, restarts)
    eligible = [r for r in reviewers if r not in excluded]
    if not eligible:
        raise ApprovalRefused(
            f"no reviewer can approve this run: the configured reviewer(s) {reviewers} made this candidate "
            f"themselves ({'; '.join(excluded.values())}). Add another reviewer under approval.reviewers in the "
            "model config, or have someone else trigger a new run."
        )
    return eligible


def _makers(triggered_by: str | None, restarts: Sequence[Restart]) -> dict[str, str]:
    """user -> why they made the candidate: they triggered the run, or restarted it."""
    makers = {triggered_by: f"{triggered_by} triggered the run"} if triggered_by else {}
    for restart in restarts:
        makers.setdefault(restart.user, f"{restart.user} restarted it: {restart.describe()}")
    return makers


def check_responder(
    responder: str | None, reviewers: list[str], triggered_by: str | None, restarts: Sequence[Restart] = ()
) -> None:
    """Refuse an answer from anyone but an eligible reviewer, whatever the auth manager allowed."""
    if responder is None:
        return  # the scheduler's timeout default, not a person
    if responder == triggered_by:
        raise ApprovalRefused(f"'{responder}' triggered this run and cannot also approve it; ask another reviewer.")
    if restarted := [r for r in restarts if r.user == responder]:
        raise ApprovalRefused(
            f"'{responder}' restarted this run ({restarted[0].describe()}), so the candidate is theirs and they "
            "cannot also approve it; ask another reviewer."
        )
    if responder not in reviewers:
        raise ApprovalRefused(
            f"'{responder}' is not a configured reviewer ({', '.join(reviewers)}); their answer is ignored and "
            "nothing was promoted. Ask a reviewer to answer a new run."
        )


def who_may_answer(eligible: list[str], triggered_by: str | None, restarts: Sequence[Restart] = ()) -> str:
    """The approval body's line on who may answer, and who may not and why (shown before anyone clicks)."""
    line = f"**Who may answer**: {', '.join(markdown_text(r) for r in eligible)} (the model's reviewers"
    makers = _makers(triggered_by, restarts)
    if makers:
        line += "; not " + "; not ".join(markdown_text(why) for why in makers.values())
    return line + "). Anyone else who answers is refused and the candidate rejected."


def evidence_markdown(
    cfg: ModelConfig,
    staged: dict[str, Any],
    evaluation: dict[str, Any],
    trained: dict[str, Any],
    champion_approval: str | None = None,
    shadow: dict[str, Any] | None = None,
    who_may_answer: str | None = None,
    changes: Changes | None = None,
) -> str:
    """What a reviewer needs to decide, in Markdown: metrics side by side with regressions marked, gates, what
    changed from the champion (``changes_from_champion``), the shadow evaluation on live traffic
    (``shadow.evidence``), data, links, and who approved the current champion and why (``champion_note``, already
    escaped)."""
    version = staged["version"]
    champion_version = evaluation.get("champion_version")
    table = comparison_markdown(Evaluation(**evaluation)).splitlines()
    gates = [
        f"- {'PASS' if g['passed'] else 'FAIL'} `{g['gate']}` (value {g['value']:.4f})"
        for g in evaluation["gate_results"]
    ]
    model_page = f"{MODEL_PAGE_ROOT}/{urlquote(cfg.name, safe='')}"
    if champion_version:
        champion_line = (
            f"the current champion is **v{champion_version}** "
            f"([open]({mlflow_client.version_url(cfg.name, champion_version)}))"
            + (f", {champion_approval}" if champion_approval else "")
            + ". Both were scored on the same holdout"
        )
        outcome = "**Approve** makes it the champion and archives v" + str(champion_version) + "."
    else:
        champion_line = "there is **no champion yet**: this would be the first production version"
        outcome = "**Approve** makes it the first champion."
    run_link = mlflow_client.run_url(trained["run_id"], trained["experiment_id"])
    changes = changes or Changes()
    sizes = (
        f" ({changes.train_rows} training rows, {changes.holdout_rows} holdout rows)" if changes.holdout_rows else ""
    )
    return "\n".join(
        [
            f"### {cfg.name} v{version}: promote to production?",
            "",
            f"Candidate **v{version}** passed its automatic gates; {champion_line}.",
            "",
            *table,
            "",
            "**Gates**",
            *gates,
            "",
            *changes.markdown(champion_version),
            *shadow_evidence.markdown(shadow),
            "",
            f"- data version: `{trained['data_version']}`{sizes}",
            f"- MLflow run: [{trained['run_id']}]({run_link}) (the comparison table and the curves under *Artifacts → "
            "evaluation*)",
            "",
            f"![ROC curve of v{version} and the champion]({model_page}/versions/{version}/roc_curve.png) "
            f"![precision-recall curve of v{version} and the champion]({model_page}/versions/{version}/pr_curve.png)",
            "",
            f"- model version: [{cfg.name} v{version}]({mlflow_client.version_url(cfg.name, version)}); "
            f"every version and the history: [Model promotion page]({model_page})",
            "",
            f"{outcome} **Reject** keeps "
            + ("the current champion serving." if champion_version else "production empty.")
            + " Either way, write your reason: it goes into the audit log.",
            *(["", who_may_answer] if who_may_answer else []),
        ]
    )


MODEL_PAGE_ROOT = "/promotion/models"  # the plugin's pages, on Airflow's own origin (web.routes)
# The run params that say how a candidate was made (training.train_and_log logs them), compared with the champion's.
_COMPARED_PARAMS = ("estimator", "scale", "test_size")


@dataclass(frozen=True)
class Changes:
    """What differs between the candidate's MLflow run and the champion's: params and data (display only)."""

    params: tuple[tuple[str, str, str], ...] = ()  # (name, candidate, champion) for each param that differs
    data: tuple[str, str] | None = None  # (candidate, champion) data versions, when they differ
    train_rows: str | None = None
    holdout_rows: str | None = None
    champion_holdout_rows: str | None = None

    def markdown(self, champion_version: str | None) -> list[str]:
        if not champion_version:
            return []
        lines = [f"**What changed from v{champion_version}**"]
        if not self.params and self.data is None:
            return [*lines, "- the same estimator and parameters; the same data version", ""]
        lines += [
            f"- {markdown_text(name)}: **{markdown_text(new)}** (was {markdown_text(old)})"
            for name, new, old in self.params
        ]
        if self.data is not None:
            lines.append(f"- data version: `{self.data[0]}` (was `{self.data[1]}`)")
        return [*lines, ""]


def changes_from_champion(trained: dict[str, Any], champion_version: str | None, model_name: str) -> Changes:
    """The params and data of the candidate's run against the champion's (display only: a failure to read them
    leaves the section out, and the log says why)."""
    try:
        client = mlflow_client.client()
        mine = retry_transient(client.get_run, trained["run_id"]).data.params
        sizes = {"train_rows": mine.get("train_rows"), "holdout_rows": mine.get("holdout_rows")}
        if not champion_version:
            return Changes(**sizes)
        champion = retry_transient(mlflow_client.get_version, client, model_name, champion_version)
        if champion is None or not champion.run_id:
            return Changes(**sizes)
        theirs = retry_transient(client.get_run, champion.run_id).data.params
    except Exception:  # display only
        log.warning("could not read what changed from the champion for the evidence", exc_info=True)
        return Changes()
    names = sorted({*_COMPARED_PARAMS, *(k for k in {*mine, *theirs} if k.startswith("model__"))})
    differ = tuple(
        (name, mine.get(name, "(default)"), theirs.get(name, "(default)"))
        for name in names
        if mine.get(name) != theirs.get(name)
    )
    data_now, data_then = trained.get("data_version"), (champion.tags or {}).get(Tag.DATA_VERSION)
    data = (data_now, data_then) if data_then and data_now != data_then else None
    return Changes(differ, data, **sizes, champion_holdout_rows=theirs.get("holdout_rows"))


def champion_tags(model_name: str, version: str | None) -> dict[str, str] | None:
    """The tags of the champion the candidate was compared with (None: no champion, it is gone, or unreadable).

    Only shown to the reviewer: a failure to read them leaves the note out rather than failing the gate.
    """
    if not version:
        return None
    try:
        found = retry_transient(mlflow_client.get_version, mlflow_client.client(), model_name, version)
    except Exception:  # display only: the evidence goes out without the note, and the log says why
        log.warning("could not read the tags of %s v%s for the evidence", model_name, version, exc_info=True)
        return None
    return dict(found.tags or {}) if found is not None else None


def answer_of(event: dict[str, Any], approve_option: str, timeout_hours: float) -> tuple[str | None, bool, str]:
    """(responder, approved, reason) of a Human-in-the-loop answer; a timeout is (None, False, why).

    Raises ``InputRejected`` for a reason outside its limits (the form enforces them; an API caller may not).
    """
    # the user name (model configs name people by it): the id too under the simple auth manager, not under FAB's
    responded = event.get("responded_by_user") or {}
    responder = responded.get("name") or responded.get("id") or None
    if responder is None:
        return None, False, TIMEOUT_REASON.format(hours=timeout_hours)
    reason = clean_reason((event.get("params_input") or {}).get("reason"), "the reviewer's reason", required=False)
    approved = event.get("chosen_options") == [approve_option]
    return responder, approved, reason or NO_REASON


def record_answer(
    model_name: str,
    version: str,
    run: RunRef,
    reviewer: str | None,
    approved: bool,
    reason: str,
    restarts: Sequence[Restart] = (),
) -> None:
    """Record an answer where it arrives: an Approve on the version (``promote_to_production`` acts only on
    that audit row); a Reject, a timeout or a refused answer as a rejection (``challenger`` removed). Who restarted
    the run, if anyone did, is part of the recorded reason."""
    actor = reviewer or run.dag_id
    change = lifecycle.Change.by(run, actor)
    if restarts:
        reason = f"{reason} [run restarted by {'; '.join(r.describe() for r in restarts)}]"
    if approved and reviewer is not None:
        retry_transient(lifecycle.record_approval, model_name, version, reviewer, reason, change)
        log.info("%s v%s approved by %s: %s", model_name, version, reviewer, reason)
    else:
        retry_transient(lifecycle.reject, model_name, version, actor, reason, change)
        log.warning("%s v%s rejected by %s: %s", model_name, version, reviewer or "the pipeline", reason)


__all__ = [
    "Changes",
    "answer_of",
    "champion_note",
    "champion_tags",
    "changes_from_champion",
    "check_responder",
    "eligible_reviewers",
    "evidence_markdown",
    "markdown_text",
    "record_answer",
    "who_may_answer",
]
