"""What the client's tests need: the client itself, pytest, and a real MLflow server holding a governed model.

They run in a virtual environment with only ``client/requirements.txt``, the client and pytest installed (no Airflow,
no repository on the path; ``tests/integration/test_client_venv.py`` builds it). The server and the model come from
the environment:

- ``PROMOTION_CLIENT_TEST_TRACKING_URI``: the MLflow tracking server (required by the tests that talk to it);
- ``PROMOTION_CLIENT_TEST_MODEL``: a registered model whose ``@champion`` the package's pipeline put in production
  (a skops file with a signature and an input example; required likewise);
- ``PROMOTION_CLIENT_TEST_USERNAME`` / ``PROMOTION_CLIENT_TEST_PASSWORD``: a read-only MLflow account, if the server
  requires a login (the tests only read the registry).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from client_support import Target

TRACKING_URI = "PROMOTION_CLIENT_TEST_TRACKING_URI"
MODEL = "PROMOTION_CLIENT_TEST_MODEL"
USERNAME = "PROMOTION_CLIENT_TEST_USERNAME"
PASSWORD = "PROMOTION_CLIENT_TEST_PASSWORD"


@pytest.fixture(scope="session")
def target() -> Iterator[Target]:
    """The server and model named by the environment, with the session's MLflow credentials set from it; a clear
    failure when they are not named."""
    missing = [name for name in (TRACKING_URI, MODEL) if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not set: the client's tests read a real MLflow server. Set {TRACKING_URI} to its "
            f"URL and {MODEL} to a registered model with a @champion the package put in production (and "
            f"{USERNAME} / {PASSWORD} for a read-only account if the server requires a login); "
            "tests/integration/test_client_venv.py does all this for you.",
            pytrace=False,
        )
    url, model = os.environ[TRACKING_URI], os.environ[MODEL]
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in (("MLFLOW_TRACKING_USERNAME", USERNAME), ("MLFLOW_TRACKING_PASSWORD", PASSWORD)):
            if os.environ.get(value):
                patch.setenv(variable, os.environ[value])
            else:
                patch.delenv(variable, raising=False)
        from mlflow import MlflowClient

        holder = MlflowClient(tracking_uri=url, registry_uri=url).get_model_version_by_alias(model, "champion")
        yield Target(url, model, str(holder.version), holder.run_id, holder.source, bool(os.environ.get(USERNAME)))


@pytest.fixture(autouse=True, scope="session")
def bounded_mlflow_requests() -> Iterator[None]:
    """The request limits docs/serving.md recommends for a serving process: MLflow's defaults (7 retries with
    exponential backoff, 120 s timeouts) would hold a call to a server that went away for minutes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        yield
