"""What ``shadow_evaluate`` decides: whether to wait longer, what the evidence is, and whether it passes the gates.

Sources of evidence, in order: **live** (the prediction log is in use for the model: wait until ``min_requests``
shadow predictions of this very version were logged, or ``max_wait`` passed since the version was staged, as the
audit log records it), **replay** (no live shadow predictions but a ``replay_query``: both versions score those
inputs offline, and the evidence says so), or **none** (nothing to compare; the gates do not apply). A disabled
section, or no champion to compare with, is a result too, never a skip.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from include.promotion import settings
from include.promotion.audit.schema import AUDIT_TABLE, DEFAULT_CONN_ID, connect
from include.promotion.config import ModelConfig
from include.promotion.errors import RegistryStateError, ShadowEvidenceError
from include.promotion.shadow import metrics, queries
from include.promotion.states import AuditAction

log = logging.getLogger(__name__)

REPLAY_ROWS = 10_000  # inputs of the replay query scored, at most
THRESHOLD = 0.5  # the decision threshold the pipeline scores with (``evaluation.score``)
LIVE, REPLAY, NONE, DISABLED = "live", "replay", "none", "disabled"


def staged_at(conn: Any, model: str, version: str) -> datetime:
    """When ``version`` became the challenger: its latest ``stage`` audit row (no tag anyone could edit)."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT max(created_at) FROM {AUDIT_TABLE} WHERE model_name = %s AND version = %s AND action = %s",
            (model, str(version), AuditAction.STAGE.value),
        )
        found = cur.fetchone()[0]
    if found is None:
        raise RegistryStateError(f"{model} v{version} has no 'stage' row in the audit log; it was never staged here.")
    return found


def result(cfg: ModelConfig, version: str, source: str, note: str, **extra: Any) -> dict[str, Any]:
    """A result with no figures (or the ones given), gates judged on them."""
    out: dict[str, Any] = {
        "model_name": cfg.name,
        "version": str(version),
        "source": source,
        "note": note,
        "figures": {},
        "live_metrics": None,
        "window": None,
        "champion_version": None,
        **extra,
    }
    gates = cfg.shadow.gates.model_dump() if source in (LIVE, REPLAY) else {}
    out["gates"] = metrics.judge(out["figures"], gates)
    out["reasons"] = metrics.failed_reasons(out["gates"])
    out["passed"] = not out["reasons"]
    return out


def poke(cfg: ModelConfig, version: str, champion: str | None, now: datetime | None = None) -> dict[str, Any] | None:
    """The evidence when it is complete; None while the live log should be waited for."""
    shadow = cfg.shadow
    if not shadow.enabled:
        return result(cfg, version, DISABLED, "shadow evaluation is off for this model (shadow.enabled: false)")
    if champion is None:
        return result(cfg, version, NONE, "no shadow evidence: there is no champion serving traffic to compare with")
    now = now or datetime.now(UTC)
    conn = connect(DEFAULT_CONN_ID)
    try:
        since = staged_at(conn, cfg.name, version)
        if queries.in_use(conn, cfg.name, now):
            deadline = since + timedelta(seconds=shadow.max_wait)
            logged_before = queries.log_cutoff(conn)
            if logged_before is None:
                held = queries.CUTOFF_LOCK_TIMEOUT_MS / 1000
                log.warning(
                    "%s v%s: an insert held the prediction log for %g s; looking again", cfg.name, version, held
                )
                return None
            window = queries.Window(cfg.name, version, since, now, logged_before)
            logged = queries.shadow_count(conn, window, shadow.min_requests)
            if logged < shadow.min_requests and now < deadline:
                log.info(
                    "%s v%s: %d of %d shadow predictions logged; waiting until %s at the latest",
                    cfg.name,
                    version,
                    logged,
                    shadow.min_requests,
                    deadline.isoformat(timespec="seconds"),
                )
                return None
            if logged:
                return live(conn, cfg, window)
    finally:
        conn.close()
    if shadow.replay_query:
        return replay(cfg, version, champion)
    return result(
        cfg,
        version,
        NONE,
        "no shadow evidence: no shadow predictions of this version were logged and no "
        "shadow.replay_query is configured",
    )


def live(conn: Any, cfg: ModelConfig, window: queries.Window) -> dict[str, Any]:
    """The live comparison over ``window``: SQL aggregates, then PSI and the live metrics on bounded samples."""
    figures = queries.paired_figures(conn, window)
    champion_scores, shadow_scores = queries.score_sample(conn, window)
    figures["psi"] = metrics.psi(champion_scores, shadow_scores) if champion_scores else None
    labelled = queries.labelled_pairs(conn, settings.labels_table(), window)
    live_metrics = None
    if labelled:
        labels = [r[0] for r in labelled]
        live_metrics = {
            "champion": metrics.live_metrics(labels, [r[1] for r in labelled], [r[2] for r in labelled]),
            "shadow": metrics.live_metrics(labels, [r[3] for r in labelled], [r[4] for r in labelled]),
        }
    # full precision: the window is the record of exactly which rows were compared (shown to the second)
    recorded = {"since": window.since.isoformat(), "until": window.until.isoformat()}
    if window.logged_before is not None:
        recorded["logged_before"] = window.logged_before.isoformat()
    note = f"live traffic: {figures['n']} requests scored by both models"
    if figures["n"] == 0:
        note = "no shadow evidence: shadow predictions were logged, but none of their requests has a champion row"
        return result(cfg, window.version, NONE, note, window=recorded, figures=figures)
    if figures["n"] < cfg.shadow.min_requests:
        note += f" (fewer than shadow.min_requests = {cfg.shadow.min_requests}: max_wait passed)"
    versions = figures["champion_versions"]
    return result(
        cfg,
        window.version,
        LIVE,
        note,
        window=recorded,
        figures=figures,
        live_metrics=live_metrics,
        champion_version=versions[-1] if len(versions) == 1 else ", ".join(versions) or None,
    )


def replay(cfg: ModelConfig, version: str, champion: str) -> dict[str, Any]:
    """Both versions score the replay query's inputs offline (loaded through MLflow as ``evaluate`` loads them)."""
    import mlflow.sklearn
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn_id = getattr(cfg.data, "conn_id", DEFAULT_CONN_ID)
    query = f"SELECT * FROM ({cfg.shadow.replay_query.rstrip().rstrip(';')}) AS replay LIMIT {REPLAY_ROWS}"
    try:
        frame = PostgresHook(postgres_conn_id=conn_id).get_df(query)
    except Exception as exc:  # a query of the config: say which key to fix
        raise ShadowEvidenceError(f"{cfg.name}: shadow.replay_query failed on connection '{conn_id}': {exc}") from exc
    if missing := [f for f in cfg.features if f not in frame.columns]:
        raise ShadowEvidenceError(
            f"{cfg.name}: shadow.replay_query returns no column {', '.join(missing)}; it must return the features "
            f"{', '.join(cfg.features)}"
        )
    if frame.empty:
        return result(cfg, version, NONE, "no shadow evidence: shadow.replay_query returned no rows")
    inputs = frame[cfg.features]
    c_scores = mlflow.sklearn.load_model(f"models:/{cfg.name}/{champion}").predict_proba(inputs)[:, 1]
    s_scores = mlflow.sklearn.load_model(f"models:/{cfg.name}/{version}").predict_proba(inputs)[:, 1]
    figures = metrics.comparison(list(zip(c_scores >= THRESHOLD, s_scores >= THRESHOLD, strict=True)))
    figures["psi"] = metrics.psi(c_scores, s_scores)
    note = f"replayed offline, not live traffic: {len(inputs)} inputs of shadow.replay_query scored by both models"
    return result(cfg, version, REPLAY, note, figures=figures, champion_version=str(champion))


def metric_values(evidence: dict[str, Any]) -> dict[str, float]:
    """The figures as ``shadow_*`` MLflow metrics (finite numbers only)."""
    values: dict[str, Any] = {f"shadow_{k}": v for k, v in evidence["figures"].items()}
    for side, figures in (evidence.get("live_metrics") or {}).items():
        values.update({f"shadow_live_{side}_{k}": v for k, v in figures.items()})
    values["shadow_flagged_rate"] = values.pop("shadow_shadow_flagged_rate", None)
    for key in ("shadow_shadow_latency_ms_p50", "shadow_shadow_latency_ms_p95"):
        values[key.replace("shadow_shadow_", "shadow_")] = values.pop(key, None)
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
