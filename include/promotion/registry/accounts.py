"""Accounts on an MLflow server run with ``--app-name basic-auth``: who may write governed models.

The pipeline writes the registry as a **service account** (``MLFLOW_TRACKING_USERNAME``, an MLflow
admin: registering, aliases, stages, tags and webhooks all need write or admin rights). People get
accounts that can log in and read (``default_permission = READ``); nobody but the service account and
the MLflow admin can write a governed model, because the service account creates each governed
registered model and its experiment before anyone else can claim the names (and the pipeline refuses
to adopt one that someone else created first: ``claim_for_pipeline``)::

    python -m include.promotion.registry.accounts bootstrap [--people-file users.json]

reads ``MLFLOW_TRACKING_URI``, ``MLFLOW_AUTH_ADMIN_USERNAME`` (default ``admin``),
``MLFLOW_AUTH_ADMIN_PASSWORD`` and the service account's ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` from the environment. Running it again changes nothing that is in place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from include.promotion.states import CLAIM_REFUSED_TAG

SERVICE_ACCOUNT = "promotion-pipeline"
# What the Airflow api-server reads the registry with, for the Model promotion page: an ordinary account (the
# server's default_permission READ), never an admin. Its password: ``MLFLOW_READER_PASSWORD`` at bootstrap.
READER_ACCOUNT = "promotion-reader"
log = logging.getLogger(__name__)


@contextlib.contextmanager
def acting_as(username: str, password: str) -> Iterator[None]:
    """MLflow's clients read credentials from the environment: switch them for the duration."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict(zip(keys, (username, password), strict=True)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_user(auth, username: str, password: str, admin: bool = False) -> None:
    """Create ``username`` (or set its password if it exists) and its admin flag."""
    from mlflow.exceptions import MlflowException

    try:
        auth.create_user(username, password)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.update_user_password(username, password)
    auth.update_user_admin(username, admin)


WRITER_PERMISSIONS = ("EDIT", "MANAGE")  # READ and USE change nothing of a model or experiment


def claim(tracking_uri: str, resource_type: str, resource_id: str) -> list[str]:
    """Make the pipeline the only writer of a governed model or experiment: revoke any other person's
    write permission on it (e.g. someone who created it before the pipeline did); return who could write.

    Runs as the service account (an MLflow admin). A writer whose right comes from a role or the server's
    default cannot be revoked here: they are returned too, marked so. On a server without authentication
    there is nothing to claim and nothing to claim it against: returns ``[]``.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client
    from mlflow.utils.rest_utils import http_request

    from include.promotion.registry.client import host_creds

    response = http_request(host_creds(tracking_uri), "/api/2.0/mlflow/users/list", "GET")
    if response.status_code == 404:
        return []  # no basic-auth app on this server
    response.raise_for_status()
    auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    writers = []
    for user in response.json().get("users", []):
        if user.get("is_admin"):
            continue
        name = user["username"]
        try:
            permission = auth.get_user_permission(name, resource_type, resource_id).permission
        except MlflowException:
            continue
        if permission not in WRITER_PERMISSIONS:
            continue
        try:
            auth.revoke_user_permission(name, resource_type, resource_id)
            writers.append(name)
        except MlflowException:
            writers.append(f"{name} (through a role or the default permission: change that in MLflow)")
    return writers


def claim_for_pipeline(resource_type: str, resource_id: str, what: str) -> None:
    """Before the pipeline trusts or writes a governed model or experiment, nobody else may write it.

    Someone who created it first (and so could write it) loses that right here (``claim``); and since
    what they already put in it cannot be trusted, the pipeline refuses to adopt it, now and on every later
    run (tag ``claim_refused``, which only an admin can remove): nothing is trained, evaluated or registered
    until an MLflow admin has deleted or renamed it.
    """
    from include.promotion import settings
    from include.promotion.errors import RegistryStateError
    from include.promotion.registry import client as mlflow_client

    client = mlflow_client.client()
    if resource_type == "experiment":
        tags, mark = client.get_experiment(resource_id).tags, client.set_experiment_tag
    else:
        registered = mlflow_client.find_registered_model(client, resource_id)
        if registered is None:
            raise RegistryStateError(f"{what} does not exist in the registry: nothing to claim.")
        tags, mark = registered.tags, client.set_registered_model_tag
    writers = claim(settings.tracking_uri(), resource_type, resource_id)
    if writers:
        mark(resource_id, CLAIM_REFUSED_TAG, ", ".join(writers)[:5000])
        log.error("%s: write access of %s revoked; only the pipeline may write it", what, writers)
    if writers or tags.get(CLAIM_REFUSED_TAG):
        raise RegistryStateError(
            f"{what} was writable by {', '.join(writers) or tags[CLAIM_REFUSED_TAG]}, not only by the pipeline "
            "(someone created it before the pipeline did). Their write access is revoked, but what they put in it "
            "cannot be trusted, so nothing was trained or registered: an MLflow admin must delete or rename it, then "
            "trigger a new run."
        )


def bootstrap(
    tracking_uri: str,
    admin: tuple[str, str],
    service: tuple[str, str],
    people: dict[str, str],
    governed_models: Sequence[str],
    reader_password: str | None = None,
) -> None:
    """Accounts in place (the reader's too, when its password is given) and every governed model created by the
    service account."""
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    from include.promotion.registry.client import ensure_registered_model, experiment_name, get_or_create_experiment

    with acting_as(*admin):
        auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
        ensure_user(auth, *service, admin=True)
        for username, password in people.items():
            if username != admin[0]:
                ensure_user(auth, username, password)
        if reader_password:
            ensure_user(auth, READER_ACCOUNT, reader_password)
    with acting_as(*service):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        for name in governed_models:
            ensure_registered_model(client, name, "")
            get_or_create_experiment(client, experiment_name(name))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.promotion.registry.accounts", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser("bootstrap", help="create the service account, people's accounts and governed models")
    boot.add_argument("--people-file", type=Path, help='JSON {"user": "password"} of people who log in to read')
    boot.add_argument(
        "--not-people", nargs="*", default=[], help="accounts of the people file that are programs (no MLflow account)"
    )
    args = parser.parse_args(argv)

    from include.promotion.config import load_model_configs

    missing = [
        v
        for v in ("MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD")
        if not os.environ.get(v)
    ]
    if missing:
        print(f"set {', '.join(missing)} in the environment first", file=sys.stderr)
        return 2
    people = json.loads(args.people_file.read_text()) if args.people_file else {}
    people = {user: password for user, password in people.items() if user not in args.not_people}
    models = sorted(load_model_configs().models)
    bootstrap(
        os.environ["MLFLOW_TRACKING_URI"],
        (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin", os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]),
        (os.environ.get("MLFLOW_TRACKING_USERNAME") or SERVICE_ACCOUNT, os.environ["MLFLOW_TRACKING_PASSWORD"]),
        people,
        models,
        os.environ.get("MLFLOW_READER_PASSWORD") or None,
    )
    print(f"MLflow accounts in place: service account, {len(people)} people; governed models: {', '.join(models)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
