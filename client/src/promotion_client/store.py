"""The local store of a ``ChampionCache``: one verified copy per version on disk, shared safely between processes.

One folder per version (``<cache_dir>/<version>/``): ``model/`` (the version's artifacts as MLflow serves them) and
``manifest.json`` (version, run id, model source and id, tracking server without credentials, SHA-256 of every
file). A copy is downloaded into a temporary folder and renamed into place once complete, so a crash never leaves a
half copy under a version's name; ``current.json`` names the version served last (replaced atomically). A copy whose
files do not match its manifest is refused with what is wrong. Version numbers become folder names only after a full
match of ``[1-9][0-9]{0,9}``. Processes sharing ``cache_dir`` place, load, record and prune copies under an
``flock`` of ``cache_dir/.lock``; none prunes the versions ``current.json`` names, and none rewrites it with an older
read of the alias than the one it records.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion_client.errors import CopyRefused
from promotion_client.registry import shown, too_large

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "current.json"
MODEL_DIR = "model"  # the version's artifacts, inside its folder
MANIFEST_FORMAT = 2  # 2: the manifest names the tracking server (copies in format 1 are downloaded again)
LOCK = ".lock"  # flock'ed by every process sharing cache_dir while it places, loads, records or prunes a copy
STALE_DOWNLOAD_SECONDS = 3600  # a temporary download folder older than this was left by a crash
VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_under(root: Path) -> dict[str, Path]:
    """Every file under ``root`` by its path relative to it; a symlink or anything else is refused."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if path.is_symlink():
                raise CopyRefused(f"{path.relative_to(root).as_posix()} is a symbolic link")
        for name in files:
            path = Path(folder, name)
            if not path.is_file():
                raise CopyRefused(f"{path.relative_to(root).as_posix()} is not a regular file")
            found[path.relative_to(root).as_posix()] = path
    return found


def write_atomically(path: Path, text: str) -> None:
    """``path`` holds either its old content or ``text``, never a mix (write a sibling, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def checked_version(value: object) -> str:
    """A version number as MLflow names versions (1, 2, ...), or ``CopyRefused``: a version becomes a folder name,
    so anything else (``../x``, ``1\\n``) from a hostile or broken server is refused where it enters."""
    text = str(value)
    if not VERSION.fullmatch(text):
        raise CopyRefused(f"MLflow answered the version {text[:40]!r}, which is not a version number (1, 2, ...)")
    return text


def holder_identity(holder: ModelVersion, tracking_uri: str) -> tuple[Any, ...]:
    """What makes a version this version: after a registered model is deleted and re-created, or with another
    tracking server, the same number names another model."""
    model_id = getattr(holder, "model_id", None)
    return (holder.run_id or None, holder.source or None, model_id or None, shown(tracking_uri).rstrip("/"))


def manifest_identity(manifest: dict[str, Any]) -> tuple[Any, ...]:
    """The identity (see ``holder_identity``) of the version a manifest describes."""
    return (
        manifest.get("run_id") or None,
        manifest.get("source") or None,
        manifest.get("model_id") or None,
        manifest.get("tracking_uri"),
    )


class LocalStore:
    """The copies of ``model_name@alias`` in ``cache_dir`` (a writable folder, created if missing)."""

    def __init__(self, cache_dir: str | os.PathLike, model_name: str, alias: str) -> None:
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.model_name, self.alias = model_name, alias
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = self.cache_dir / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ValueError(
                f"cache_dir {str(self.cache_dir)!r} is not a writable folder ({exc.strerror or exc}): give the serving "
                "process a folder of its own that it can write (one per model)."
            ) from None

    def _what(self) -> str:
        return f"{self.model_name}@{self.alias}"

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """``cache_dir/.lock``, flock'ed: every process sharing the folder places, loads, records (current.json) and
        prunes copies one at a time, so none deletes a copy another is about to load or serves."""
        with open(self.cache_dir / LOCK, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def folder(self, version: str) -> Path:
        """The folder of ``version``'s copy, checked to be a direct child of cache_dir."""
        folder = self.cache_dir / checked_version(version)
        if folder.parent != self.cache_dir or not folder.resolve().is_relative_to(self.cache_dir):
            raise CopyRefused(f"the copy of v{version} would not be inside {self.cache_dir}")
        return folder

    def staging(self) -> Path:
        """A new temporary folder in cache_dir for a download (renamed into place, or deleted)."""
        return Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))

    def seal(self, staging: Path, fetched: Path, about: dict[str, Any], limit: int) -> tuple[int, int]:
        """Move MLflow's download ``fetched`` to ``staging/model`` and write the manifest of its hashes (with the
        version's ``about``: version, run_id, source, model_id, tracking_uri); the files and bytes stored."""
        fetched_dir = fetched.resolve()
        if not fetched_dir.is_dir() or not fetched_dir.is_relative_to(staging.resolve()):
            raise CopyRefused(f"MLflow's download of v{about['version']} is not a folder in {staging}: {fetched}")
        os.rename(fetched_dir, staging / MODEL_DIR)  # into place under a fixed name (MLflow keeps the last part)
        shutil.rmtree(staging / ".fetch", ignore_errors=True)
        files = files_under(staging / MODEL_DIR)
        total = sum(path.stat().st_size for path in files.values())
        if total > limit:
            raise CopyRefused(too_large(about["version"], total, limit))
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_name": self.model_name,
            "alias": self.alias,
            **about,
            "downloaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {f"{MODEL_DIR}/{rel}": sha256(path) for rel, path in sorted(files.items())},
        }
        write_atomically(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return len(files), total

    def verify(self, folder: Path, version: str) -> dict[str, Any]:
        """The manifest of a complete, unaltered copy of ``version``; ``CopyRefused`` saying what is wrong."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise CopyRefused(f"{folder} has no {MANIFEST}") from None
        except (OSError, ValueError) as exc:
            raise CopyRefused(f"{folder / MANIFEST} cannot be read ({exc})") from None
        # which run, source and tracking server the copy is of is compared with MLflow's answer when there is one
        # (the cache's _load_local); offline, the last good copy is served whatever server it came from
        expected = {"format": MANIFEST_FORMAT, "model_name": self.model_name, "version": version}
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
            raise CopyRefused(f"{folder / MANIFEST} lists no files")
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise CopyRefused(f"{folder / MANIFEST}: {key} is {manifest.get(key)!r}, expected {value!r}")
        try:
            return self._check_files(folder, manifest["files"], manifest)
        except OSError as exc:
            raise CopyRefused(f"{folder} cannot be read ({exc})") from None

    def _check_files(self, folder: Path, listed: dict[str, str], manifest: dict[str, Any]) -> dict[str, Any]:
        """Every file listed, none other, each with its hash."""
        actual = files_under(folder)
        actual.pop(MANIFEST, None)
        if missing := sorted(set(listed) - set(actual)):
            raise CopyRefused(f"file {missing[0]} is missing ({len(missing)} missing)")
        if extra := sorted(set(actual) - set(listed)):
            raise CopyRefused(f"file {extra[0]} is not in the manifest ({len(extra)} unexpected)")
        for rel, digest in sorted(listed.items()):
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise CopyRefused(f"{folder / MANIFEST}: the SHA-256 of {rel} is not a SHA-256")
            if sha256(actual[rel]) != digest:
                raise CopyRefused(f"file {rel} does not match its SHA-256 in the manifest (corrupt or edited)")
        return manifest

    def read_current(self) -> dict[str, Any]:
        """``current.json``: the version served last by a process sharing cache_dir; ``CopyRefused`` otherwise."""
        path = self.cache_dir / CURRENT
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise CopyRefused(f"there is no local copy yet ({path} does not exist)") from None
        except (OSError, ValueError) as exc:
            raise CopyRefused(f"{path} cannot be read ({exc})") from None
        if not isinstance(record, dict) or not VERSION.fullmatch(str(record.get("version", ""))):
            raise CopyRefused(f"{path} names no version")
        for key, value in {"model_name": self.model_name, "alias": self.alias}.items():
            if record.get(key) != value:
                raise CopyRefused(
                    f"{path} is a copy of {record.get('model_name')!r}@{record.get('alias')}, not of {self._what()}: "
                    "give each model and alias a cache_dir of its own"
                )
        return record

    def record_served(self, version: str, previous: str | None, alias_read_at: float) -> None:
        """Under the shared lock: ``current.json`` names ``version`` (unless a process that read the alias later
        recorded another), and the copies no process needs are pruned."""
        try:
            current = self.read_current()
        except CopyRefused:
            current = {}
        if previous is None and current.get("version") != version:
            previous = current.get("version")
        record = {
            "model_name": self.model_name,
            "alias": self.alias,
            "version": version,
            "previous": previous,
            "alias_read_at": alias_read_at,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        newer = current.get("alias_read_at")
        if isinstance(newer, int | float) and newer > alias_read_at and current["version"] != version:
            # another process sharing cache_dir read the alias after this one did: its answer is the newer one
            log.info(
                "%s: current.json names v%s, recorded by a process that read @%s later; left as it is",
                self._what(),
                current["version"],
                self.alias,
            )
        else:
            write_atomically(self.cache_dir / CURRENT, json.dumps(record, indent=2) + "\n")
        log.info("%s: serving v%s from %s", self._what(), version, self.cache_dir / version)
        # never the copies current.json names (what other processes sharing cache_dir serve or fall back to)
        self.prune({version, previous, current.get("version"), current.get("previous")})

    def discard(self, folder: Path) -> None:
        """Move a refused copy out of the way first (a rename is atomic; deleting a tree is not), then delete it."""
        if folder.parent != self.cache_dir or not VERSION.fullmatch(folder.name):
            raise CopyRefused(f"{folder} is not a copy in {self.cache_dir}; not deleted")
        aside = self.cache_dir / f".refused-{folder.name}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def prune(self, keep: set[str | None]) -> None:
        """Delete the copies of versions not in ``keep`` (the one served and the one before it, which a rollback
        finds on disk, and those current.json names), and downloads a crash left behind. Under the shared lock."""
        now = time.time()
        for entry in self.cache_dir.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_dir() and VERSION.fullmatch(entry.name) and entry.name not in keep:
                    self.discard(entry)
                    log.info("%s: pruned the local copy of v%s", self._what(), entry.name)
                elif entry.name.startswith((".download-", ".refused-")) and now - entry.stat().st_mtime > (
                    STALE_DOWNLOAD_SECONDS
                ):
                    shutil.rmtree(entry, ignore_errors=True)
