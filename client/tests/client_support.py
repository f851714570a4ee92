"""Helpers of the client's tests (beside them on pytest's path; no repository module is imported)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

LOGGER = "promotion_client"  # every module of the client logs under it
NOWHERE = "http://127.0.0.1:1"  # nothing listens on port 1


def messages(caplog: pytest.LogCaptureFixture, contains: str, level: int = logging.DEBUG) -> list[str]:
    """What the client logged at ``level`` or above that contains ``contains``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(LOGGER) and r.levelno >= level and contains in r.getMessage()
    ]


def version_dirs(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class Target:
    """The MLflow server and the governed model the tests read."""

    url: str
    model: str
    champion: str  # the version holding @champion when the session started
    run_id: str
    source: str
    authenticated: bool
