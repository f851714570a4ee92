"""Session-scoped real services for the integration and end-to-end tiers.

One embedded PostgreSQL (audit log, demo data, Airflow metadata) and one MLflow tracking server
(SQLite backend, artifacts served), both on loopback and free ports under a temp dir; Airflow's
api-server, scheduler, dag-processor and triggerer are added for the end-to-end tier. The harness
is ``scripts.stack``, the same code ``make run`` uses. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STACK = pytest.StashKey[object]()
STARTED = pytest.StashKey[float]()
AIRFLOW_UP = pytest.StashKey[object]()  # the session's stack while its Airflow runs
AIRFLOW_STOPPED = pytest.StashKey[object]()  # ... once it was stopped
SUITE_ORDER = pytest.StashKey[dict[str, int]]()  # test id -> its place in the suite's order
LAST_AIRFLOW_TEST = pytest.StashKey[int]()  # the place of the last test that uses the session's Airflow
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
# The test stacks' dag-processors parse a DAG file when they start and when a test asks (``add_model``: PUT
# /parseDagFile, the UI's "Reparse DAG"), not every 30 s as shipped: no test waits for a periodic parse, and each one
# re-read the session's growing models folder (tens of test models by the end) in every DAG file, about 1-2 s of CPU.
# A changed DAG (the rollback form listing a new model) is written, and the api-server's cached copy checked again, at
# most once per min_serialized_dag_update_interval (30 s as shipped): 1 s here, or each new model waits up to 30 s.
TEST_AIRFLOW_ENV = {
    **MANUAL_RUNS_ONLY,
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
    "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "1",
}
# The test stacks start no triggerer (but the Celery stack: compose's services; and `make run`'s test runs Airflow as
# shipped): no task of the package defers (`approve` waits in AWAITING_INPUT, resumed by the API and by the scheduler's
# timeout sweep; `shadow_evaluate` reschedules), so it would only idle (about 1.3 % of a core, and 8 CPU-s to start).
TEST_AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor")


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
            extra_env=TEST_AIRFLOW_ENV,
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
def airflow(request: pytest.FixtureRequest, services):
    """Airflow (``TEST_AIRFLOW_COMPONENTS``) on top of ``services``; stopped once this process is past the last test
    that needs it (``pytest_runtest_setup``)."""
    services.migrate_airflow_db()
    services.start_airflow(TEST_AIRFLOW_COMPONENTS)
    request.config.stash[AIRFLOW_UP] = services
    return services


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """This process's Airflow stops once it starts a test after the last one that uses it, in the suite's order.

    xdist hands out files in that order (``pytest_collection_modifyitems``) and each process runs its files in the
    order it got them, so a process at such a test has run all its Airflow tests and will get no more. An idle Airflow
    (scheduler, dag-processor, api-server) otherwise takes a share of the 2 cores from the files still to run. Should
    a test that needs it come later after all (another order), Airflow starts again.
    """
    stack = item.config.stash.get(AIRFLOW_UP, None)
    if "airflow" in item.fixturenames:
        if stack is None and (stopped := item.config.stash.get(AIRFLOW_STOPPED, None)) is not None:
            stopped.start_airflow(TEST_AIRFLOW_COMPONENTS)
            item.config.stash[AIRFLOW_UP] = stopped
        return
    if stack is not None and item.config.stash[SUITE_ORDER].get(item.nodeid, -1) > item.config.stash[LAST_AIRFLOW_TEST]:
        stack.stop_airflow()
        del item.config.stash[AIRFLOW_UP]
        item.config.stash[AIRFLOW_STOPPED] = stack


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


# -- the order files are handed to xdist's workers: the session's Airflow first, longest first ------------------------
# `--dist loadfile --no-loadscope-reorder` gives each free worker the next file in collection order (xdist's default
# reorder puts the files with the most tests first: the unit tests, leaving the few long e2e tests for the end, where
# one worker ran alone: stop 29, 912 s vs 1,100 s). Longest first evens them out; the files that use the session's
# Airflow go first, so that it can stop early in each process. Seconds from a full run
# on 2 cores (the `make test` summary); a file not listed weighs what its tier usually does. Only the order changes.
FILE_SECONDS = {
    "tests/e2e/test_make_run.py": 207,
    "tests/e2e/test_trust_boundary.py": 203,
    "tests/e2e/test_promotion_page.py": 191,
    "tests/e2e/test_celery_stack.py": 173,
    "tests/integration/test_lifecycle.py": 148,
    "tests/integration/test_watch.py": 111,
    "tests/integration/test_post_promotion.py": 107,
    "tests/e2e/test_fab_access.py": 85,
    "tests/e2e/test_promotion_dag.py": 82,
}
TIER_SECONDS = {"e2e": 40, "integration": 20}


def expected_seconds(path: str) -> float:
    return FILE_SECONDS.get(path, TIER_SECONDS.get(path.split("/")[1] if path.count("/") > 1 else "", 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files that use the session's Airflow first, then the others; longest first in each part (``FILE_SECONDS``).
    The tests of each file keep their order. Each process stops its Airflow once past the first part
    (``pytest_runtest_setup``): the module stacks (Celery, FAB, ``make run``) and the integration tests then run
    without an idle Airflow beside them."""
    first_seen: dict[str, int] = {}
    uses_airflow: set[str] = set()
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        first_seen.setdefault(path, len(first_seen))
        if "airflow" in item.fixturenames:
            uses_airflow.add(path)
    items.sort(
        key=lambda item: (
            (path := item.nodeid.split("::", 1)[0]) not in uses_airflow,
            -expected_seconds(path),
            first_seen[path],
        )
    )
    config.stash[SUITE_ORDER] = {item.nodeid: place for place, item in enumerate(items)}
    config.stash[LAST_AIRFLOW_TEST] = max(
        (p for p, item in enumerate(items) if "airflow" in item.fixturenames), default=-1
    )


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
