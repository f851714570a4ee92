"""promotion_client installs and works without Airflow: a fresh virtual environment gets client/requirements.txt, the
client and pytest, nothing else; apache-airflow is not there; and client/tests pass in it against the session's real
MLflow server, reading a champion the package's own tasks put in production (as its read-only account)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "client"
PIP_TIMEOUT = 900  # seconds: a cold pip cache downloads scikit-learn, scipy, mlflow-skinny and friends
TESTS_TIMEOUT = 600
FIND_SPECS = "import importlib.util as u; print(u.find_spec('airflow'), u.find_spec('include'))"


def pip_install(python: Path) -> list[str]:
    # --no-compile: pip would byte-compile every file of scipy, scikit-learn, pandas and mlflow (most of the install's
    # time); Python compiles the few modules the client's tests import when they are first imported
    return [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]


def pinned_pytest() -> str:
    """pytest as requirements-dev.txt pins it."""
    for line in (REPO / "requirements-dev.txt").read_text().splitlines():
        if re.match(r"^pytest==", line):
            return line.split("#")[0].strip()
    raise AssertionError("requirements-dev.txt pins no pytest")


def run(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding client/requirements.txt, the client (built from a copy of client/, so no build output lands
    in the checkout) and pytest; its python."""
    home = tmp_path_factory.mktemp("client-venv")
    source = home / "client-src"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    venv = home / "venv"
    done = run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = time.monotonic()
    done = run(
        [*pip_install(python), "-r", str(CLIENT / "requirements.txt"), str(source), pinned_pytest()],
        timeout=PIP_TIMEOUT,
        env=env,
        cwd=home,
    )
    took = time.monotonic() - started
    print(f"\npip install of the client's venv: {took:.1f} s")
    assert done.returncode == 0, f"pip install failed after {took:.0f} s:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return python


@pytest.fixture(scope="module")
def governed_champion(services: Any, models_dir: Path) -> str:
    """A model of the package, trained, evaluated, registered and put in production by its own tasks."""
    from tests.support import DEMO, seed_champion, unique

    raw = yaml.safe_load(DEMO.read_text())
    raw.update(
        name=unique("client-venv"),
        schedule=None,
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 2000, "seed": 13},
    )
    raw["estimator"]["params"].update(n_estimators=20, max_depth=6)
    (models_dir / f"{raw['name']}.yaml").write_text(yaml.safe_dump(raw))
    seed_champion(raw["name"])
    return raw["name"]


def test_the_client_installs_and_passes_its_tests_without_airflow(
    client_venv: Path, governed_champion: str, services: Any, tmp_path: Path
) -> None:
    python = client_venv
    show = run([str(python), "-m", "pip", "show", "apache-airflow"], timeout=60)
    assert show.returncode != 0, "apache-airflow is installed in the client's venv"
    # nothing of the package's environment leaks in: the tests get the server and the model through their variables
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW", "PROMOTION_", "PYTHON"))}
    spec = run([str(python), "-c", FIND_SPECS], 60, cwd=tmp_path, env=env)
    assert spec.stdout.split() == ["None", "None"], spec.stdout + spec.stderr

    reader = services.mlflow.reader_env()
    env.update(
        PROMOTION_CLIENT_TEST_TRACKING_URI=services.mlflow_url,
        PROMOTION_CLIENT_TEST_MODEL=governed_champion,
        PROMOTION_CLIENT_TEST_USERNAME=reader["MLFLOW_TRACKING_USERNAME"],
        PROMOTION_CLIENT_TEST_PASSWORD=reader["MLFLOW_TRACKING_PASSWORD"],
    )
    started = time.monotonic()
    # its own --basetemp: a pytest without one chmods /tmp/pytest-of-<user> to 0700, and the session's PostgreSQL
    # (run as its own OS user when the suite runs as root) then cannot reach its data directory: it PANICs at the
    # next checkpoint (CI stop 28)
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'client-tests'}"]
    done = run([str(python), *args, str(CLIENT / "tests")], TESTS_TIMEOUT, env=env, cwd=tmp_path)
    print(f"client/tests in the client's venv: {time.monotonic() - started:.1f} s\n{done.stdout[-400:]}")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, summary
    assert not re.search(r"\d+ (failed|error)", summary) and "skipped" not in summary, summary


def documented_example(doc: str, after: str) -> str:
    """The first ``python`` block of ``doc`` (under docs/) after the line containing ``after``: the code a user
    copies."""
    text = (REPO / "docs" / doc).read_text()
    start = text.index(after)
    block = text.index("```python\n", start) + len("```python\n")
    return text[block : text.index("```", block)]


def test_the_documented_deploy_receiver_runs_in_the_client_venv(client_venv: Path, tmp_path: Path) -> None:
    """The receiver example of docs/deploy-notifications.md, as written (only its bind address and files moved to
    this test's), run with nothing but the client installed: a signed event is applied once, then a replay, a
    forgery and a delivery for another target are refused."""
    from promotion_client.events import encode, signed_headers

    from scripts.stack.processes import free_port

    port, secret = free_port(), "s" * 40
    code = (
        documented_example("deploy-notifications.md", "A receiver** checks the length before reading the body")
        .replace('"/var/lib/deploy-hook/applied.db"', repr(str(tmp_path / "applied.db")))
        .replace('("0.0.0.0", 8080)', f'("127.0.0.1", {port})')
    )
    assert f'("127.0.0.1", {port})' in code and "verify_delivery" in code, "the documented receiver example changed"
    deployed = tmp_path / "deployed.txt"
    prelude = f"def deploy(uri):\n    open({str(deployed)!r}, 'a').write(uri + '\\n')\n\n"
    (tmp_path / "receiver.py").write_text(prelude + code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PROMOTION_", "AIRFLOW"))}
    env["DEPLOY_WEBHOOK_SECRET"] = secret
    server = subprocess.Popen([str(client_venv), str(tmp_path / "receiver.py")], env=env, cwd=tmp_path)
    try:
        import requests

        from scripts.stack.processes import port_is_open

        deadline = time.monotonic() + 60
        while not port_is_open(port) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.poll() is None, "the documented receiver exited at start"
        event = {
            "type": "model.promoted",
            "event_id": "0b6c1a52-8a7e-4c2f-9d0e-3f1b2a4c5d6e",
            "model": "fraud-detector",
            "version": "3",
            "model_uri": "models:/fraud-detector/3",
            "audit_id": 41,
            "target": "deploy_serving",
        }

        def post(body: bytes, key: str = secret, delivery: str = "0f9e8d7c-1111-2222-3333-444455556666") -> int:
            headers = signed_headers(key, delivery, body, "model.promoted")
            return requests.post(f"http://127.0.0.1:{port}/", data=body, headers=headers, timeout=10).status_code

        assert post(encode(event)) == 200
        assert deployed.read_text() == "models:/fraud-detector/3\n"
        assert post(encode(event)) == 409  # a replay (or the sender's retry of a delivery that got through)
        assert post(encode({**event, "event_id": "1b6c1a52-8a7e-4c2f-9d0e-3f1b2a4c5d6e"}), key="x" * 40) == 401
        other_target = {**event, "event_id": "2b6c1a52-8a7e-4c2f-9d0e-3f1b2a4c5d6e", "target": "deploy_batch"}
        assert post(encode(other_target)) == 401
        older = {**event, "event_id": "3b6c1a52-8a7e-4c2f-9d0e-3f1b2a4c5d6e", "audit_id": 40, "version": "2"}
        assert post(encode(older)) == 200  # an older state than what is deployed: acknowledged, not applied
        assert deployed.read_text() == "models:/fraud-detector/3\n"
    finally:
        server.kill()
        server.wait(timeout=30)


def test_the_documented_scoring_server_runs_in_the_client_venv(
    client_venv: Path, governed_champion: str, services: Any, tmp_path: Path
) -> None:
    """The scoring server of docs/serving.md, as written (its model name, cache folder and bind address moved to this
    test's), serves the governed champion with nothing but the client installed, as a read-only MLflow account."""
    import requests
    from mlflow import MlflowClient

    from include.promotion.pipeline.demo_data import synthetic_transactions
    from scripts.stack.processes import free_port, port_is_open
    from tests.support import DEMO

    port = free_port()
    code = (
        documented_example("serving.md", "A scoring server in a few lines")
        .replace('"fraud-detector", "/var/cache/models/fraud-detector"', f"{governed_champion!r}, {str(tmp_path)!r}")
        .replace('("0.0.0.0", 8000)', f'("127.0.0.1", {port})')
    )
    assert repr(governed_champion) in code and f"{port})" in code, "the documented scoring example changed"
    (tmp_path / "serve.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PROMOTION_", "AIRFLOW", "MLFLOW_"))}
    env.update(
        services.mlflow.reader_env(),
        MLFLOW_TRACKING_URI=services.mlflow_url,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
        MLFLOW_HTTP_REQUEST_TIMEOUT="10",
    )
    server = subprocess.Popen([str(client_venv), str(tmp_path / "serve.py")], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not port_is_open(port) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.poll() is None and port_is_open(port), "the documented scoring server did not start"
        features = yaml.safe_load(DEMO.read_text())["features"]
        rows = synthetic_transactions(rows=3, seed=99)[features].to_dict(orient="records")
        answer = requests.post(f"http://127.0.0.1:{port}/", json={"rows": rows}, timeout=30)
        assert answer.status_code == 200, answer.text
        champion = MlflowClient(services.mlflow_url).get_model_version_by_alias(governed_champion, "champion")
        assert answer.json()["version"] == str(champion.version)
        probabilities = answer.json()["fraud_probability"]
        assert len(probabilities) == 3 and all(0.0 <= p <= 1.0 for p in probabilities)
    finally:
        server.kill()
        server.wait(timeout=30)
