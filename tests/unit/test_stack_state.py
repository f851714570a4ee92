"""The stack's state folder: people's passwords (printed by ``make run``) and programs' (never printed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.stack.config import StackConfig
from scripts.stack.state import StateDir


def test_a_service_accounts_password_is_kept_apart_from_the_peoples(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state", users={"alice": "user"}, service_users={"labeler": "op"})
    assert list(state.passwords()) == ["alice"]  # what the banner prints and MLflow gets accounts for
    secret = state.service_password("labeler")
    assert len(secret) >= 24 and secret != state.passwords()["alice"]
    assert json.loads(state.passwords_file.read_text())["labeler"] == secret  # the api-server reads it there
    assert oct(state.passwords_file.stat().st_mode & 0o777) == "0o600"
    assert StateDir(tmp_path / "state", {"alice": "user"}, {"labeler": "op"}).service_password("labeler") == secret
    with pytest.raises(KeyError, match="not a service account"):
        state.service_password("alice")


def test_an_account_is_a_persons_or_a_programs(tmp_path: Path) -> None:
    assert StackConfig(state_dir=tmp_path).service_users == {"labeler": "op", "event-log-reader": "viewer"}
    with pytest.raises(ValueError, match=r"\['labeler'\]: an account is a person's"):
        StackConfig(state_dir=tmp_path, users={"labeler": "admin"})
