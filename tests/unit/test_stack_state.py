"""The stack's state folder: people's passwords (printed by ``make run``) and programs' (never printed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def _user_of_a_racing_process(name: str, start: Any, found: Any) -> None:
    from scripts.stack.postgres import _ensure_os_user

    start.wait()  # all ask at the same moment, as the test workers on a new machine do
    entry = _ensure_os_user(name)
    found.put((entry.pw_uid, entry.pw_gid))


@pytest.mark.skipif(os.geteuid() != 0, reason="the stack creates a system user for PostgreSQL only as root")
def test_processes_creating_the_postgres_user_at_once_all_get_the_user_that_exists() -> None:
    import multiprocessing
    import pwd
    import subprocess
    import uuid

    name = f"promo_race_{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    found, start = context.Queue(), context.Barrier(3)
    racers = [context.Process(target=_user_of_a_racing_process, args=(name, start, found)) for _ in range(3)]
    try:
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        assert [racer.exitcode for racer in racers] == [0, 0, 0]
        entry = pwd.getpwnam(name)
        assert [found.get(timeout=5) for _ in racers] == [(entry.pw_uid, entry.pw_gid)] * 3
    finally:
        for racer in racers:
            if racer.is_alive():
                racer.kill()
        subprocess.run(["userdel", name], capture_output=True, check=False)
