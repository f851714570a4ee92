"""`make run` as a user starts it: the demo run approved through the REST API, the page, a restart, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import psycopg2
import pytest
import requests
from mlflow import MlflowClient

from include.promotion.registry.accounts import acting_as
from scripts.airflow_api import AirflowAPI
from scripts.stack import ServiceStack, StackConfig, free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DAG_ID = "model_promotion__fraud_detector"


class MakeRun:
    """``make run`` in its own process group; ``stop()`` is Ctrl-C (SIGINT to the group)."""

    def __init__(self, state_dir: Path, ports: dict[str, int], log: Path):
        self.state_dir, self.ports, self.log = state_dir, ports, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = (
            f"--state-dir {self.state_dir} --airflow-port {self.ports['airflow']} "
            f"--mlflow-port {self.ports['mlflow']} --postgres-port {self.ports['postgres']} "
            f"--scoring-port {self.ports['scoring']} --label-delay 2"
        )
        # a user's shell: none of the harness's settings (PROMOTION_SCHEDULE_OVERRIDE among them), so the demo
        # model keeps its real weekly schedule, as in a terminal
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW", "PROMOTION"))}
        already = self.log.stat().st_size if self.log.exists() else 0  # the log is appended to on a restart
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["make", "--no-print-directory", "run", f"RUN_ARGS={args}"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 300
        while b"Press Ctrl-C to stop" not in self.log.read_bytes()[already:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"make run did not come up:\n{self.log.read_text()[-4000:]}")
            time.sleep(1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        descendants = psutil.Process(self.proc.pid).children(recursive=True)
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            ServiceStack(StackConfig(state_dir=self.state_dir)).stop_leftovers()  # its services have own sessions
            raise AssertionError(
                f"make run did not stop within 120 s of Ctrl-C:\n{self.log.read_text()[-3000:]}"
            ) from None
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert alive == [], f"left behind: {[p.pid for p in alive]}"

    def passwords(self) -> dict[str, str]:
        return json.loads((self.state_dir / "airflow_passwords.json").read_text())

    def champion(self) -> str:
        """Read as a person would in MLflow: alice, signed in with her Airflow password."""
        with acting_as("alice", self.passwords()["alice"]):
            url = f"http://127.0.0.1:{self.ports['mlflow']}"
            client = MlflowClient(tracking_uri=url, registry_uri=url)  # not the session's registry URI
            return client.get_model_version_by_alias("fraud-detector", "champion").version

    def api(self, user: str) -> AirflowAPI:
        passwords = self.passwords()
        scheduler_log = self.state_dir / "logs" / "scheduler.log"
        return AirflowAPI(f"http://127.0.0.1:{self.ports['airflow']}", user, passwords[user], scheduler_log)


def owner_dsn(state_dir: Path, port: int) -> str:
    secrets = json.loads((state_dir / "secrets.json").read_text())
    return f"postgresql://postgres:{secrets['postgres_password']}@127.0.0.1:{port}/promotion"


def audit_rows(state_dir: Path, port: int) -> list[tuple]:
    conn = psycopg2.connect(owner_dsn(state_dir, port))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT version, action, actor FROM model_promotion_audit "
                "WHERE model_name = 'fraud-detector' ORDER BY id"
            )
            return cur.fetchall()
    finally:
        conn.close()


def wait_for_rows(state_dir: Path, port: int, timeout: float = 120) -> list[tuple]:
    """The demo traffic's logged predictions (version, role, whether its label arrived), once some were labelled."""
    deadline = time.monotonic() + timeout
    while True:
        conn = psycopg2.connect(owner_dsn(state_dir, port))
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT p.version, p.role, l.request_id IS NOT NULL FROM prediction_log p "
                    "LEFT JOIN demo.labels l USING (request_id) WHERE p.model_name = 'fraud-detector'"
                )
                rows = cur.fetchall()
        finally:
            conn.close()
        if any(labelled for _, _, labelled in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(2)


def approve_next_run(stack: MakeRun, run_id: str) -> None:
    bob = stack.api("bob")
    bob.wait_for_gate(DAG_ID, run_id, timeout=300)
    bob.answer(DAG_ID, run_id, "Approve", "demo approval")
    assert bob.wait_for_run(DAG_ID, run_id, timeout=180) == "success"


def test_make_run_tells_the_whole_story_and_keeps_its_state(tmp_path: Path) -> None:
    ports = {"airflow": free_port(), "mlflow": free_port(), "postgres": free_port(), "scoring": free_port()}
    stack = MakeRun(tmp_path / "state", ports, tmp_path / "make-run.log")
    try:
        stack.start()
        output = stack.log.read_text()
        assert f"http://127.0.0.1:{ports['airflow']}" in output and "Required Actions" in output
        secrets = json.loads((stack.state_dir / "secrets.json").read_text())
        assert not [k for k, v in secrets.items() if v in output], "make run printed a secret"
        assert stack.passwords()["labeler"] not in output, "make run printed the demo labeler's password"
        assert str(stack.state_dir / "secrets.json") in output  # it names where the credentials are
        private = [stack.state_dir, stack.state_dir / "secrets.json", stack.state_dir / "mlflow" / "mlflow.db"]
        # as root, PostgreSQL runs as its own user, whose group may pass through the state folder (0710)
        allowed = {"0o700", "0o600"} | ({"0o710"} if os.geteuid() == 0 else set())
        assert {oct(p.stat().st_mode & 0o777) for p in private} <= allowed
        anonymous = requests.get(
            f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow/registered-models/get",
            params={"name": "fraud-detector"},
            timeout=10,
        )
        assert anonymous.status_code == 401
        admin = stack.api("admin")
        (first,) = admin.request("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]  # the run make run started
        approve_next_run(stack, first["dag_run_id"])
        assert stack.champion() == "1"
        # the demo's scoring service serves the new champion to the demo traffic: logged, then labelled
        scoring = f"http://127.0.0.1:{ports['scoring']}"
        assert f"{scoring}/score" in output
        logged = wait_for_rows(stack.state_dir, ports["postgres"])
        assert logged and {(version, role) for version, role, _ in logged} == {("1", "champion")}
        assert any(labelled for _, _, labelled in logged), "no label arrived for the demo traffic"
        assert requests.get(f"{scoring}/health", timeout=10).json()["version"] == "1"
        rows = audit_rows(stack.state_dir, ports["postgres"])
        assert rows == [
            ("1", "register", DAG_ID),
            ("1", "stage", DAG_ID),
            ("1", "approve", "bob"),
            ("1", "promote", "bob"),
            ("1", "post_check_passed", "post-promotion-check"),
        ]
        # (a second retrain on the same data would be a copy of the champion: not promoted; and rollbacks have their own
        # tests on both executors: tests/e2e/test_rollback_dag.py, tests/e2e/test_celery_stack.py)
        # "Model promotion" is in the navigation and shows the demo model, read with the api-server's own accounts
        views = [v for p in admin.request("GET", "/plugins")["plugins"] for v in p["external_views"]]
        assert [(v["name"], v["href"]) for v in views] == [("Model promotion", "/promotion/")]
        base = f"http://127.0.0.1:{ports['airflow']}"
        login = {"username": "alice", "password": stack.passwords()["alice"]}
        token = requests.post(f"{base}/auth/token", json=login, timeout=30).json()["access_token"]
        page = requests.get(f"{base}/promotion/api/models", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        (demo,) = page.json()["models"]
        assert (demo["name"], demo["champion"]["version"]) == ("fraud-detector", "1")
        stack.stop()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{ports['mlflow']}/health", timeout=5)

        stack.start()  # comes back with everything
        assert stack.champion() == "1"
        assert audit_rows(stack.state_dir, ports["postgres"]) == rows
        runs = stack.api("admin").request("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
        # (runs the demo's labeler started, 500 labels later, are the data-aware retraining, not make run's doing)
        runs = [r for r in runs if r["run_type"] != "asset_triggered"]
        assert len(runs) == 1, "make run must not trigger again when the demo model already has runs"
        assert stack.log.read_text().count("Seeded demo.transactions") == 1, "the restart must keep the data"
    finally:
        stack.stop()
