"""Which models the registry watch checks: every governed model, and every model it could otherwise lose sight of.

A model whose config file no longer loads (a typo in an edit, two files claiming it), or that has audit rows but no
config file at all (the file deleted or renamed), still has versions in the registry and perhaps a champion serving:
the watch checks it too, read-only. Without a config that loads, nothing says it may be restored (``on_drift``) or
whom to tell, so the watch never repairs it and alerts in its own log; a file that does not load fails the run
until it is fixed (``model_config_errors`` shows the same error under *DAG Import Errors*).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from include.promotion import settings
from include.promotion.config import LoadedConfigs

log = logging.getLogger(__name__)

BROKEN, MISSING = "broken", "missing"


@dataclass(frozen=True)
class Unconfigured:
    """A model the watch checks without a config: its file does not load (``broken``) or is gone (``missing``)."""

    model_name: str
    kind: str
    problem: str  # what to tell on-call, naming the file or the folder

    @property
    def fails_the_run(self) -> bool:
        # a broken file is an incident to fix now; a missing one may be a model retired on purpose, whose drift
        # still fails the run as any model's does
        return self.kind == BROKEN


def claimed_name(path: Path) -> str | None:
    """The ``name`` a config file that does not validate still declares, if it can be read at all."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = raw.get("name") if isinstance(raw, dict) else None
    return name.strip() if isinstance(name, str) and name.strip() else None


def unconfigured(loaded: LoadedConfigs, only: str | None = None) -> dict[str, Unconfigured]:
    """The models to watch without a config (``only``: that model, if it is one): those named by a file that does not
    load, and those with audit rows but no config that loads."""
    if only is not None and only in loaded.models:
        return {}
    folder = settings.models_dir()
    found: dict[str, Unconfigured] = {}
    for file_name, error in sorted(loaded.errors.items()):
        name = claimed_name(folder / file_name)
        if name is None or name in loaded.models or (only is not None and name != only):
            continue
        first = error.strip().splitlines()[0] if error.strip() else "invalid"
        found[name] = Unconfigured(
            name,
            BROKEN,
            f"its config file {file_name} does not load ({first[:300]}): watched read-only, never restored, alerted "
            "in this log only, until the file is fixed",
        )
    for name in _audited(only):
        if name not in loaded.models and name not in found:
            found[name] = Unconfigured(
                name,
                MISSING,
                f"it has audit rows but no config file in {folder}: watched read-only, never restored, alerted in "
                "this log only; restore its file (or its name in it) to govern it again",
            )
    return found


def _audited(only: str | None) -> list[str]:
    from include.promotion.audit import queries
    from include.promotion.audit.schema import connect

    conn = connect()
    try:
        return queries.audited_models(conn, only)
    finally:
        conn.close()
