"""What the rollback form says before anyone triggers it: the version a rollback restores, or why none can be.

The same checks as the rollback DAG's ``validate`` (``registry.rollback.plan_rollback``), run read-only as the page's
reader (the audit log's reader role, the registry's read account), so the form tells the on-call what ``validate``
would answer, and is disabled when no rollback is possible. Display only: ``validate`` decides again when the run
starts, under the model's lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from include.promotion.audit import log as audit
from include.promotion.audit.replay import audited_state
from include.promotion.errors import RollbackTargetInvalid
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import rollback
from include.promotion.web.registry_reads import registered_model

MAX_NAMED = 5  # earlier champions checked as targets one may name (newest first)


@dataclass(frozen=True)
class Restorable:
    version: str
    rolled_back: bool  # restoring it needs the form's "restore a rolled-back version" box


@dataclass(frozen=True)
class RollbackPreview:
    """What a rollback of the model would do now."""

    champion: str | None
    target: str | None  # what a rollback without a named version restores
    why_not: str | None  # why that default is refused: ``validate``'s own words
    named: tuple[Restorable, ...]  # earlier champions one may name instead, newest first

    @property
    def possible(self) -> bool:
        return self.target is not None or bool(self.named)


def preview(model: str, conn_id: str) -> RollbackPreview:
    """The default target (or why there is none) and the earlier champions that may be named, read-only."""
    client = mlflow_client.client()
    rows = audit.rows(model, conn_id)
    state = audited_state(model, rows)
    if state.champion is None and registered_model(client, model) is None:
        # never registered (MLflow refuses the reader any alias lookup on a model it does not have): nothing served
        return RollbackPreview(None, None, f"model '{model}' has no champion: nothing is in production yet.", ())
    try:
        plan = rollback.plan_rollback(model, None, client, audit_rows=rows)
    except RollbackTargetInvalid as refused:
        target, current, why_not = None, None, str(refused)
    else:
        target, current, why_not = plan.target_version, plan.current_version, None
    champion = current or state.champion
    earlier = [v for v in dict.fromkeys(reversed(state.champion_history)) if v not in (champion, target)]
    named = []
    for version in earlier[:MAX_NAMED]:
        try:
            plan = rollback.plan_rollback(model, version, client, allow_rolled_back=True, audit_rows=rows)
        except RollbackTargetInvalid:
            continue
        named.append(Restorable(version, plan.restores_rolled_back))
    return RollbackPreview(champion, target, why_not, tuple(named))
