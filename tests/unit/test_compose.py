"""Static checks of the team deployment: docker-compose.yaml, .env.example and docker/.

There is no Docker engine where these run. The file's structure is validated against the official Compose
specification schema (tests/unit/data/compose-spec.json); the tests below check what the stack promises
on top of it (services, secrets, who holds which credential, start order), and run docker/preflight.sh.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from scripts.stack.mlflow_server import GUNICORN_OPTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_SPEC = Path(__file__).parent / "data" / "compose-spec.json"

AIRFLOW_RUNTIME = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
AIRFLOW_SERVICES = (*AIRFLOW_RUNTIME, "airflow-init")
STACK = ("preflight", "postgres", "redis", "mlflow", *AIRFLOW_SERVICES)

SECRET_NAME = re.compile(r"PASSWORD|SECRET|(^|_)KEY$")
# A variable Compose interpolates: `${NAME}`, `${NAME<op>...}` or `$NAME`; `$$` is a literal `$`.
VARIABLE = re.compile(r"\$\$|\$\{(?P<braced>\w+)(?P<op>:?[-?+])?|\$(?P<bare>[A-Za-z_]\w*)")
# A published port in the short syntax: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL].
PORT = re.compile(r"(?:(?P<ip>[\d.]+|\[[^\]]*\]):)?(?:(?:\$\{[^}]*\}|[\d-]+):)?[\d-]+(?:/\w+)?")

# Which services may see each credential (besides `preflight`, which checks them all).
HOLDERS = {
    "PROMOTION_DB_OWNER_PASSWORD": {"postgres", "airflow-init"},
    "PROMOTION_DB_APP_PASSWORD": {"postgres", "airflow-worker"},
    "PROMOTION_DB_READER_PASSWORD": {"postgres", "airflow-apiserver"},
    "MLFLOW_READER_PASSWORD": {"airflow-init", "airflow-apiserver"},
    "MLFLOW_AUTH_ADMIN_PASSWORD": {"mlflow", "airflow-init"},
    "MLFLOW_PIPELINE_PASSWORD": {"airflow-init", "airflow-worker"},
    "PROMOTION_SIGNING_KEY": {"airflow-worker"},
    "PROMOTION_AUDIT_KEY": {"airflow-worker"},
    "PROMOTION_WEBHOOK_SECRET": {"airflow-apiserver", "airflow-init"},
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": {"mlflow"},
}
AUDIT_MIGRATION = (
    "python -m include.promotion.audit.schema upgrade --owner-conn promotion_db_owner --app-role promotion_app \\\n"
    "    --reader-role promotion_reader"
)
MLFLOW_ACCOUNTS = "python -m include.promotion.registry.accounts bootstrap"
MLFLOW_WEBHOOK = "python -m include.promotion.watch.mlflow_webhook register"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    lines = [line.strip() for line in ENV_EXAMPLE.read_text().splitlines()]
    pairs = [line.partition("=")[::2] for line in lines if line and not line.startswith("#")]
    assert len(pairs) == len(dict(pairs)), ".env.example defines a variable twice"
    return dict(pairs)


def variables(node) -> dict[str, set[str | None]]:
    """{name: {operators}} of the variables Compose interpolates anywhere in `node`."""
    found: dict[str, set[str | None]] = {}
    for match in VARIABLE.finditer(json.dumps(node)):
        if name := match["braced"] or match["bare"]:
            found.setdefault(name, set()).add(match["op"])
    return found


def resolved(text: str) -> str:
    """`text` with each `${NAME...}` replaced by `NAME`, or by `NAME!` when required (`:?`), so URIs parse."""
    return re.sub(r"\$\{(\w+)(:\?)?[^}]*\}", lambda match: match[1] + ("!" if match[2] else ""), text)


def env(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "use the mapping form of `environment`"
    return environment


def env_files(service: dict) -> list[Path]:
    files = service.get("env_file") or []
    return [ROOT / path for path in ([files] if isinstance(files, str) else files)]


def resolved_env(service: dict) -> dict[str, str]:
    """The environment Compose gives a service's container: its env files, then `environment` over them."""
    from scripts.stack.airflow_services import shared_settings

    merged: dict[str, str] = {}
    for path in env_files(service):
        merged.update(shared_settings(path))
    return merged | {key: str(value) for key, value in env(service).items()}


def mounts(service: dict) -> dict[str, str]:
    """{target: source} of a service's short-syntax volumes."""
    return {spec.split(":")[1]: spec.split(":")[0] for spec in service.get("volumes", [])}


def host_ips(service: dict) -> list[str]:
    """The host address of each published port ("0.0.0.0" when the short syntax names none)."""
    ips = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ips.append(port.get("host_ip", "0.0.0.0"))
        else:
            match = PORT.fullmatch(str(port))
            assert match, f"unexpected port syntax {port!r}"
            ips.append(match["ip"] or "0.0.0.0")
    return ips


def pin(path: Path, package: str) -> str:
    match = re.search(rf"^{re.escape(package)}(\[[^\]]*\])?==(\S+)", path.read_text(), flags=re.M | re.I)
    assert match, f"{path.name} does not pin {package}"
    return match[2]


# ---------------------------------------------------------------------------------------------- structure


def test_compose_file_follows_the_compose_spec(compose, services):
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SPEC.read_text()))
    assert not validator.is_valid({"services": {"x": {"image": "x", "healtcheck": {}}}}), "schema too lax"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # What Compose checks beyond the schema: references resolve, bind-mounted paths exist.
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), f"{name} depends on an undefined service"
        for target, source in mounts(service).items():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} (mounted at {target}) is not in the repo"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_the_stack_has_its_services(services):
    assert set(STACK) <= set(services), f"missing: {sorted(set(STACK) - set(services))}"
    images = {(services[name]["image"], json.dumps(services[name]["build"])) for name in AIRFLOW_SERVICES}
    assert len(images) == 1, f"the Airflow services must run one image: {images}"
    worker = services["airflow-worker"]
    assert "container_name" not in worker and not worker.get("ports"), "--scale airflow-worker=N must work"


def test_images_follow_the_pins(services):
    airflow_dockerfile = ROOT / services["airflow-worker"]["build"]["dockerfile"]
    base = re.search(r"^FROM apache/airflow:(\S+)-python3\.11$", airflow_dockerfile.read_text(), flags=re.M)
    assert base and base[1] == pin(ROOT / "requirements.txt", "apache-airflow"), "base image vs requirements.txt"
    mlflow_dockerfile = ROOT / services["mlflow"]["build"]["context"] / services["mlflow"]["build"]["dockerfile"]
    for package in ("mlflow", "psycopg2-binary"):
        assert pin(ROOT / "constraints.txt", package) in re.findall(
            rf"\b{package}==([^\s\"']+)", mlflow_dockerfile.read_text()
        ), f"{mlflow_dockerfile.name} must pin {package} as constraints.txt does"


# ---------------------------------------------------------------------------------------------- secrets


def test_every_variable_has_a_placeholder_in_env_example(compose, example_env):
    used = variables(compose)
    assert sorted(set(used) - set(example_env)) == [], "used by docker-compose.yaml, missing from .env.example"
    assert sorted(set(example_env) - set(used)) == [], "in .env.example but unused by docker-compose.yaml"
    secrets = {name for name in used if SECRET_NAME.search(name)}
    assert {name for name in secrets if used[name] != {":?"}} == set(), "secrets: ${VAR:?message}, no default"
    assert {name for name in secrets if example_env[name] != "change-me"} == set(), "placeholders only"
    uris = re.findall(r"\w+://[^\s\"]+", resolved(json.dumps(compose)))
    literal = [uri for uri in uris if (urlsplit(uri).password or "!")[-1] != "!"]
    assert literal == [], "a password in a URI must be a ${VAR:?message}"


def test_preflight_checks_every_secret_before_anything_starts(compose, services):
    preflight = services["preflight"]
    secrets = {name for name in variables(compose) if SECRET_NAME.search(name)}
    assert {spec.split(":")[0] for spec in preflight["command"]} == set(env(preflight)) == secrets
    assert mounts(preflight)[preflight["entrypoint"][-1]] == "./docker/preflight.sh"
    for name, service in services.items():
        if name != "preflight":
            condition = service.get("depends_on", {}).get("preflight", {}).get("condition")
            assert condition == "service_completed_successfully", f"{name} must wait for preflight"


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({}, set()),
        ({"PROMOTION_SIGNING_KEY": "change-me"}, {"PROMOTION_SIGNING_KEY"}),
        ({"MLFLOW_PIPELINE_PASSWORD": "change-me-please"}, {"MLFLOW_PIPELINE_PASSWORD"}),
        ({"REDIS_PASSWORD": ""}, {"REDIS_PASSWORD"}),
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, {"MLFLOW_AUTH_ADMIN_PASSWORD"}),
        ({"PROMOTION_SIGNING_KEY": "0123456789abcdef0123456789"}, {"PROMOTION_SIGNING_KEY"}),  # 26 < 32
        ({"PROMOTION_AUDIT_KEY": "change-me"}, {"PROMOTION_AUDIT_KEY"}),
        ("unedited .env.example", "every secret"),
    ],
)
def test_preflight_refuses_placeholders(services, example_env, overrides, refused):
    specs = services["preflight"]["command"]
    names = [spec.split(":")[0] for spec in specs]
    if overrides == "unedited .env.example":
        overrides, refused = {name: example_env[name] for name in names}, set(names)
    values = {name: f"{name.lower()}-0123456789abcdef" for name in names} | overrides
    result = subprocess.run(
        ["/bin/sh", str(ROOT / "docker" / "preflight.sh"), *specs],
        env={"PATH": "/usr/bin:/bin", **values},
        capture_output=True,
        text=True,
        timeout=30,
    )
    listed = "".join(line for line in result.stderr.splitlines() if line.startswith("  "))  # the refusals
    named = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", listed)) & set(names)
    assert (result.returncode, named) == ((1, refused) if refused else (0, set())), result.stderr


def test_credentials_reach_only_the_services_that_need_them(services):
    for secret, holders in HOLDERS.items():
        seen = {name for name, service in services.items() if secret in variables(service)} - {"preflight"}
        assert seen == holders, f"{secret} reaches {sorted(seen)}"
    worker_only = {
        "AIRFLOW_CONN_PROMOTION_DB",
        "MLFLOW_TRACKING_PASSWORD",
        "PROMOTION_SIGNING_KEY",
        "PROMOTION_AUDIT_KEY",
    }
    # the api-server reads for the Model promotion page: its MLflow login is the read-only account's
    reader = {"MLFLOW_TRACKING_PASSWORD", "AIRFLOW_CONN_PROMOTION_DB_READER"}
    for name in set(AIRFLOW_RUNTIME) - {"airflow-worker"}:
        allowed = reader if name == "airflow-apiserver" else set()
        leaked = ((worker_only | {"AIRFLOW_CONN_PROMOTION_DB_OWNER", *reader}) - allowed) & set(env(services[name]))
        assert leaked == set(), f"{name} must not get {sorted(leaked)}"
    apiserver = env(services["airflow-apiserver"])
    assert apiserver["MLFLOW_TRACKING_USERNAME"] == "promotion-reader"
    assert set(variables(apiserver["MLFLOW_TRACKING_PASSWORD"])) == {"MLFLOW_READER_PASSWORD"}
    reader_db = urlsplit(resolved(apiserver["AIRFLOW_CONN_PROMOTION_DB_READER"]))
    assert (reader_db.username, reader_db.path) == (env(services["postgres"])["PROMOTION_DB_READER_USER"], "/promotion")
    holders = {name for name, service in services.items() if "/opt/airflow/auth" in mounts(service)}
    assert holders == {"airflow-apiserver", "airflow-init"}, "the Airflow passwords volume"


# ------------------------------------------------------------------------------------ Airflow and MLflow


def test_airflow_settings_that_matter(services):
    for name in AIRFLOW_SERVICES:
        environment = resolved_env(services[name])
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        # the package imports everywhere; only the task-running worker preloads (never the dag-processor)
        preload = ["/opt/airflow/include/preload"] if name == "airflow-worker" else []
        assert environment["PYTHONPATH"].split(":") == [*preload, "/opt/airflow"], name
        assert {"/opt/airflow/dags", "/opt/airflow/include"} <= set(mounts(services[name])), name
    roles = env(services["postgres"])
    for service, key, role in (
        ("airflow-worker", "AIRFLOW_CONN_PROMOTION_DB", roles["PROMOTION_DB_APP_USER"]),
        ("airflow-init", "AIRFLOW_CONN_PROMOTION_DB_OWNER", roles["PROMOTION_DB_OWNER_USER"]),
    ):
        uri = urlsplit(resolved(env(services[service])[key]))
        assert (uri.scheme, uri.hostname, uri.username, uri.path) == ("postgresql", "postgres", role, "/promotion")
    worker, init = env(services["airflow-worker"]), env(services["airflow-init"])
    assert worker["MLFLOW_TRACKING_USERNAME"] == init["MLFLOW_TRACKING_USERNAME"] == "promotion-pipeline"
    assert variables(worker["MLFLOW_TRACKING_PASSWORD"]) == variables(init["MLFLOW_TRACKING_PASSWORD"])
    assert "MLFLOW_PIPELINE_PASSWORD" in variables(worker["MLFLOW_TRACKING_PASSWORD"])
    # MLflow answers 403 to a Host header outside --allowed-hosts.
    command = services["mlflow"]["command"]
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    tracking = urlsplit(worker["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow" and any(fnmatch(tracking.netloc, host) for host in allowed)


def test_mlflow_requires_a_login_and_listens_on_loopback_only(services):
    mlflow = services["mlflow"]
    assert mlflow["command"][mlflow["command"].index("--app-name") + 1] == "basic-auth"
    # the server the harness runs (make run, the tests): gunicorn, with the same options
    assert mlflow["command"][mlflow["command"].index("--gunicorn-opts") + 1] == GUNICORN_OPTS
    environment = env(mlflow)
    assert {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(environment)
    config = configparser.ConfigParser()
    config.read_string((ROOT / mounts(mlflow)[environment["MLFLOW_AUTH_CONFIG_PATH"]]).read_text())
    auth = config["mlflow"]
    assert (auth["default_permission"], auth["admin_username"]) == ("READ", "admin")
    assert "admin_password" not in auth, "the admin password comes from .env, not from the repository"
    database = urlsplit(auth["database_uri"])
    # psycopg2 named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3 (see scripts/stack/service_stack.py)
    assert database.scheme == "postgresql+psycopg2" and database.password is None
    assert urlsplit(env(mlflow)["MLFLOW_BACKEND_STORE_URI"]).scheme == "postgresql+psycopg2"
    assert host_ips(mlflow) and set(host_ips(mlflow)) == {"127.0.0.1"}
    for name, service in services.items():
        if name != "airflow-apiserver":
            assert set(host_ips(service)) <= {"127.0.0.1"}, f"{name} is published beyond loopback"


def test_healthchecks_and_start_order(services):
    for name, service in services.items():
        if service.get("restart") == "always":
            assert "healthcheck" in service, f"{name} needs a healthcheck"

    def waits(name: str, dependency: str) -> str | None:
        return services[name].get("depends_on", {}).get(dependency, {}).get("condition")

    for name in AIRFLOW_RUNTIME:
        assert waits(name, "airflow-init") == "service_completed_successfully", name
    for name in ("airflow-init", "airflow-worker"):
        assert waits(name, "mlflow") == "service_healthy", name
    for name in ("mlflow", "airflow-init"):
        assert waits(name, "postgres") == "service_healthy", name


def test_airflow_init_migrates_before_anything_runs(services):
    init = services["airflow-init"]
    script = ROOT / mounts(init)[str(Path(init["command"][-1]).parent)] / Path(init["command"][-1]).name
    text = script.read_text()
    steps = [text.find(step) for step in ("airflow db migrate", AUDIT_MIGRATION, MLFLOW_ACCOUNTS, MLFLOW_WEBHOOK)]
    assert -1 not in steps and steps == sorted(steps), f"{script.name}: db migrate, audit migration, accounts, webhook"
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_the_mlflow_webhook_reaches_the_api_server_with_the_secret_it_verifies(services, example_env):
    from include.promotion.watch.mlflow_webhook import RECEIVER_ROUTE, URL_PREFIX

    mlflow, init, apiserver = (env(services[name]) for name in ("mlflow", "airflow-init", "airflow-apiserver"))
    # MLflow posts over the compose network (http, a private address) and can still sign after a restart
    assert mlflow["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"].split(",") == ["http", "https"]
    assert mlflow["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert variables(mlflow["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]) == {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": {":?"}}
    # registered by airflow-init with the secret the api-server verifies deliveries with
    assert variables(init["PROMOTION_WEBHOOK_SECRET"]) == variables(apiserver["PROMOTION_WEBHOOK_SECRET"])
    for url in (
        re.sub(r"\$\{PROMOTION_WEBHOOK_URL:-(.*)\}", r"\1", init["PROMOTION_WEBHOOK_URL"]),
        example_env["PROMOTION_WEBHOOK_URL"],
    ):
        target = urlsplit(url)
        assert (target.hostname, target.port, target.path) == ("airflow-apiserver", 8080, URL_PREFIX + RECEIVER_ROUTE)
    assert init["MLFLOW_TRACKING_USERNAME"] == "promotion-pipeline"  # an MLflow admin: webhooks are admin-only


def test_postgres_init_script_gets_what_it_reads(services):
    postgres = services["postgres"]
    scripts = sorted((ROOT / mounts(postgres)["/docker-entrypoint-initdb.d"]).glob("*.sh"))
    assert scripts
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
        read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", script.read_text())) - {"POSTGRES_DB"}
        assert read <= set(env(postgres)), f"{script.name} reads {sorted(read - set(env(postgres)))}, unset"


# ------------------------------------------------------------------------ one source of Airflow's settings


@pytest.fixture(scope="module")
def shared() -> dict[str, str]:
    from scripts.stack.airflow_services import SHARED_SETTINGS_FILE, shared_settings

    return shared_settings(SHARED_SETTINGS_FILE)


def harness_env(tmp_path: Path, executor: str) -> dict[str, str]:
    """What the harness gives its Airflow processes (scripts/stack), built without starting anything."""
    from scripts.stack import ServiceStack, StackConfig

    stack = ServiceStack(StackConfig(state_dir=tmp_path, executor=executor, airflow_port=0, mlflow_port=0))
    try:
        return stack.airflow_env()
    finally:
        stack._stopped = True  # nothing was started: nothing to stop at exit


def test_every_airflow_service_reads_the_shared_settings_and_none_overrides_them(services, shared):
    from scripts.stack.airflow_services import SHARED_SETTINGS_FILE

    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name in AIRFLOW_SERVICES:
        assert env_files(services[name]) == [SHARED_SETTINGS_FILE], name
        again = set(shared) & set(env(services[name]))
        assert again == set(), f"{name} sets {sorted(again)} again: change them in {SHARED_SETTINGS_FILE.name} only"
    for name in set(services) - set(AIRFLOW_SERVICES):
        assert SHARED_SETTINGS_FILE not in env_files(services[name]), f"{name} is no Airflow service"
    # Compose and the harness read the file alike: plain KEY=VALUE, nothing either would interpret
    for key, value in shared.items():
        assert key.startswith("AIRFLOW__") and key == key.upper(), key
        assert not re.search(r"[$'\"`]|\s#", value), f"{key}={value}: no quotes, variables or inline comments"
        assert not SECRET_NAME.search(key) and "://" not in value, f"{key}: secrets and URIs belong in .env"


def test_the_harness_celery_mode_runs_what_compose_runs(services, shared, tmp_path):
    """The drift test: `make run-distributed` (and the Celery e2e tests) get every shared setting as compose does,
    except the harness's documented overrides; `make run` differs only in its executor's own."""
    from scripts.stack.airflow_services import DEVELOPMENT_OVERRIDES, LOCAL_EXECUTOR_OVERRIDES
    from scripts.stack.config import CELERY, LOCAL

    assert set(DEVELOPMENT_OVERRIDES) == {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"}, "say why in airflow_services"
    assert set(LOCAL_EXECUTOR_OVERRIDES) == {"AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__PARALLELISM"}
    celery, local = harness_env(tmp_path / "celery", CELERY), harness_env(tmp_path / "local", LOCAL)
    for name in ("airflow-scheduler", "airflow-worker", "airflow-apiserver"):
        composed = resolved_env(services[name])
        differ = {key for key in shared if celery.get(key) != composed.get(key)}
        assert differ == set(DEVELOPMENT_OVERRIDES), f"{name}: {sorted(differ)}"
    assert {key for key in shared if local.get(key) != celery.get(key)} == set(LOCAL_EXECUTOR_OVERRIDES)
    # the Celery settings that hold secrets or addresses: set in both, pointing at the same kinds of services
    composed = resolved_env(services["airflow-worker"])
    for key, scheme in (("AIRFLOW__CELERY__BROKER_URL", "redis"), ("AIRFLOW__CELERY__RESULT_BACKEND", "db+postgresql")):
        assert urlsplit(resolved(composed[key])).scheme.startswith(scheme), key
        assert urlsplit(celery[key]).scheme == urlsplit(resolved(composed[key])).scheme, key
    assert "AIRFLOW__CELERY__BROKER_URL" not in local


# What only the harness can know (paths, ports, addresses, secrets): every other Airflow setting it gives its processes
# comes from docker/airflow.env.
MACHINE_SPECIFIC = {
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__API__HOST",
    "AIRFLOW__API__PORT",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER",
}


def test_the_harness_sets_no_airflow_setting_of_its_own(shared, tmp_path):
    from scripts.stack.config import CELERY

    own = {key for key in harness_env(tmp_path, CELERY) if key.startswith("AIRFLOW__")} - set(shared)
    assert own - MACHINE_SPECIFIC == set(), "put shared settings in docker/airflow.env (compose reads it too)"


def test_the_harness_celery_mode_gives_credentials_as_compose_does(tmp_path):
    """Like compose's airflow-worker, only the Celery workers get the pipeline's credentials and preload the tasks'
    libraries; the scheduler, which runs no task there, gets neither."""
    from scripts.stack import ServiceStack, StackConfig
    from scripts.stack.airflow_services import PRELOAD_DIR, WORKER_SECRETS
    from scripts.stack.config import CELERY

    stack = ServiceStack(StackConfig(state_dir=tmp_path, executor=CELERY, airflow_port=0, mlflow_port=0))
    stack._stopped = True  # nothing is started
    airflow = stack.airflow
    worker = airflow.component_env("celery-worker")
    assert all(worker[key] for key in WORKER_SECRETS)
    assert worker["PYTHONPATH"].split(":")[0] == str(PRELOAD_DIR)
    for component in ("scheduler", "dag-processor", "triggerer", "api-server"):
        own = airflow.component_env(component)
        leaked = {key for key in WORKER_SECRETS if own[key]} - {"MLFLOW_TRACKING_PASSWORD"}
        assert leaked == set(), f"{component} gets {sorted(leaked)}"
        assert str(PRELOAD_DIR) not in own["PYTHONPATH"], component
        assert own["MLFLOW_TRACKING_PASSWORD"] in ("", stack.state.secrets["mlflow_reader_password"]), component
    # each worker: its own HOME, TMPDIR and host name
    envs = [stack.workers.env(name, worker) for name in stack.workers.names]
    for key in ("HOME", "TMPDIR", "STACK_WORKER_HOSTNAME"):
        assert len({env[key] for env in envs}) == len(envs), key


def test_the_fab_overlay_gives_every_airflow_service_the_packages_fab_auth_manager(services):
    """docker-compose.fab.yaml switches every Airflow service (and only those) to the FAB auth manager the stacks run,
    and airflow-init then creates the FAB users and per-model roles."""
    from include.promotion.access import FAB_AUTH_MANAGER

    overlay = yaml.safe_load((ROOT / "docker-compose.fab.yaml").read_text())["services"]
    assert set(overlay) == set(AIRFLOW_SERVICES) and set(overlay) <= set(services)
    for name, service in overlay.items():
        assert set(service) == {"environment"}, name
        assert env(service) == {"AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER}, name
    init = (ROOT / "docker" / "airflow-init" / "init.sh").read_text()
    assert "python -m include.promotion.fab_accounts --simple-auth-manager-users" in init
    assert "FabAuthManager" in FAB_AUTH_MANAGER  # Airflow syncs access_control only for an auth manager so named
