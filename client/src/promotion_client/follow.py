"""Following the alias: each round asks MLflow which version holds it, switches to that version's verified copy
(downloaded when missing), and falls back on the last good local copy while MLflow cannot answer.

``AliasFollower`` is the part of ``ChampionCache`` that runs a round (under the cache's lock); the cache holds the
state it reads and writes (what is served, what was refused, since when MLflow is unreachable). A copy whose manifest
names another run, source, model id or tracking server than the version MLflow answers (a registered model deleted
and re-created reuses the numbers) is refused and downloaded again.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

from promotion_client import registry
from promotion_client.errors import CopyRefused, RegistryUnreachable, ServingError
from promotion_client.registry import shown
from promotion_client.served import Served
from promotion_client.store import MODEL_DIR, checked_version, holder_identity, manifest_identity
from promotion_client.trust import load_sklearn_copy

if TYPE_CHECKING:
    from pathlib import Path

    from mlflow.entities.model_registry import ModelVersion

    from promotion_client.store import LocalStore

log = logging.getLogger(__name__)


class Reachability:
    """Whether MLflow answers: an outage is logged once when it starts (with the version still served) and once
    when it ends (with its length), every poll in between at debug level."""

    def __init__(self, what: str, tracking_uri: str) -> None:
        self.what, self.tracking_uri = what, tracking_uri
        self.outage_since: float | None = None

    def lost(self, exc: Exception, served: Served | None) -> None:
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            if served is not None:  # otherwise _serve_local_copy says it, with what it serves instead
                log.warning(
                    "%s: MLflow at %s is unreachable (%s); still serving v%s until it is back",
                    *(self.what, shown(self.tracking_uri), exc, served.version),
                )
        else:
            log.debug("%s: MLflow still unreachable (%s)", self.what, exc)

    def back(self) -> None:
        if self.outage_since is not None:
            log.info(
                "%s: MLflow at %s is reachable again after %.0f s",
                *(self.what, shown(self.tracking_uri), time.monotonic() - self.outage_since),
            )
            self.outage_since = None


class AliasFollower:
    """The rounds of a ``ChampionCache`` (see the module docstring); every attribute is set by the cache."""

    model_name: str
    alias: str
    tracking_uri: str
    max_download_bytes: int
    store: LocalStore
    _served: Served | None
    _refused: str | None  # a version whose artifact was refused: not retried until the alias moves
    _no_alias_logged: bool
    _client: Any
    _alias_read_at: float  # wall clock of the last alias read: orders current.json writes across processes
    _reachability: Reachability

    def _what(self) -> str:
        return f"{self.model_name}@{self.alias}"

    def _round(self) -> None:
        """Under the cache's lock: make the served version the alias's, or explain why not."""
        read_at = time.time()
        try:
            holder = self._alias_holder()
        except RegistryUnreachable as exc:
            self._reachability.lost(exc, self._served)
            if self._served is None:
                self._serve_local_copy(f"MLflow at {shown(self.tracking_uri)} is unreachable ({exc})")
            return
        self._reachability.back()
        self._alias_read_at = read_at
        if holder is None:
            self._no_holder()
            return
        self._no_alias_logged = False
        try:
            version = checked_version(holder.version)
        except CopyRefused as exc:
            version = str(holder.version)[:40]
            if version != self._refused:
                self._refused = version
                log.error("%s: %s; %s", self._what(), exc, self._keeps_serving("its last good local copy"))
            if self._served is None:
                self._serve_local_copy(str(exc))
            return
        served = self._served
        if served is not None and served.version == version:
            if served.identity == holder_identity(holder, self.tracking_uri) or version == self._refused:
                return
            log.warning(
                "%s: v%s in MLflow is not the v%s served (run %s, source %s; the registered model was re-created?): "
                "switching",
                *(self._what(), version, version, holder.run_id, holder.source),
            )
        elif version == self._refused:
            return  # logged when it was refused; the alias must move (e.g. a rollback) before it is tried again
        self._try_switch(holder, version)

    def _no_holder(self) -> None:
        """MLflow is reachable and says no version holds the alias."""
        if self._served is not None:
            # a running process keeps its model: removing a serving model because an alias was deleted (by
            # mistake, or mid-rollback) would take the service down; but it is an error, said once
            if not self._no_alias_logged:
                log.error(
                    "%s: MLflow at %s says no version holds @%s (alias or model deleted); still serving v%s. "
                    "Restore the alias, or stop this process: a restart refuses to serve a model without it",
                    *(self._what(), shown(self.tracking_uri), self.alias, self._served.version),
                )
                self._no_alias_logged = True
            return
        # a decommissioned model must not come back from disk
        message = (
            f"{self._what()}: nothing to serve: model '{self.model_name}' has no @{self.alias} alias in MLflow at "
            f"{shown(self.tracking_uri)}: put a version in production first (the promotion DAG), or check the "
            "model name. A local copy is not served while MLflow says there is no champion."
        )
        log.error("%s", message)
        raise ServingError(message)

    def _try_switch(self, holder: ModelVersion, version: str) -> None:
        try:
            self._switch_to(holder)
        except RegistryUnreachable as exc:
            self._reachability.lost(exc, self._served)
            if self._served is None:
                self._serve_local_copy(f"downloading v{version} from MLflow failed ({exc})")
        except OSError as exc:  # the cache folder: full, or no longer writable
            log.error(
                "%s: v%s could not be stored in %s (%s); %s",
                *(self._what(), version, self.store.cache_dir, exc, self._keeps_serving("the last good local copy")),
            )
            if self._served is None:
                self._serve_local_copy(f"v{version} could not be stored in {self.store.cache_dir} ({exc})")
        except CopyRefused as exc:
            self._refused = version
            log.error(
                "%s: v%s refused: %s; %s", self._what(), version, exc, self._keeps_serving("its last good local copy")
            )
            if self._served is None:
                self._serve_local_copy(f"v{version}, the version holding @{self.alias}, was refused: {exc}")

    def _keeps_serving(self, otherwise: str) -> str:
        return f"still serving v{self._served.version}" if self._served else f"trying {otherwise}"

    def _alias_holder(self) -> ModelVersion | None:
        """The version holding the alias, or None when none does; ``RegistryUnreachable`` when MLflow cannot tell."""
        import requests
        from mlflow.exceptions import MlflowException

        registry.probe(self.tracking_uri)
        try:
            return registry.get_alias(self._mlflow(), self.model_name, self.alias)
        except (MlflowException, requests.RequestException, OSError) as exc:
            raise RegistryUnreachable(registry.short(exc)) from exc

    def _mlflow(self) -> Any:
        if self._client is None:
            self._client = registry.new_client(self.tracking_uri)
        return self._client

    # -- local copies -------------------------------------------------------------------------------------------
    def _switch_to(self, holder: ModelVersion) -> None:
        version = checked_version(holder.version)
        identity = holder_identity(holder, self.tracking_uri)
        registry.check_artifact_uri(holder.source, self.tracking_uri, f"source of v{version}")
        with self.store.shared():
            found = self._load_local(holder, version, identity)
        if found is None:
            staging = self._download(holder, version)
            try:
                with self.store.shared():
                    found = self._place(staging, holder, version, identity)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        model, signature, folder = found
        self._serve(Served(version, model, folder / MODEL_DIR, holder.run_id, signature, identity))

    def _load_local(
        self, holder: ModelVersion, version: str, identity: tuple[Any, ...]
    ) -> tuple[Any, Any, Path] | None:
        """Under the shared lock: the valid local copy of exactly this version, loaded; None (a bad one discarded)
        when it must be downloaded."""
        folder = self.store.folder(version)
        if not folder.exists():
            return None
        try:
            manifest = self.store.verify(folder, version)
            if manifest_identity(manifest) != identity:
                raise CopyRefused(
                    f"it is a copy of another v{version} (run {manifest.get('run_id')}, source "
                    f"{manifest.get('source')}, from {manifest.get('tracking_uri')}), not of run {holder.run_id}, "
                    f"source {holder.source} at {shown(self.tracking_uri)}"
                )
            model, signature = load_sklearn_copy(folder / MODEL_DIR)
        except CopyRefused as exc:
            # hashes that match what is refused: the manifest was rewritten with the files; MLflow has the original
            log.warning("%s: local copy %s refused: %s; downloading v%s again", self._what(), folder, exc, version)
            self.store.discard(folder)
            return None
        return model, signature, folder

    def _place(
        self, staging: Path, holder: ModelVersion, version: str, identity: tuple[Any, ...]
    ) -> tuple[Any, Any, Path]:
        """Under the shared lock: a verified download renamed into place (or the same copy another process put
        there first), loaded."""
        found = self._load_local(holder, version, identity)
        if found is not None:
            return found  # another process sharing cache_dir put this very version in place first
        folder = self.store.folder(version)
        staging.rename(folder)
        try:
            model, signature = load_sklearn_copy(folder / MODEL_DIR)
        except CopyRefused:
            self.store.discard(folder)  # what MLflow serves for this version is refused: the caller records it
            raise
        return model, signature, folder

    def _serve(self, served: Served) -> None:
        previous = self._served
        self._served = served  # one assignment: predictions see the old pair or the new one
        self._refused = None
        kept_previous = previous.version if previous and previous.version != served.version else None
        with self.store.shared():
            self.store.record_served(served.version, kept_previous, self._alias_read_at)

    def _download(self, holder: ModelVersion, version: str) -> Path:
        """The version's artifacts in a staging folder of cache_dir, with a manifest of their hashes (the caller
        renames it into place and deletes it otherwise)."""
        staging = self.store.staging()
        try:
            started = time.monotonic()
            fetched = registry.download_version(
                self._mlflow(), self.tracking_uri, self.model_name, version, staging / ".fetch", self.max_download_bytes
            )
            about = {
                "version": version,
                "run_id": holder.run_id,
                "source": holder.source,
                "model_id": getattr(holder, "model_id", None),
                "tracking_uri": shown(self.tracking_uri).rstrip("/"),
            }
            files, size = self.store.seal(staging, fetched, about, self.max_download_bytes)
            log.info(
                "%s: downloaded v%s (%d files, %d bytes) in %.1f s",
                *(self._what(), version, files, size, time.monotonic() - started),
            )
            return staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _serve_local_copy(self, why: str) -> None:
        """Nothing served yet and MLflow cannot give the champion: serve the copy ``current.json`` names, verified,
        or raise ``ServingError`` with both reasons."""
        try:
            with self.store.shared():
                version = str(self.store.read_current()["version"])
                folder = self.store.folder(version)
                manifest = self.store.verify(folder, version)
                model, signature = load_sklearn_copy(folder / MODEL_DIR)
        except CopyRefused as exc:
            log.error("%s: the local copy in %s is refused: %s", self._what(), self.store.cache_dir, exc)
            raise ServingError(
                f"{self._what()}: nothing to serve. {why}; and the local copy in {self.store.cache_dir} cannot be "
                f"used: {exc}. Make MLflow at {shown(self.tracking_uri)} reachable (and check "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); a valid copy is then downloaded into the cache "
                "folder."
            ) from None
        log.warning("%s: %s; serving the local copy of v%s from %s", self._what(), why, version, folder)
        if manifest.get("tracking_uri") != shown(self.tracking_uri).rstrip("/"):
            log.warning(
                "%s: the local copy of v%s was downloaded from MLflow at %s, not %s; it is checked against this "
                "server's v%s (and replaced if it differs) once the server is reachable",
                *(self._what(), version, manifest.get("tracking_uri"), shown(self.tracking_uri), version),
            )
        identity = manifest_identity(manifest)
        self._served = Served(version, model, folder / MODEL_DIR, manifest.get("run_id"), signature, identity)
