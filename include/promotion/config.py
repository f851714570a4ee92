"""Per-model configuration: one ``include/models/<name>.yaml`` per governed model.

This module is imported at DAG parse time, so it stays light: pydantic and yaml only.
A malformed file raises ``ModelConfigError`` naming the file, the field and the fix;
``load_model_configs`` collects those errors so one broken file never hides the other models.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from include.promotion import settings
from include.promotion.errors import ModelConfigError, UnknownModel

Metric = Literal["roc_auc", "f1", "average_precision", "precision", "recall"]
METRICS: tuple[str, ...] = get_args(Metric)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def dag_id_for(model_name: str) -> str:
    """``model_promotion__<model name with non-alphanumerics as _>`` (a contract)."""
    return "model_promotion__" + re.sub(r"[^0-9A-Za-z]", "_", model_name)


class _Strict(BaseModel):
    # A typo in a field name must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresSource(_Strict):
    source: Literal["postgres"]
    conn_id: str = Field(default="promotion_db", min_length=1)
    query: str = Field(min_length=1, description="SELECT returning the features and the target column.")


class BuiltinSource(_Strict):
    source: Literal["builtin"]
    dataset: Literal["synthetic_transactions", "breast_cancer"]
    rows: int = Field(default=4000, ge=50, le=1_000_000)
    seed: int = 7


DataSource = Annotated[PostgresSource | BuiltinSource, Field(discriminator="source")]


class Holdout(_Strict):
    test_size: float = Field(default=0.25, gt=0.05, lt=0.9)
    random_state: int = 42
    key: str | None = Field(
        default=None,
        min_length=1,
        description="A unique, stable row id column. Rows are then held out by a hash of it, so a row stays in "
        "(or out of) the holdout as the table grows, and the champion is never scored on rows it trained on. "
        "Without it: a seeded stratified split of the current rows.",
    )


class Estimator(_Strict):
    class_path: str = Field(alias="class", pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")
    params: dict[str, Any] = Field(default_factory=dict)
    scale: bool = Field(default=True, description="Put a StandardScaler in front of the estimator.")


class ChampionComparison(_Strict):
    metric: Metric = "roc_auc"
    min_improvement: float = Field(default=0.0, ge=-1.0, le=1.0)


class Approval(_Strict):
    reviewers: list[str] = Field(min_length=1)
    timeout_hours: float = Field(default=72.0, gt=0)
    notify_emails: list[str] = Field(default_factory=list, description="Also e-mail these (needs smtp_default).")

    @field_validator("reviewers")
    @classmethod
    def _distinct_names(cls, reviewers: list[str]) -> list[str]:
        return _user_names(reviewers)


class Rollback(_Strict):
    on_call: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Airflow user names allowed to roll this model back; default: approval.reviewers.",
    )

    @field_validator("on_call")
    @classmethod
    def _distinct_names(cls, names: list[str] | None) -> list[str] | None:
        return None if names is None else _user_names(names)


class PostPromotion(_Strict):
    """The check after a promotion: the champion loaded as a server would, compared with what evaluate saw."""

    check: bool = Field(default=True, description="Run verify_in_production after every promotion.")
    auto_rollback: bool = Field(
        default=True, description="On a failed check, restore the version the promotion replaced (else: alert only)."
    )
    latency_ms_p95: float = Field(
        default=50.0, gt=0, le=60_000, description="Maximum 95th percentile of one single-row prediction, in ms."
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SHADOW_WAIT_SECONDS = 7 * 86400


def duration_seconds(value: Any) -> int:
    """``"15m"``, ``"2h"``, ``"1d"``, ``"90s"`` or a number of seconds, as whole seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '15m', '2h' or seconds as a number, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration like '15m', '2h' or seconds as a number, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SHADOW_WAIT_SECONDS):
        raise ValueError(f"must be more than 0 and at most 7 days, got {value!r}")
    return math.ceil(seconds)


class ShadowGates(_Strict):
    """Limits on the shadow comparison (champion vs challenger on the same live requests); each optional."""

    max_decision_change: float | None = Field(
        default=None, ge=0, le=1, description="Largest share of requests whose decision differs between the two."
    )
    max_flagged_rate_change: float | None = Field(
        default=None, ge=0, le=1, description="Largest absolute change of the share of requests flagged."
    )
    max_psi: float | None = Field(default=None, ge=0, le=100, description="Largest score-distribution shift (PSI).")
    max_latency_ms_p95: float | None = Field(
        default=None, gt=0, le=60_000, description="Largest serving-side p95 latency of the challenger, in ms."
    )


class Shadow(_Strict):
    """Shadow evaluation: the challenger scored on live traffic beside the champion before anyone approves it."""

    enabled: bool = False
    sample_rate: float = Field(default=1.0, gt=0, le=1, description="Share of requests the serving side shadows.")
    min_requests: int = Field(default=200, ge=1, le=10_000_000)
    max_wait: int = Field(default=1800, description="Duration ('30m', '2h', seconds); at most 7 days.")
    gates: ShadowGates = Field(default_factory=ShadowGates)
    replay_query: str | None = Field(
        default=None,
        min_length=1,
        description="SELECT (through the model's Postgres connection) returning the feature columns of recent "
        "production inputs: scored offline by both models when no prediction log is in use.",
    )

    @field_validator("max_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return duration_seconds(value)

    @field_validator("replay_query")
    @classmethod
    def _select_only(cls, query: str | None) -> str | None:
        if query is not None and not re.match(r"^\s*(SELECT|WITH)\b", query, re.IGNORECASE):
            raise ValueError("must be a SELECT (or WITH ... SELECT) returning the feature columns")
        return query


def _user_names(names: list[str]) -> list[str]:
    cleaned = [n.strip() for n in names]
    if any(not n for n in cleaned):
        raise ValueError("user names must be non-empty Airflow user names")
    if len(set(cleaned)) != len(cleaned):
        raise ValueError("user names must be distinct")
    return cleaned


_CONN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
MAX_DEPLOY_WEBHOOKS = 10


class DeployNotifications(_Strict):
    """Who hears that production changed (``include/promotion/notify/deploy_events.py``): Airflow connection ids only.

    The URLs and secrets live in the connections, never in this file.
    """

    webhook_conn_ids: list[str] = Field(
        default_factory=list,
        max_length=MAX_DEPLOY_WEBHOOKS,
        description="Connections (type http) whose host is the receiver's URL and whose password is the signing "
        "secret: each gets a signed event per production change.",
    )
    slack_conn_id: str | None = Field(
        default=None, description="A Slack incoming-webhook connection (type slackwebhook) to post a message to."
    )

    @field_validator("webhook_conn_ids")
    @classmethod
    def _distinct_ids(cls, ids: list[str]) -> list[str]:
        if len(set(ids)) != len(ids):
            raise ValueError("connection ids must be distinct")
        return [_conn_id(i) for i in ids]

    @field_validator("slack_conn_id")
    @classmethod
    def _slack_id(cls, conn_id: str | None) -> str | None:
        return None if conn_id is None else _conn_id(conn_id)


def _conn_id(conn_id: str) -> str:
    if not _CONN_ID.match(conn_id):
        raise ValueError(
            f"{conn_id!r} is not an Airflow connection id: use 1-100 letters, digits, '_', '.' or '-' (the URL and "
            "the secret belong in the connection, not here)"
        )
    return conn_id


class Alerts(_Strict):
    """Who hears on-call alerts: the registry differs from the audit log, a promotion did not hold its check, or
    deployers were not told of a production change (``include/promotion/notify/alerts.py``). Always in the task
    log too. Without this section, alerts go to ``approval.notify_emails`` (where they went before it existed)."""

    emails: list[str] | None = Field(
        default=None,
        max_length=50,
        description="E-mail these through Airflow's smtp_default (default: approval.notify_emails).",
    )
    slack_conn_id: str | None = Field(
        default=None, description="A Slack incoming-webhook connection (type slackwebhook) to post alerts to."
    )

    @field_validator("emails")
    @classmethod
    def _addresses(cls, emails: list[str] | None) -> list[str] | None:
        for address in emails or []:
            if not _EMAIL.match(address):
                raise ValueError(f"{address!r} is not an e-mail address (name@host)")
        return emails

    @field_validator("slack_conn_id")
    @classmethod
    def _slack_id(cls, conn_id: str | None) -> str | None:
        return None if conn_id is None else _conn_id(conn_id)


_EMAIL = re.compile(r"^[^@\s,;<>]{1,64}@[^@\s,;<>]{1,255}$")


class ModelConfig(_Strict):
    """One governed model. Field names are the YAML keys."""

    name: str
    description: str = ""
    owner: str = "ml-platform"
    schedule: str | None = "@weekly"
    tags: list[str] = Field(default_factory=list)
    data: DataSource
    target: str = Field(min_length=1)
    features: list[str] = Field(min_length=1)
    min_rows: int = Field(default=200, ge=20)
    holdout: Holdout = Field(default_factory=Holdout)
    estimator: Estimator
    gates: dict[Metric, float] = Field(min_length=1)
    champion_comparison: ChampionComparison = Field(default_factory=ChampionComparison)
    approval: Approval
    rollback: Rollback = Field(default_factory=Rollback)
    on_drift: Literal["alert", "restore"] = Field(
        default="alert",
        description="What the registry watch does when the registry differs from the audit log: record and alert, "
        "or also put the audited champion back.",
    )
    post_promotion: PostPromotion = Field(default_factory=PostPromotion)
    alerts: Alerts = Field(default_factory=Alerts)
    shadow: Shadow = Field(default_factory=Shadow)
    deploy_notifications: DeployNotifications = Field(
        default_factory=DeployNotifications,
        description="Signed webhooks and Slack told of every production change (promotion, rollback, automatic "
        "rollback).",
    )

    @field_validator("name")
    @classmethod
    def _registry_name(cls, name: str) -> str:
        if not _MODEL_NAME.match(name):
            raise ValueError("use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return name

    @field_validator("gates")
    @classmethod
    def _gate_range(cls, gates: dict[str, float]) -> dict[str, float]:
        for metric, minimum in gates.items():
            if not (isinstance(minimum, int | float) and math.isfinite(minimum) and 0.0 <= minimum <= 1.0):
                raise ValueError(f"gate '{metric}' must be a minimum between 0 and 1, got {minimum!r}")
        return gates

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> ModelConfig:
        if self.target in self.features:
            raise ValueError(f"target column '{self.target}' is also listed in features; remove it there")
        if len(set(self.features)) != len(self.features):
            raise ValueError("features must be distinct column names")
        if self.holdout.key in (*self.features, self.target):
            raise ValueError(
                f"holdout.key '{self.holdout.key}' is also a feature or the target; use a row id column that is "
                "neither (the key only decides which rows are held out)"
            )
        return self

    @property
    def dag_id(self) -> str:
        return dag_id_for(self.name)

    @property
    def rollback_on_call(self) -> list[str]:
        """Who may roll this model back: ``rollback.on_call``, else the reviewers."""
        return list(self.rollback.on_call or self.approval.reviewers)

    @property
    def alert_emails(self) -> list[str]:
        """Who is e-mailed on-call alerts: ``alerts.emails``, else ``approval.notify_emails``."""
        return list(self.alerts.emails if self.alerts.emails is not None else self.approval.notify_emails)

    @property
    def effective_schedule(self) -> str | None:
        """The schedule of the promotion DAG: ``PROMOTION_SCHEDULE_OVERRIDE`` if set, else ``schedule``."""
        overridden, schedule = settings.schedule_override()
        return schedule if overridden else self.schedule


def _field_hint(model: type[BaseModel], loc: tuple[Any, ...], bad_key: str) -> str:
    """Suggest the closest valid key for a misspelt one, walking ``loc`` through nested models."""
    current: Any = model
    for part in loc:
        info = getattr(current, "model_fields", {}).get(part) if isinstance(part, str) else None
        if info is None:
            break
        annotation = info.annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if current is None:
            break
    fields = []
    if current is not None and hasattr(current, "model_fields"):
        fields = [f.alias or name for name, f in current.model_fields.items()]
    close = difflib.get_close_matches(bad_key, fields, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; valid fields here: {', '.join(fields)}" if fields else ""


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path.name}: invalid model config ({exc.error_count()} problem(s)); fix the file:"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("postgres", "builtin")))
        where = ".".join(str(p) for p in loc) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown field '{loc[-1]}'" + _field_hint(ModelConfig, loc[:-1], str(loc[-1]))
        elif err["type"] == "missing":
            message = "required field is missing"
        lines.append(f"  - field '{where}': {message}")
    return "\n".join(lines)


# libyaml's parser (PyYAML's wheels ship it): about 15x faster than the pure-Python one on a model file (14 ms), with
# the same safe constructor, so the same YAML 1.1 types. The pure-Python loader where PyYAML was built without it.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_model_config(path: Path) -> ModelConfig:
    """Read and validate one model file; raise ``ModelConfigError`` naming the file and field."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"{path.name}: cannot be read ({exc}).") from exc
    return _validate_content(path, content)


def _validate_content(path: Path, content: bytes) -> ModelConfig:
    try:
        raw = yaml.load(content.decode("utf-8"), Loader=_YAML_LOADER)  # a safe loader either way
    except UnicodeDecodeError as exc:
        raise ModelConfigError(f"{path.name}: not UTF-8 text ({exc}); save the file as UTF-8.") from None
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{path.name}: not valid YAML ({exc}); fix the syntax.") from exc
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{path.name}: expected a mapping of fields at the top level, got {type(raw).__name__}.")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ModelConfigError(_format_validation_error(path, exc)) from None


@dataclass(frozen=True)
class LoadedConfigs:
    """Valid configs by model name, and one message per file that could not be used."""

    models: dict[str, ModelConfig] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


_cache: dict[Path, tuple[tuple[Any, ...], LoadedConfigs]] = {}


def load_model_configs(directory: Path | None = None) -> LoadedConfigs:
    """Load every ``*.yaml``/``*.yml`` file; a bad file is reported in ``errors`` and skipped.

    Two files that claim the same model (or the same DAG id) are both refused: neither can take over the
    other's DAG. Parsed once per content of the folder's files (the DAG files parsed in one process share the
    result; a task process parses only its own DAG file).
    """
    directory = (directory or settings.models_dir()).resolve()
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    files: dict[Path, tuple[bytes, str]] = {}
    unreadable: dict[str, str] = {}
    for path in paths:
        try:
            content = path.read_bytes()
        except OSError as exc:
            unreadable[path.name] = f"{path.name}: cannot be read ({exc})."
            continue
        files[path] = (content, hashlib.sha256(content).hexdigest())
    # by content, not modification time: an edit within the file system's time resolution is still an edit
    stamp = (tuple((p.name, digest) for p, (_, digest) in files.items()), tuple(unreadable.items()))
    cached = _cache.get(directory)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    parsed: dict[str, ModelConfig] = {}
    errors: dict[str, str] = dict(unreadable)
    for path, (content, _) in files.items():
        try:
            parsed[path.name] = _validate_content(path, content)
        except ModelConfigError as exc:
            errors[path.name] = str(exc)
    claims: dict[str, list[str]] = {}
    for file_name, cfg in parsed.items():
        claims.setdefault(cfg.dag_id, []).append(file_name)
    models: dict[str, ModelConfig] = {}
    for file_name, cfg in parsed.items():
        files = claims[cfg.dag_id]
        if len(files) > 1:
            names = sorted({parsed[f].name for f in files})
            errors[file_name] = (
                f"{file_name}: field 'name': model {' / '.join(repr(n) for n in names)} gives DAG id "
                f"'{cfg.dag_id}', also claimed by {', '.join(f for f in files if f != file_name)}; neither file is "
                "loaded until each model has a distinct name (a second file must never take over a model's DAG)."
            )
            continue
        models[cfg.name] = cfg
    loaded = LoadedConfigs(models=models, errors=errors)
    _cache[directory] = (stamp, loaded)
    return loaded


def get_model_config(model_name: str, directory: Path | None = None) -> ModelConfig:
    """The config of one model, or ``UnknownModel`` listing the names that exist."""
    loaded = load_model_configs(directory)
    if model_name not in loaded.models:
        known = ", ".join(sorted(loaded.models)) or "(none)"
        raise UnknownModel(
            f"unknown model '{model_name}': no valid config in {directory or settings.models_dir()} declares it. "
            f"Configured models: {known}."
        )
    return loaded.models[model_name]
