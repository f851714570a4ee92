"""Session-scoped real services for the integration and end-to-end tiers.

One embedded PostgreSQL (audit log, demo data, Airflow metadata) and one MLflow tracking server
(SQLite backend, artifacts served), both on loopback and free ports under a temp dir; Airflow's
api-server, scheduler, dag-processor and triggerer are added for the end-to-end tier. The harness
is ``scripts.stack``, the same code ``make run`` uses. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
STACK = pytest.StashKey[object]()
STARTED = pytest.StashKey[float]()
# nobody: signed in with no role, so the auth manager lets them read no DAG (the Model promotion page's 403)
REVIEWERS = {"admin": "admin", "alice": "user", "bob": "user", "carol": "user", "mallory": "user", "nobody": ""}
# manual runs only: a scheduled run starting at unpause would race the tests' own runs
# (and shadow_evaluate looks at the prediction log every 3 s, not every minute)
MANUAL_RUNS_ONLY = {
    "PROMOTION_SCHEDULE_OVERRIDE": "none",
    "PROMOTION_WATCH_SCHEDULE": "none",
    "PROMOTION_HEALTH_SCHEDULE": "none",
    "PROMOTION_RETENTION_SCHEDULE": "none",
    "PROMOTION_SHADOW_POKE_SECONDS": "3",
}


@pytest.hookimpl(tryfirst=True)  # before pytest's tmpdir plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    """As root, temp folders outside ``/tmp/pytest-of-root`` unless ``--basetemp`` says where.

    The session's PostgreSQL then runs as its own OS user (it refuses root) and reaches its data directory through
    every folder above it; any other pytest started meanwhile on the machine (a nested one, a developer's) chmods
    ``/tmp/pytest-of-root`` to 0700, and PostgreSQL PANICs at its next checkpoint (CI of stop 28). One folder per
    checkout, emptied by pytest at each start like ``--basetemp``.
    """
    if config.option.basetemp or hasattr(config, "workerinput") or os.geteuid() != 0:
        return
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
    config.option.basetemp = str(Path(tempfile.gettempdir()) / f"promotion-tests-{checkout}")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models folder the DAGs read: the shipped configs as they are, plus what tests add."""
    folder = tmp_path_factory.mktemp("models")
    for path in (REPO / "include" / "models").glob("*.yaml"):
        shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[object]:
    """PostgreSQL and MLflow, started once; the package's environment points at them."""
    from include.promotion.pipeline import demo_data
    from scripts.stack import ServiceStack, StackConfig

    stack = ServiceStack(
        StackConfig(
            state_dir=tmp_path_factory.mktemp("stack"),
            airflow_port=0,
            mlflow_port=0,
            models_dir=models_dir,
            users=REVIEWERS,
            postgres_url=os.environ.get("PROMOTION_TEST_POSTGRES_URL") or None,
            extra_env=MANUAL_RUNS_ONLY,
            # MLflow's webhook would wake a watch run on every registry write of a governed model, racing the tests
            # that run the watch themselves: the tests of the webhook register it (tests/e2e/test_registry_webhook.py)
            mlflow_webhook=False,
        )
    )
    saved = dict(os.environ)
    try:
        stack.start_postgres()
        stack.start_mlflow()
        os.environ.update(stack.package_env())
        os.environ.update(MANUAL_RUNS_ONLY)
        demo_data.seed_transactions(stack.postgres_uri("promotion"))
        request.config.stash[STACK] = stack
        yield stack
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def airflow(services):
    """The full Airflow stack (api-server, scheduler, dag-processor, triggerer) on top of ``services``."""
    services.migrate_airflow_db()
    services.start_airflow()
    return services


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    item.stash[STARTED] = time.time()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """A failed test that used the services gets their warnings and errors in its report."""
    report = yield
    stack = item.config.stash.get(STACK, None)
    if report.when == "call" and report.failed and stack is not None and "services" in item.fixturenames:
        report.sections.append(("services: warnings and errors", stack.problems_digest(item.stash[STARTED])))
    return report


# -- how the files are handed to xdist's workers: one process runs every file on the session's Airflow; longest first --
# `--dist loadgroup --no-loadscope-reorder` gives each free worker the next group in collection order. A group is one
# file (its module fixtures start once), except that every file using the session's Airflow stack (the `airflow`
# fixture, directly or through `as_user`, `add_model`...) is one group: one process starts that stack, instead of each
# process starting its own and keeping it running (about 40 CPU-seconds to start, and its scheduler, dag-processor and
# triggerer working all along, on the 2 cores the other process needs). Groups go longest first (xdist's default
# reorder puts the ones with the most tests first, leaving long ones for the end, where one worker ran alone: stop 29,
# 912 s vs 1,100 s). Seconds from a full run on 2 cores (the `make test` summary); a file not listed weighs what its
# tier usually does. Only the order and the grouping change.
#
# xdist's own loadgroup reads `xdist_group` marks from a suffix its workers append to each test's node id, which
# pytest 9.2's structured node ids no longer take: the groups are computed by the workers at collection (they know
# each test's fixtures), written to a file the controller names, and read by the controller's scheduler.
FILE_SECONDS = {
    "tests/e2e/test_celery_stack.py": 254,
    "tests/e2e/test_trust_boundary.py": 244,
    "tests/e2e/test_promotion_page.py": 234,
    "tests/e2e/test_make_run.py": 202,
    "tests/integration/test_post_promotion.py": 134,
    "tests/integration/test_lifecycle.py": 116,
    "tests/integration/test_watch.py": 110,
    "tests/e2e/test_fab_access.py": 84,
    "tests/e2e/test_promotion_dag.py": 72,
}
TIER_SECONDS = {"e2e": 40, "integration": 20}
SESSION_AIRFLOW_GROUP = "session-airflow"
GROUPS_FILE = "promotion_test_groups"  # the workerinput key: where the workers write {file: group}


def expected_seconds(path: str) -> float:
    return FILE_SECONDS.get(path, TIER_SECONDS.get(path.split("/")[1] if path.count("/") > 1 else "", 1))


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def groups_file() -> Path:
    """In the controller: the file its workers write the groups to (one per controller process)."""
    return Path(tempfile.gettempdir()) / f"promotion-test-groups-{os.getpid()}.json"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, in the controller, for each worker it starts
def pytest_configure_node(node: Any) -> None:
    node.workerinput[GROUPS_FILE] = str(groups_file())


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        groups_file().unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup``: xdist's scope scheduling (a scope goes whole to one worker, in collection order), with
    the workers' groups as scopes."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if not hasattr(self, "_groups"):  # read once every worker has collected (and so written it)
                self._groups = json.loads(groups_file().read_text())
            return self._groups.get(file_of(nodeid), file_of(nodeid))

    return FileGroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the files (one group for those on the session's Airflow), longest group first, then longest file first;
    the tests of each file keep their order. An xdist worker writes the groups for the controller."""
    first_seen: dict[str, int] = {}
    on_session_airflow: set[str] = set()
    for item in items:
        first_seen.setdefault(file_of(item.nodeid), len(first_seen))
        if "airflow" in item.fixturenames:
            on_session_airflow.add(file_of(item.nodeid))
    group_of = {path: SESSION_AIRFLOW_GROUP if path in on_session_airflow else path for path in first_seen}
    group_seconds: dict[str, float] = {}
    for path, group in group_of.items():
        group_seconds[group] = group_seconds.get(group, 0.0) + expected_seconds(path)
    items.sort(
        key=lambda item: (
            -group_seconds[group_of[path := file_of(item.nodeid)]],
            group_of[path],
            -expected_seconds(path),
            first_seen[path],
        )
    )
    workerinput = getattr(config, "workerinput", None)
    if workerinput and GROUPS_FILE in workerinput:  # every worker writes the same: written whole, then renamed
        target = Path(workerinput[GROUPS_FILE])
        partial = target.with_name(f"{target.name}.{workerinput['workerid']}")
        partial.write_text(json.dumps(group_of))
        partial.replace(target)


# -- where the suite's time goes: per file, setup + call + teardown (the budget is 15 minutes on 2 cores) ----------
_FILE_SECONDS: dict[str, float] = {}
_WORKER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Sum each test file's time, and each xdist worker's (in the controller, from every worker's reports)."""
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration
    node = getattr(report, "node", None)  # xdist's controller: the worker that ran the test
    worker = getattr(getattr(node, "gateway", None), "id", "this process")
    _WORKER_SECONDS[worker] = _WORKER_SECONDS.get(worker, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FILE_SECONDS:
        terminalreporter.section("seconds per test file (the 25 slowest)")
        for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda item: -item[1])[:25]:
            terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
        busy = ", ".join(f"{worker} {seconds:.0f} s" for worker, seconds in sorted(_WORKER_SECONDS.items()))
        terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f} s  all {len(_FILE_SECONDS)} files ({busy})")
