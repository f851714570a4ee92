"""The chain head of each model's audit log, anchored outside PostgreSQL: a tag on the registered model.

Only the pipeline's MLflow service account (and the MLflow admin) may write a governed model's tags; people read
(``registry.accounts``). No database role, the schema owner's included, can move the anchor back after deleting or
rewriting rows, so ``chain.verify`` finds a truncated or re-hashed tail by comparing the log with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from include.promotion.audit.chain import ANCHOR_TAG, Anchor

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def read(client: MlflowClient, model: str) -> Anchor | None:
    """The model's anchored chain head; None when the model has no anchor yet (or is not registered).

    Read with the name search, not ``get_registered_model``, which loads every version of the model on MLflow's
    server (``registry.client.find_registered_model``); every registry change reads it.
    """
    from include.promotion.registry import client as mlflow_client

    registered = mlflow_client.find_registered_model(client, model)
    if registered is None:
        return None
    return Anchor.from_tag((registered.tags or {}).get(ANCHOR_TAG))


def of_row(row: Mapping[str, Any]) -> Anchor:
    return Anchor(int(row["id"]), str(row["row_hash"]), str(row["mac"]))


def write(client: MlflowClient, model: str, head: Anchor) -> bool:
    """Anchor ``head`` on the registered model (as the caller's MLflow account, the service account on workers).

    Returns False, logging why, when it cannot: the rows are written and MACed already, and ``verify`` accepts keyed
    rows after a lagging anchor; the next change of the model anchors its head again.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_tag(model, ANCHOR_TAG, head.to_tag())
    except MlflowException:
        log.warning(
            "could not anchor the audit chain head of %s (row %d) in the registry", model, head.row_id, exc_info=True
        )
        return False
    return True
