"""Static checks of the team deployment: docker-compose.yaml, .env.example and docker/.

Docker is not needed (nor available where these run): the compose file is parsed as YAML and its
`${VAR}` interpolation is resolved here the way Compose does it, with the values of .env.example.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
REQUIREMENTS = ROOT / "requirements.txt"
CONSTRAINTS = ROOT / "constraints.txt"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
# The long-running Airflow components: they run DAG code, so they need the code mounts and package env.
AIRFLOW_RUNTIME_SERVICES = tuple(name for name in AIRFLOW_SERVICES if name != "airflow-init")
EXPECTED_SERVICES = ("postgres", "redis", "mlflow", *AIRFLOW_SERVICES)
CODE_MOUNTS = {
    "./dags": "/opt/airflow/dags",
    "./plugins": "/opt/airflow/plugins",
    "./include": "/opt/airflow/include",
}

# Variable names that hold credentials: they must be required (`${VAR:?...}`) and placeholders in the example.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|(^|_)KEY$|TOKEN")
PLACEHOLDER = re.compile(r"^(change-me[a-z0-9-]*|)$")

# Keys Compose accepts on a service (subset of the compose-spec schema this file may reasonably use);
# catches typos such as `depends-on` or `healtcheck`, which Compose rejects.
KNOWN_SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "expose",
    "depends_on",
    "healthcheck",
    "restart",
    "user",
    "profiles",
    "container_name",
    "deploy",
    "networks",
    "working_dir",
    "labels",
    "logging",
    "stop_grace_period",
    "stop_signal",
    "init",
    "secrets",
    "configs",
    "read_only",
    "tmpfs",
    "shm_size",
    "ulimits",
    "extra_hosts",
    "hostname",
    "pull_policy",
    "scale",
}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# `$$` is a literal `$`; `${NAME}`, `${NAME<op><arg>}` and `$NAME` are interpolated by Compose.
_INTERPOLATION = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingRequiredVariable(Exception):
    pass


# --------------------------------------------------------------------------------------------- helpers


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Resolve Compose interpolation in one string (no nested defaults: this repo does not use them)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op is None:
            return value or ""
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?":
            if not value:
                raise MissingRequiredVariable(f"{name}: {arg}")
            return value
        if op == "?":
            if value is None:
                raise MissingRequiredVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        return arg if value is not None else ""  # op == "+"

    return _INTERPOLATION.sub(replace, text)


def _map_strings(node, func):
    """Apply `func` to every string value (not key) of a parsed YAML tree."""
    if isinstance(node, dict):
        return {key: _map_strings(value, func) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_strings(item, func) for item in node]
    if isinstance(node, str):
        return func(node)
    return node


def _string_values(node):
    found: list[str] = []
    _map_strings(node, lambda text: found.append(text) or text)
    return found


def _references(node) -> list[tuple[str, str | None]]:
    """Every (variable, operator) interpolated in the string values of `node`."""
    refs = []
    for text in _string_values(node):
        for match in _INTERPOLATION.finditer(text):
            name = match.group("braced") or match.group("bare")
            if name:
                refs.append((name, match.group("op")))
    return refs


def _parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{number}: not KEY=VALUE"
        assert key not in values, f"{path.name}:{number}: {key} defined twice"
        values[key] = value.strip().strip("'\"")
    return values


def _pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of the `name==version` lines of a requirements/constraints file."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+).*", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def _requirement_pin(package: str) -> str:
    if not REQUIREMENTS.is_file():
        pytest.fail(f"{REQUIREMENTS} is missing: it pins the versions the images must match")
    for line in REQUIREMENTS.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        match = re.fullmatch(
            rf"{re.escape(package)}(\[[^\]]*\])?\s*==\s*([^\s;]+)(\s*;.*)?", requirement, flags=re.IGNORECASE
        )
        if match:
            return match.group(2)
    pytest.fail(f"requirements.txt does not pin {package}==<version>")


def _volume_specs(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, type) of each mount of a service; type is bind, volume or tmpfs."""
    specs = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            specs.append((volume.get("source", ""), volume["target"], volume["type"]))
            continue
        source, _, rest = volume.partition(":")
        target = rest.split(":", 1)[0] if rest else source
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        specs.append((source, target, kind))
    return specs


def _build_paths(build) -> tuple[Path, Path]:
    if isinstance(build, str):
        build = {"context": build}
    context = ROOT / build.get("context", ".")
    return context, context / build.get("dockerfile", "Dockerfile")


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no `services:` mapping"
    return data


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    assert ENV_EXAMPLE.is_file(), f"{ENV_EXAMPLE} is missing"
    return _parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw_compose, example_env) -> dict:
    """The compose file as Compose would see it with .env.example copied to .env."""
    return _map_strings(raw_compose, lambda text: _interpolate(text, example_env))


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


# ----------------------------------------------------------------------------------------------- tests


def test_expected_services_are_defined(raw_compose):
    missing = [name for name in EXPECTED_SERVICES if name not in raw_compose["services"]]
    assert missing == [], f"services missing from docker-compose.yaml: {missing}"


def test_service_definitions_use_known_keys(raw_compose):
    for name, service in raw_compose["services"].items():
        unknown = {key for key in service if not key.startswith("x-")} - KNOWN_SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {sorted(unknown)}"
        assert "image" in service or "build" in service, f"{name}: neither image nor build"


def test_depends_on_and_named_volumes_are_declared(services, compose):
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        targets = depends_on if isinstance(depends_on, list) else list(depends_on)
        for target in targets:
            assert target in services, f"{name} depends on undefined service {target}"
            if isinstance(depends_on, dict):
                assert depends_on[target]["condition"] in DEPENDS_ON_CONDITIONS, f"{name} -> {target}"
        for source, _, kind in _volume_specs(service):
            if kind == "volume":
                assert source in declared_volumes, f"{name}: volume {source} not in top-level volumes"


def test_every_referenced_variable_is_in_env_example(raw_compose, example_env):
    referenced = {name for name, _ in _references(raw_compose)}
    assert referenced, "docker-compose.yaml references no variables at all"
    missing = sorted(referenced - set(example_env))
    assert missing == [], f"used by docker-compose.yaml but not in .env.example: {missing}"


def test_env_example_has_no_unused_variables(raw_compose, example_env):
    referenced = {name for name, _ in _references(raw_compose)}
    unused = sorted(set(example_env) - referenced)
    assert unused == [], f"in .env.example but never used by docker-compose.yaml (typo?): {unused}"


def test_secrets_are_required_and_have_no_default(raw_compose):
    secret_refs = [(name, op) for name, op in _references(raw_compose) if SECRET_NAME.search(name)]
    assert secret_refs, "no password/secret variable referenced: the credentials must come from .env"
    loose = sorted({f"{name} (operator {op or 'none'})" for name, op in secret_refs if op != ":?"})
    assert loose == [], f"secrets must be referenced as ${{VAR:?message}}, not with a default: {loose}"


def test_compose_holds_no_literal_credentials(raw_compose):
    required_ref = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}")
    for text in _string_values(raw_compose):
        # scheme://user:password@host - the password part must be a required variable.
        for password in re.findall(r"://[^/\s:@]*:([^@\s]*)@", text):
            assert required_ref.fullmatch(password), f"literal password in URI: {text}"
    for name, service in raw_compose["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for key, value in environment.items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert isinstance(value, str) and required_ref.fullmatch(value), f"{name}: {key}={value!r}"


def test_missing_secret_stops_compose(raw_compose, example_env):
    """Without POSTGRES_PASSWORD in .env, interpolation (hence `docker compose up`) fails."""
    env = {key: value for key, value in example_env.items() if key != "POSTGRES_PASSWORD"}
    with pytest.raises(MissingRequiredVariable, match="POSTGRES_PASSWORD"):
        _map_strings(raw_compose, lambda text: _interpolate(text, env))


def test_env_example_secrets_are_placeholders(example_env):
    secret_keys = [key for key in example_env if SECRET_NAME.search(key)]
    assert len(secret_keys) >= 5, f"expected the passwords and secrets in .env.example, got {secret_keys}"
    real = sorted(key for key in secret_keys if not PLACEHOLDER.match(example_env[key]))
    assert real == [], f"use `change-me` placeholders, not real values, for: {real}"


def test_env_example_values_do_not_look_like_secrets(example_env):
    # A random token: 16+ chars of key/hex/base64 alphabet mixing letters and digits (hex keys, Fernet keys).
    token = re.compile(r"[A-Za-z0-9+/_=-]{16,}")
    for key, value in example_env.items():
        for candidate in token.findall(value):
            looks_random = re.search(r"\d", candidate) and re.search(r"[A-Za-z]", candidate)
            assert not looks_random, f".env.example {key} holds something that looks like a real secret"
        assert not re.search(r"://[^/\s:@]*:[^@\s]+@", value), f".env.example {key} embeds a credential"


def test_bind_mount_sources_exist_in_repo(services):
    bind_mounts = 0
    for name, service in services.items():
        for source, _, kind in _volume_specs(service):
            if kind != "bind":
                continue
            assert not source.startswith(("/", "~")), f"{name}: absolute host path {source} is not portable"
            bind_mounts += 1
            assert (ROOT / source).exists(), f"{name}: mounted host path {source} does not exist in the repo"
    assert bind_mounts >= len(CODE_MOUNTS), "expected the code directories to be bind-mounted"


def test_build_contexts_and_dockerfiles_exist(services):
    builds = {name: service["build"] for name, service in services.items() if "build" in service}
    assert {"mlflow", *AIRFLOW_SERVICES} <= set(builds), f"services built locally: {sorted(builds)}"
    for name, build in builds.items():
        context, dockerfile = _build_paths(build)
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"


def test_airflow_services_share_one_image(raw_compose):
    images = {
        (raw_compose["services"][name].get("image"), str(raw_compose["services"][name].get("build")))
        for name in AIRFLOW_SERVICES
    }
    assert len(images) == 1, f"Airflow services must run the same image: {images}"


def test_airflow_base_image_matches_requirements(services):
    pin = _requirement_pin("apache-airflow")
    _, dockerfile = _build_paths(services["airflow-scheduler"]["build"])
    bases = re.findall(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", dockerfile.read_text(), flags=re.M | re.I)
    assert bases, f"{dockerfile.name} has no FROM line"
    image, _, tag = bases[0].partition(":")
    assert image == "apache/airflow", f"{dockerfile.name} must build on apache/airflow, not {image}"
    assert tag.split("-python", 1)[0] == pin, (
        f"{dockerfile.name} is based on apache/airflow:{tag} but requirements.txt pins apache-airflow=={pin}"
    )
    assert "requirements.txt" in dockerfile.read_text(), f"{dockerfile.name} must install requirements.txt"


def test_mlflow_image_pin_matches_requirements(services):
    pin = _requirement_pin("mlflow")
    _, dockerfile = _build_paths(services["mlflow"]["build"])
    text = dockerfile.read_text()
    pins = re.findall(r"\bmlflow==([^\s\"']+)", text)
    assert pins, f"{dockerfile.name} does not pin mlflow=="
    assert set(pins) == {pin}, f"{dockerfile.name} pins mlflow {sorted(set(pins))}; requirements.txt: {pin}"
    assert "psycopg2" in text, f"{dockerfile.name} must install the PostgreSQL driver"


def test_mlflow_image_pins_agree_with_constraints(services):
    """Every `pkg==version` in the MLflow image is the version the repo's environment was verified with."""
    _, dockerfile = _build_paths(services["mlflow"]["build"])
    image_pins = {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in re.findall(r"([A-Za-z0-9._-]+)==([^\s\"']+)", dockerfile.read_text())
    }
    assert "psycopg2-binary" in image_pins, f"{dockerfile.name} must pin psycopg2-binary"
    assert CONSTRAINTS.is_file(), "constraints.txt (the frozen environment) must exist at the repo root"
    verified = _pins(CONSTRAINTS)
    differing = {
        name: (version, verified[name])
        for name, version in image_pins.items()
        if name in verified and verified[name] != version
    }
    assert differing == {}, f"{dockerfile.name} pins (image, constraints.txt) differ: {differing}"


def test_airflow_services_mount_the_code(services):
    for name in AIRFLOW_RUNTIME_SERVICES:
        mounts = {source: target for source, target, kind in _volume_specs(services[name]) if kind == "bind"}
        for source, target in CODE_MOUNTS.items():
            assert mounts.get(source) == target, f"{name}: {source} must be mounted at {target}"


def test_airflow_services_environment_contract(services, example_env):
    for name in AIRFLOW_RUNTIME_SERVICES:
        env = services[name]["environment"]
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert env.get("PYTHONPATH") == "/opt/airflow", f"{name}: `import include.promotion` needs it"
        assert env.get("MLFLOW_TRACKING_URI") == "http://mlflow:5000", name
        assert env.get("PROMOTION_MLFLOW_UI_URL") == example_env["PROMOTION_MLFLOW_UI_URL"], name
        assert env.get("PROMOTION_MIRROR_STAGES") in {"true", "false"}, name
        assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"), name
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
            assert env.get(key), f"{name}: {key} must be set (identical on every Airflow component)"
        conn = urlsplit(env.get("AIRFLOW_CONN_PROMOTION_DB", ""))
        assert (conn.scheme, conn.hostname, conn.path) == ("postgresql", "postgres", "/promotion"), name
        assert conn.username == example_env["PROMOTION_DB_USER"], name
        assert conn.password == example_env["PROMOTION_DB_PASSWORD"], name
    shared = {
        key: {services[name]["environment"].get(key) for name in AIRFLOW_RUNTIME_SERVICES}
        for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    }
    assert all(len(values) == 1 for values in shared.values()), f"differs between components: {shared}"


def test_airflow_worker_can_be_scaled(raw_compose):
    worker = raw_compose["services"]["airflow-worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale airflow-worker=N"
    assert not worker.get("ports"), "published host ports prevent --scale airflow-worker=N"
    command = worker["command"]
    assert "celery worker" in (" ".join(command) if isinstance(command, list) else command)


def test_postgres_creates_the_three_databases(services, example_env):
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    env = postgres["environment"]
    assert {env.get(f"{prefix}_DB_NAME") for prefix in ("AIRFLOW", "MLFLOW", "PROMOTION")} == {
        "airflow",
        "mlflow",
        "promotion",
    }
    init_dirs = [
        source
        for source, target, kind in _volume_specs(postgres)
        if kind == "bind" and target == "/docker-entrypoint-initdb.d"
    ]
    assert len(init_dirs) == 1, "the init scripts must be mounted at /docker-entrypoint-initdb.d"
    scripts = sorted((ROOT / init_dirs[0]).glob("*.sh"))
    assert scripts, f"no init script in {init_dirs[0]}"
    script_text = "\n".join(path.read_text() for path in scripts)
    for prefix in ("AIRFLOW", "MLFLOW", "PROMOTION"):
        for suffix in ("DB_NAME", "DB_USER", "DB_PASSWORD"):
            assert f"{prefix}_{suffix}" in script_text, f"init script ignores {prefix}_{suffix}"
    assert all(os.access(path, os.X_OK) for path in scripts), "init scripts must be executable"

    def target(uri: str) -> tuple[str | None, str | None, str]:
        parts = urlsplit(uri)
        return parts.hostname, parts.username, parts.path.lstrip("/")

    airflow_env = services["airflow-scheduler"]["environment"]
    expected = {
        "AIRFLOW": airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "MLFLOW": _option(services["mlflow"]["command"], "--backend-store-uri"),
        "PROMOTION": airflow_env["AIRFLOW_CONN_PROMOTION_DB"],
    }
    for prefix, uri in expected.items():
        assert target(uri) == ("postgres", env[f"{prefix}_DB_USER"], env[f"{prefix}_DB_NAME"]), (
            f"{prefix}: {uri} does not point at the database and user the init script creates"
        )


def test_mlflow_server_command(services):
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert isinstance(command, list) and command[:2] == ["mlflow", "server"], command
    assert "--serve-artifacts" in command
    assert _option(command, "--backend-store-uri").startswith("postgresql://")
    assert (_option(command, "--host"), _option(command, "--port")) == ("0.0.0.0", "5000")
    artifacts = _option(command, "--artifacts-destination")
    volume_targets = {target for _, target, kind in _volume_specs(mlflow) if kind == "volume"}
    assert artifacts in volume_targets, f"artifacts at {artifacts} must live on a named volume"
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])


def test_mlflow_accepts_the_host_airflow_uses(services):
    """MLflow 3 rejects unknown Host headers (403); the tracking URI's host must be allowed."""
    command = services["mlflow"]["command"]
    allowed = [host.strip() for host in _option(command, "--allowed-hosts").split(",") if host.strip()]
    netloc = urlsplit(services["airflow-worker"]["environment"]["MLFLOW_TRACKING_URI"]).netloc
    assert any(fnmatch.fnmatch(netloc, pattern) for pattern in allowed), f"{netloc} not in {allowed}"
    ui = urlsplit(services["airflow-worker"]["environment"]["PROMOTION_MLFLOW_UI_URL"]).netloc
    assert any(fnmatch.fnmatch(ui, pattern) for pattern in allowed), f"UI host {ui} not in {allowed}"


def test_workers_wait_for_mlflow_and_migrations(raw_compose):
    depends_on = raw_compose["services"]["airflow-worker"]["depends_on"]
    assert depends_on.get("mlflow", {}).get("condition") == "service_healthy"
    for name in AIRFLOW_RUNTIME_SERVICES:
        condition = raw_compose["services"][name]["depends_on"].get("airflow-init", {}).get("condition")
        assert condition == "service_completed_successfully", f"{name} must wait for airflow-init"
