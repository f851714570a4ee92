"""Per-model configuration: one ``include/models/<name>.yaml`` per governed model.

This module is imported at DAG parse time, so it stays light: pydantic and yaml only.
A malformed file raises ``ModelConfigError`` naming the file, the field and the fix;
``load_model_configs`` collects those errors so one broken file never hides the other models.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from include.promotion import settings
from include.promotion.errors import ModelConfigError, UnknownModel

METRICS = ("roc_auc", "f1", "average_precision", "precision", "recall")
Metric = Literal["roc_auc", "f1", "average_precision", "precision", "recall"]
BUILTIN_DATASETS = ("synthetic_transactions", "breast_cancer")
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
        cleaned = [r.strip() for r in reviewers]
        if any(not r for r in cleaned):
            raise ValueError("reviewer names must be non-empty Airflow user names")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("reviewer names must be distinct")
        return cleaned


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


def parse_model_config(path: Path) -> ModelConfig:
    """Read and validate one model file; raise ``ModelConfigError`` naming the file and field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelConfigError(f"{path.name}: not valid YAML ({exc}); fix the syntax.") from exc
    except OSError as exc:
        raise ModelConfigError(f"{path.name}: cannot be read ({exc}).") from exc
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


def load_model_configs(directory: Path | None = None) -> LoadedConfigs:
    """Load every ``*.yaml``/``*.yml`` file; a bad file is reported in ``errors`` and skipped."""
    directory = directory or settings.models_dir()
    models: dict[str, ModelConfig] = {}
    errors: dict[str, str] = {}
    dag_ids: dict[str, str] = {}
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for path in paths:
        try:
            cfg = parse_model_config(path)
        except ModelConfigError as exc:
            errors[path.name] = str(exc)
            continue
        if cfg.name in models or cfg.dag_id in dag_ids:
            other = dag_ids.get(cfg.dag_id, "another file")
            errors[path.name] = (
                f"{path.name}: field 'name': model '{cfg.name}' gives DAG id '{cfg.dag_id}', already used by "
                f"{other}; give each model a distinct name."
            )
            continue
        models[cfg.name] = cfg
        dag_ids[cfg.dag_id] = path.name
    return LoadedConfigs(models=models, errors=errors)


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
