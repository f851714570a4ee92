"""The sections of a model config file (``include/models/<name>.yaml``), each a strict pydantic model.

``config`` assembles them into ``ModelConfig`` and loads the files; imported at DAG parse time, so pydantic only.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

Metric = Literal["roc_auc", "f1", "average_precision", "precision", "recall"]
METRICS: tuple[str, ...] = get_args(Metric)


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
        return _select(query, "the feature columns")


class Health(_Strict):
    """Production health (``model_health``): the champion's logged live predictions judged against the labels that
    arrived, its inputs and scores against its training run's reference distribution, and its traffic volume."""

    conn_id: str = Field(default="promotion_db", description="The Airflow connection labels_query runs through.")
    labels_query: str | None = Field(
        default=None,
        min_length=1,
        description="SELECT returning the columns request_id and label (1 = positive) of live requests whose true "
        "outcome is known; default: every row of PROMOTION_LABELS_TABLE (the demo's demo.labels).",
    )
    window: int = Field(default=86400, description="Duration judged, back from each check ('24h', '90m', seconds).")
    min_labels: int = Field(
        default=100, ge=1, le=10_000_000, description="Fewer labelled predictions in the window: metrics not judged."
    )
    min_predictions: int = Field(
        default=1, ge=0, le=100_000_000, description="Fewer champion predictions in the window is a finding (volume)."
    )
    min_roc_auc: float | None = Field(default=None, ge=0, le=1)
    min_average_precision: float | None = Field(default=None, ge=0, le=1)
    min_recall: float | None = Field(default=None, ge=0, le=1)
    min_precision: float | None = Field(default=None, ge=0, le=1)
    min_f1: float | None = Field(default=None, ge=0, le=1)
    max_psi: float | None = Field(
        default=0.25, ge=0, le=100, description="Largest PSI of any input feature, or of the scores, vs the reference."
    )
    on_breach: Literal["alert", "rollback", "retrain"] = Field(
        default="alert",
        description="After alerting: restore the previous champion, or start a retraining run (an Asset event).",
    )

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return duration_seconds(value)

    @field_validator("conn_id")
    @classmethod
    def _conn(cls, conn_id: str) -> str:
        return _conn_id(conn_id)

    @field_validator("labels_query")
    @classmethod
    def _select_only(cls, query: str | None) -> str | None:
        query = _select(query, "the columns request_id and label")
        if query is not None and ";" in query.strip().rstrip(";"):
            raise ValueError("must be one statement (no ';' inside)")
        return None if query is None else query.strip().rstrip(";")

    def minimums(self, gates: dict[str, float]) -> dict[str, float]:
        """The live metrics' minimums: ``min_<metric>`` where set, else the model's offline gate of that metric."""
        mins = {m: v for m in METRICS if (v := getattr(self, f"min_{m}")) is not None}
        return {**{m: v for m, v in gates.items() if m not in mins}, **mins}


MAX_RETENTION_DAYS = 36_500  # a hundred years: anything longer is a typo


class Retention(_Strict):
    """Registry retention (``model_registry_retention``): which old versions of the model are deleted (or archived).

    Never touched: the champion, the challenger, any version holding an alias, a version awaiting approval or
    registered by a promotion run still open, the target of an open rollback run, the version a rollback without a
    target would restore, every version that served in production within ``keep_served_days``, the newest
    ``keep_last`` versions, and every version younger than ``keep_days``.
    """

    mode: Literal["dry_run", "enforce"] = Field(
        default="dry_run", description="dry_run: only report what would be done; enforce: do it."
    )
    action: Literal["delete", "archive"] = Field(
        default="delete",
        description="delete: the version (and its logged model, where MLflow lets the pipeline); archive: only move "
        "it to the Archived stage, recorded.",
    )
    keep_last: int = Field(default=20, description="The newest versions always kept (at least 1).")
    keep_days: float = Field(default=30, description="Versions younger than this (days since registration) are kept.")
    keep_served_days: float = Field(
        default=365, description="A version that served in production is kept this long after it stopped serving."
    )
    max_per_run: int = Field(
        default=1000, ge=1, le=100_000, description="At most this many versions deleted or archived per run."
    )

    @field_validator("keep_last")
    @classmethod
    def _keep_some(cls, keep_last: int) -> int:
        if keep_last < 1:
            raise ValueError(
                f"keep_last is {keep_last}: even the newest version (the one a promotion run just registered) could be "
                "deleted; set it to 1 or more (default 20)"
            )
        if keep_last > 1_000_000:
            raise ValueError(f"keep_last is {keep_last}: at most 1,000,000")
        return keep_last

    @field_validator("keep_days", "keep_served_days")
    @classmethod
    def _days(cls, days: float) -> float:
        if not (math.isfinite(days) and 0 <= days <= MAX_RETENTION_DAYS):
            raise ValueError(f"must be a number of days from 0 to {MAX_RETENTION_DAYS}, got {days!r}")
        return days

    @field_validator("keep_served_days")
    @classmethod
    def _keep_served(cls, days: float) -> float:
        if days < 1:
            raise ValueError(
                f"keep_served_days is {days:g}: every version that served in production (the rollback targets) would "
                "be deleted as soon as it stopped serving; set it to 1 day or more (default 365)"
            )
        return days


MAX_SCHEDULE_ASSETS = 10
RESERVED_ASSET_PREFIX = "model-retrain/"  # include.promotion.assets.retrain_asset_name: added by health.on_breach
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$")


class Schedule(_Strict):
    """When the promotion DAG runs: a cron (or preset), and/or each event of the named Airflow Assets.

    In YAML ``schedule: "@weekly"`` (a cron only), ``schedule: null`` (manual runs only) or a mapping
    ``schedule: {cron: "@weekly", assets: [demo-labelled-transactions]}``.
    """

    cron: str | None = Field(
        default=None, min_length=1, description="A cron expression or preset ('@weekly'); null: no time schedule."
    )
    assets: list[str] = Field(
        default_factory=list,
        max_length=MAX_SCHEDULE_ASSETS,
        description="Names of Airflow Assets (Asset('<name>')): an event on any of them starts a run.",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str | None) -> str | None:
        if cron is not None and cron.strip() in ("@once", "@continuous"):
            raise ValueError(f"'{cron.strip()}' is not a repeating schedule; use a cron like '@weekly', or null")
        return None if cron is None else cron.strip()

    @field_validator("assets")
    @classmethod
    def _asset_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not isinstance(name, str) or not _ASSET_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not an asset name: use 1-200 letters, digits, '_', '.', '-' or '/', starting with a "
                    "letter or digit (the name an upstream task declares as outlets=[Asset('<name>')])"
                )
            if name.startswith(RESERVED_ASSET_PREFIX):
                raise ValueError(
                    f"{name!r}: names starting with '{RESERVED_ASSET_PREFIX}' are the models' retrain Assets; set "
                    "health.on_breach: retrain to listen to this model's own"
                )
        if len(set(names)) != len(names):
            raise ValueError("asset names must be distinct")
        return names


def schedule_value(value: Any) -> Any:
    """``ModelConfig.schedule`` as YAML writes it (a cron string, null or a mapping) as a ``Schedule`` mapping."""
    if value is None or isinstance(value, str):
        return {"cron": value.strip() if isinstance(value, str) and value.strip() else None}
    if isinstance(value, dict | Schedule):
        return value
    raise ValueError(
        f"expected a cron string ('@weekly'), null (manual runs only) or a mapping "
        f"{{cron: '@weekly', assets: [<asset name>, ...]}}, got {type(value).__name__} {value!r}"
    )


def _select(query: str | None, returning: str) -> str | None:
    """``query`` when it is a SELECT (or WITH ... SELECT); else what it must be, saying what it returns."""
    if query is not None and not re.match(r"^\s*(SELECT|WITH)\b", query, re.IGNORECASE):
        raise ValueError(f"must be a SELECT (or WITH ... SELECT) returning {returning}")
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
