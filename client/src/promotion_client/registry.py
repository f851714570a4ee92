"""The little of MLflow the serving cache needs: where the tracking server is, whether it answers, which version
holds an alias, and a version's artifacts downloaded within a size limit from the tracking server only.

mlflow and requests are imported when first used (importing the client stays cheap). The Airflow side uses the same
alias lookup and credentials (``include/promotion/registry/client.py`` imports them from here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from promotion_client.errors import ClientError, CopyRefused, RegistryUnreachable

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# Where a version's artifacts may come from: the tracking server's served artifacts (and the models:/ and runs:/
# URIs it resolves), or http(s) on the tracking server's own host. A file: or bare path (a file of the serving
# host), or a bucket the registry merely names, is refused.
ARTIFACT_SCHEMES = frozenset({"mlflow-artifacts", "models", "runs"})
# The /health probe before each round of registry calls: MLflow's own client retries a refused connection with
# exponential backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default: minutes), so an outage is found here, in
# seconds. (connect, read) timeouts in seconds.
PROBE_TIMEOUT = (2.0, 5.0)
# MLflow's client has no per-call limits: unset, its defaults (7 retries with backoff, 120 s timeouts) hold a call
# for minutes while MLflow is partly down.
REQUEST_LIMITS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def tracking_uri(where: str = "the environment of the serving process") -> str:
    """The MLflow tracking server (``MLFLOW_TRACKING_URI``), or ``ClientError`` saying where to set it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise ClientError(
            "MLFLOW_TRACKING_URI is not set: point it at the MLflow tracking server "
            f"(for example http://127.0.0.1:5000) in {where}."
        )
    return uri


def shown(uri: str) -> str:
    """The tracking URI without credentials, for logs and messages."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def short(exc: Exception) -> str:
    """An exception in one line of at most 300 characters (MLflow's carry whole response bodies)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def unset_request_limits() -> list[str]:
    """Which of MLflow's request limits (REQUEST_LIMITS) the environment leaves at their unbounded defaults."""
    return [name for name in REQUEST_LIMITS if not os.environ.get(name)]


def host_creds(uri: str) -> Any:
    """The credentials and TLS settings MLflow's own clients send (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``)."""
    from mlflow.utils.credentials import get_default_host_creds

    return get_default_host_creds(uri)


def new_client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` whose tracking and registry are both ``uri`` (never the process's global URIs)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_missing(exc: Exception) -> bool:
    """Whether MLflow answered "no such resource" (as opposed to failing to answer)."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def get_alias(mlflow_client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None if the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        # Only "no such model" and "no such alias" mean absent; a network or server error must not read as
        # "no champion" (that would skip archiving it, or skip the champion comparison).
        not_found = getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in str(
            exc
        )
        if is_missing(exc) or not_found:
            return None
        raise


def probe(uri: str) -> None:
    """``RegistryUnreachable`` when the tracking server does not answer its health check, or answers 5xx, within
    PROBE_TIMEOUT."""
    import requests

    if urlsplit(uri).scheme not in {"http", "https"}:
        return
    creds = host_creds(uri)  # the TLS settings MLflow's client uses
    try:
        response = requests.get(
            uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT, verify=creds.verify, cert=creds.client_cert_path
        )
    except requests.RequestException as exc:
        raise RegistryUnreachable(f"health check failed: {type(exc).__name__}") from None
    # any answer below 500 proves the server is up (a proxy may guard /health with a login, or not route it);
    # the registry call that follows says the rest
    if response.status_code >= 500:
        raise RegistryUnreachable(f"health check answered HTTP {response.status_code}")


def check_artifact_uri(uri: object, tracking_uri: str, what: str) -> None:
    """``CopyRefused`` unless ``uri`` is served by the tracking server (see ARTIFACT_SCHEMES)."""
    text = str(uri or "")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ARTIFACT_SCHEMES:
        return
    server = urlsplit(tracking_uri)
    if scheme in {"http", "https"} and (scheme, parts.hostname, parts.port) == (
        server.scheme.lower(),
        server.hostname,
        server.port,
    ):
        return
    raise CopyRefused(
        f"the {what} is {shown(text)[:200]!r}: the loader downloads only what the tracking server serves "
        f"({', '.join(sorted(f'{s}:' for s in ARTIFACT_SCHEMES))} or http(s) on {shown(tracking_uri)}), never a "
        "file of this host or another store; register versions with the package's pipeline (mlflow server "
        "--serve-artifacts)"
    )


def too_large(version: str, size: int, limit: int) -> str:
    return (
        f"v{version}'s artifacts are {size} bytes, more than max_download_bytes={limit}: "
        "nothing was kept; raise max_download_bytes if this model really is that large"
    )


def download_version(mlflow_client: MlflowClient, uri: str, name: str, version: str, into: Path, limit: int) -> Path:
    """The artifacts of ``name`` v``version``, downloaded from the tracking server ``uri`` (the one
    ``mlflow_client`` asks) into a folder under ``into``.

    ``RegistryUnreachable`` when MLflow fails; ``CopyRefused`` for a location the server does not serve, or when the
    sizes it lists already exceed ``limit`` bytes (the caller measures the files again: a listing may omit sizes).
    """
    import mlflow
    import requests
    from mlflow.exceptions import MlflowException

    try:
        probe(uri)
        # the version's storage location, asked of this client's registry: a models:/ URI would be resolved
        # against the process's global registry URI instead
        location = mlflow_client.get_model_version_download_uri(name, version)
        check_artifact_uri(location, uri, f"download location of v{version}")
        _check_listed_size(location, uri, version, limit)
        fetched = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(into), tracking_uri=uri, registry_uri=uri
        )
    except (MlflowException, requests.RequestException) as exc:
        raise RegistryUnreachable(short(exc)) from exc
    return Path(fetched)


def _check_listed_size(location: str, uri: str, version: str, limit: int) -> None:
    from mlflow.artifacts import list_artifacts

    total, folders = 0, [location.rstrip("/")]
    while folders:
        folder = folders.pop()
        for info in list_artifacts(artifact_uri=folder, tracking_uri=uri) or []:
            if info.is_dir:
                folders.append(f"{folder}/{info.path.rstrip('/').rsplit('/', 1)[-1]}")
            else:
                total += info.file_size or 0
        if total > limit:
            raise CopyRefused(too_large(version, total, limit))
