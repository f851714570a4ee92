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
from typing import Any, Literal, get_args

import yaml
from promotion_client.names import MODEL_NAME
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from include.promotion import settings
from include.promotion.assets import retrain_asset_name
from include.promotion.config_sections import (
    METRICS,
    Alerts,
    Approval,
    BuiltinSource,
    ChampionComparison,
    DataSource,
    DeployNotifications,
    Estimator,
    Health,
    Holdout,
    Metric,
    PostgresSource,
    PostPromotion,
    Retention,
    Rollback,
    Schedule,
    Shadow,
    _Strict,
    _user_names,
    duration_seconds,
    schedule_value,
)
from include.promotion.errors import ModelConfigError, UnknownModel

# the sections' names are part of this module's interface (``config.Metric``, ``config.DeployNotifications``...)
__all__ = [
    "METRICS",
    "BuiltinSource",
    "DeployNotifications",
    "LoadedConfigs",
    "Metric",
    "ModelConfig",
    "PostgresSource",
    "Schedule",
    "dag_id_for",
    "duration_seconds",
    "get_model_config",
    "load_model_configs",
    "parse_model_config",
]


def dag_id_for(model_name: str) -> str:
    """``model_promotion__<model name with non-alphanumerics as _>`` (a contract)."""
    return "model_promotion__" + re.sub(r"[^0-9A-Za-z]", "_", model_name)


class ModelConfig(_Strict):
    """One governed model. Field names are the YAML keys."""

    name: str
    description: str = ""
    owner: str = "ml-platform"
    team: list[str] = Field(
        default_factory=list,
        description="Airflow user names who may see and run this model's DAG (with the reviewers, on-call and "
        "owner); enforced by the FAB auth manager through access_control (include/promotion/access.py).",
    )
    schedule: Schedule = Field(
        default_factory=lambda: Schedule(cron="@weekly"),
        description="A cron or preset, null (manual runs only), or {cron, assets}: also run on each event of these "
        "Airflow Assets.",
    )
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
    health: Health | None = Field(
        default=None, description="Production health checks (model_health); without this section, none."
    )
    retention: Retention | None = Field(
        default=None,
        description="Registry retention (model_registry_retention); without this section, no version is ever deleted.",
    )
    deploy_notifications: DeployNotifications = Field(
        default_factory=DeployNotifications,
        description="Signed webhooks and Slack told of every production change (promotion, rollback, automatic "
        "rollback).",
    )

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        return schedule_value(value)

    @field_validator("name")
    @classmethod
    def _registry_name(cls, name: str) -> str:
        if not MODEL_NAME.match(name):
            raise ValueError("use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return name

    @field_validator("team")
    @classmethod
    def _team_names(cls, team: list[str]) -> list[str]:
        return _user_names(team)

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
    def team_members(self) -> list[str]:
        """Who may see and run this model's DAG: ``team``, the reviewers, on-call and the owner (sorted, distinct)."""
        return sorted({*self.team, *self.approval.reviewers, *self.rollback_on_call, self.owner})

    @property
    def alert_emails(self) -> list[str]:
        """Who is e-mailed on-call alerts: ``alerts.emails``, else ``approval.notify_emails``."""
        return list(self.alerts.emails if self.alerts.emails is not None else self.approval.notify_emails)

    @property
    def effective_schedule(self) -> str | None:
        """The promotion DAG's cron: ``PROMOTION_SCHEDULE_OVERRIDE`` if set, else ``schedule.cron``."""
        overridden, schedule = settings.schedule_override()
        return schedule if overridden else self.schedule.cron

    @property
    def schedule_assets(self) -> list[str]:
        """The Assets whose events start the promotion DAG: ``schedule.assets``, and the model's own retrain Asset
        when ``health.on_breach`` is ``retrain``. ``PROMOTION_SCHEDULE_OVERRIDE`` leaves them: an event is always
        something a pipeline or a person sent on purpose."""
        retrain = self.health is not None and self.health.on_breach == "retrain"
        return [*self.schedule.assets, *([retrain_asset_name(self.name)] if retrain else [])]


def _field_hint(model: type[BaseModel], loc: tuple[Any, ...], bad_key: str) -> str:
    """Suggest the closest valid key for a misspelt one, walking ``loc`` through nested models."""
    current: Any = model
    for part in loc:
        info = getattr(current, "model_fields", {}).get(part) if isinstance(part, str) else None
        if info is None:
            break
        # a section that may be absent (``Health | None``) is still that section
        candidates = (info.annotation, *get_args(info.annotation))
        current = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
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
_TAG = "tag:yaml.org,2002:"
# the scalars a model file has besides strings, built by the safe constructor's own functions (same YAML 1.1 rules)
_SCALARS = {f"{_TAG}{t}": yaml.SafeLoader.yaml_constructors[f"{_TAG}{t}"] for t in ("int", "float", "bool", "null")}


class _NotPlain(Exception):
    """The document uses something the fast path leaves to PyYAML's constructor (an alias, a merge key, a timestamp,
    a non-string key...)."""


def _plain_value(node: yaml.Node, loader: Any, seen: set[int]) -> Any:
    if id(node) in seen:  # an alias: PyYAML shares (and may nest) the object; let it do so
        raise _NotPlain
    seen.add(id(node))
    tag = node.tag
    if isinstance(node, yaml.ScalarNode):
        if tag == f"{_TAG}str":
            return node.value
        if tag in _SCALARS:
            return _SCALARS[tag](loader, node)
    elif isinstance(node, yaml.MappingNode) and tag == f"{_TAG}map":
        mapping = {}
        for key, value in node.value:
            if key.tag != f"{_TAG}str" or not isinstance(key, yaml.ScalarNode):  # '<<' (merge), numbers, nested keys
                raise _NotPlain
            mapping[key.value] = _plain_value(value, loader, seen)  # a repeated key: the last wins, as in PyYAML
        return mapping
    elif isinstance(node, yaml.SequenceNode) and tag == f"{_TAG}seq":
        return [_plain_value(item, loader, seen) for item in node.value]
    raise _NotPlain


def _load_yaml(text: str) -> Any:
    """``yaml.load(text, Loader=_YAML_LOADER)``, about 40% cheaper on a model file (0.3 ms instead of 0.5 ms; three
    DAG files read every config on each parse): libyaml composes the nodes with the safe loader's tag resolution, and
    a document of plain mappings, sequences, strings, numbers, booleans and nulls is built directly; anything else
    goes through PyYAML's safe constructor unchanged. The same values, the same errors."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            return _plain_value(node, loader, set())
        except _NotPlain:
            return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_model_config(path: Path) -> ModelConfig:
    """Read and validate one model file; raise ``ModelConfigError`` naming the file and field."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"{path.name}: cannot be read ({exc}).") from exc
    return _validate_content(path, content)


def _validate_content(path: Path, content: bytes) -> ModelConfig:
    try:
        raw = _load_yaml(content.decode("utf-8"))  # a safe loader either way
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
