"""What must hold after every registry change: exactly one production version, holding ``champion``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from include.promotion import settings
from include.promotion.errors import InvariantViolation
from include.promotion.registry import client as mlflow_client
from include.promotion.states import CHAMPION_ALIAS, Stage, Status

if TYPE_CHECKING:
    from mlflow import MlflowClient


def verify_invariant(name: str, client: MlflowClient | None = None) -> str | None:
    """Exactly one version is in production and holds ``champion``; return it (None: nothing promoted yet).

    Reads only; callers that must not race a change call it under the model's lock.
    """
    client = client or mlflow_client.client()
    champion = mlflow_client.get_alias(client, name, CHAMPION_ALIAS)
    in_production = client.search_model_versions(
        f"name = {mlflow_client.quote(name)} and tags.promotion_status = '{Status.PRODUCTION}'"
    )
    versions = sorted(str(mv.version) for mv in in_production)
    if champion is None:
        if versions:
            raise InvariantViolation(f"'{name}' has production version(s) {versions} but no champion alias.")
        return None
    if versions != [str(champion.version)]:
        raise InvariantViolation(
            f"'{name}' must have exactly one production version holding 'champion' (v{champion.version}); "
            f"versions tagged production: {versions}."
        )
    if settings.mirror_stages() and champion.current_stage != Stage.PRODUCTION:
        # get_latest_versions would also catch a stray Production stage set outside the package, but it loads
        # every version of the model; the tags the package writes are what carries the decision.
        raise InvariantViolation(f"'{name}': the champion v{champion.version} is in stage '{champion.current_stage}'.")
    return str(champion.version)
