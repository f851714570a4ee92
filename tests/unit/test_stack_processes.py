"""The stack's process handling never signals a stranger: a pid the kernel gave to another process after ours
was reaped (pid_max is 32768 here; a CI run once lost its PostgreSQL server mid-suite) is left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from scripts.stack.processes import Supervisor, started_at, still_ours
from scripts.stack.state import StateDir

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def supervisor(tmp_path: Path) -> Supervisor:
    return Supervisor(StateDir(tmp_path / "state", users={}), startup_timeout=10, stop_timeout=4)


def test_a_pid_held_by_a_later_process_is_not_ours() -> None:
    me = psutil.Process()
    assert still_ours(me.pid, me.create_time())
    assert not still_ours(me.pid, me.create_time() - 5), "a process started 5 s earlier under the same pid"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    if started_at(gone.pid) is None:  # (unless the pid was handed out again at once)
        assert still_ours(gone.pid, 1.0), "only its leftover group or session can carry a free pid"


def test_stop_leaves_alone_a_process_that_now_holds_a_supervised_pid(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    proc = sup.spawn("sleeper", SLEEPER, env={}, cwd=tmp_path)
    try:
        true_start = sup.started["sleeper"]
        # as if "sleeper" had exited and been reaped, and the kernel had given its pid to this newer process
        sup.started["sleeper"] = true_start - 5
        sup.stop(["sleeper"])
        assert proc.poll() is None, "stop() signalled a process it did not start"
        assert sup.trees() == set(), "trees() claims a process it did not start"

        sup.started["sleeper"] = true_start
        assert {p.pid for p in sup.trees()} == {proc.pid}
        sup.stop(["sleeper"])
        assert proc.wait(timeout=10) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_previous_runs_pids_are_reaped_only_when_their_start_times_match(tmp_path: Path) -> None:
    first = supervisor(tmp_path)
    proc = first.spawn("sleeper", SLEEPER, env={}, cwd=tmp_path)
    stranger = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        # pids.json also names a pid that is some other process's now (recorded with another start time)
        records = (tmp_path / "state" / "pids.json").read_text().strip()
        (tmp_path / "state" / "pids.json").write_text(
            records[:-1] + f', {{"name": "old", "pid": {stranger.pid}, "started": 1.0}}]\n'
        )
        supervisor(tmp_path).reap_stale()  # a later `make run` on the same state folder
        assert proc.wait(timeout=10) is not None, "the left-over process was not stopped"
        assert stranger.poll() is None, "a process that only shares a recorded pid was stopped"
        assert not (tmp_path / "state" / "pids.json").exists()
    finally:
        for p in (proc, stranger):
            if p.poll() is None:
                p.kill()
                p.wait()
