"""The post-promotion check: the new champion, loaded as a serving client would load it, does what evaluate saw.

After ``promote_to_production``, ``verify_in_production`` starts a fresh interpreter
(``python -m include.promotion.post_promotion.check``) that loads ``models:/<name>@champion`` through the serving
loader (``promotion_client.ChampionCache``, into an empty cache dir), checks its input signature against the evaluation
data, predicts the fixed holdout sample that ``evaluate`` logged to the version's MLflow run and times single-row
predictions; it prints its measurements as JSON. This process judges them against the model's
``post_promotion`` config. Any failure rolls back to the version the promotion replaced through the rollback
DAG's own code (``rollback.plan_rollback`` + ``rollback.rollback`` under the model's lock; actor
``post-promotion-check``, audit action ``post_check_rollback``), alerts, and fails the task.

What the check trusts: the version this run promoted and the one it replaced come from this run's audit rows;
the expected probabilities from the run the registry recorded for the version (``ModelVersion.run_id``), checked
against the digest ``evaluate`` logged there as a param (which MLflow never lets anyone change). Never an XCom or
a version tag.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.promotion.post_promotion.outcome import Promotion
from include.promotion.states import CHAMPION_ALIAS, AuditAction, Stage, Tag

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from include.promotion.airflow_run import RunRef
    from include.promotion.config import ModelConfig
    from include.promotion.registry.lifecycle import Change

# The fresh interpreter imports this module, ``states`` and the serving client only: like a serving process, it has no
# Airflow (inside a task, Airflow's environment would not even let it import Airflow). The task side imports the rest
# of the package inside its functions.

log = logging.getLogger(__name__)

CHECK_ACTOR = "post-promotion-check"
# The fixed holdout sample the check predicts again: the first rows of the holdout in its canonical order, their
# features and the probabilities the candidate gave them, logged by evaluate to the candidate's run
# (``evaluation.log_holdout_sample``). Its SHA-256 is a run param: MLflow refuses to change a logged param, so whoever
# can overwrite the run's artifacts still cannot make the check compare with other numbers.
SAMPLE_ROWS = 200
SAMPLE_ARTIFACT = "post_promotion/holdout_sample.parquet"
SAMPLE_DIGEST_PARAM = "post_promotion_sample_sha256"
EXPECTED_COLUMN = "__expected_probability__"
MAX_ABS_DIFF = 1e-9  # the loaded champion must give the probabilities evaluate logged, to floating-point noise
LATENCY_PREDICTIONS = 100  # single-row predictions timed for the p95
CHECK_TIMEOUT = 600.0  # seconds the fresh interpreter may take (loading, 200 rows, the timed predictions)
RESULT_MARKER = "POST_PROMOTION_RESULT "  # the line of the child's stdout that carries its JSON
REPO_ROOT = Path(__file__).resolve().parents[3]


# -- the fresh interpreter: measure ------------------------------------------------------------------------------
def measure(model_name: str, sample_path: Path, cache_dir: Path, predictions: int = LATENCY_PREDICTIONS) -> dict:
    """Load ``@champion`` through the serving loader and measure it on the sample. Run in a fresh interpreter."""
    started = time.perf_counter()
    import mlflow  # noqa: F401  (imported by the loader anyway: timed apart from loading the model)
    import numpy as np
    import pandas as pd
    import skops.io  # noqa: F401
    from promotion_client import ChampionCache

    result: dict[str, Any] = {"model_name": model_name, "import_seconds": round(time.perf_counter() - started, 3)}
    started = time.perf_counter()
    cache = ChampionCache(model_name, cache_dir, alias=CHAMPION_ALIAS, poll_interval=None)
    try:
        result["version"] = str(cache.load())
    except Exception as exc:  # whatever breaks loading is what a serving process would hit: report it
        result["error"] = f"the champion could not be loaded: {type(exc).__name__}: {exc}"
        return result
    result["load_seconds"] = round(time.perf_counter() - started, 3)
    sample = pd.read_parquet(sample_path)
    expected = sample.pop(EXPECTED_COLUMN).to_numpy(dtype=float)
    try:
        result["signature"] = signature_problem(cache, sample)
        proba = np.asarray(cache.predict_proba(sample), dtype=float).reshape(-1)
        if proba.shape != expected.shape:
            raise ValueError(f"{proba.shape[0]} probabilities for {expected.shape[0]} rows")
        diff = float(np.max(np.abs(proba - expected)))
        result["max_abs_diff"] = diff if np.isfinite(diff) else None
        result["rows"] = len(sample)
        cache.predict_proba(sample.iloc[[0]])  # warm-up: the first call may build caches
        timings = []
        for i in range(predictions):
            row = sample.iloc[[i % len(sample)]]
            t0 = time.perf_counter()
            cache.predict_proba(row)
            timings.append((time.perf_counter() - t0) * 1000)
    except Exception as exc:
        result["error"] = f"the champion could not predict the evaluation sample: {type(exc).__name__}: {exc}"
        return result
    result["predictions"] = predictions
    result["latency_ms_p95"] = round(float(np.percentile(timings, 95)), 3)
    result["latency_ms_median"] = round(statistics.median(timings), 3)
    return result


def signature_problem(cache: Any, sample: pd.DataFrame) -> str | None:
    """None if the served model's input signature (logged with it, read from the loader's local copy) has the
    evaluation data's columns and types, else what differs."""
    from mlflow.models import infer_signature

    signature = cache.signature
    schema = signature.inputs if signature is not None else None
    if schema is None:
        return "the model served has no input signature"
    expected = infer_signature(sample).inputs
    got = list(zip(schema.input_names(), map(str, schema.input_types()), strict=False))
    want = list(zip(expected.input_names(), map(str, expected.input_types()), strict=False))
    if got != want:
        return f"input signature {got} differs from the evaluation data {want}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure @champion as a serving client loads it (prints JSON).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--sample", required=True, type=Path)
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--predictions", type=int, default=LATENCY_PREDICTIONS)
    args = parser.parse_args(argv)
    result = measure(args.model, args.sample, args.cache_dir, args.predictions)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


# -- the task: judge, roll back, alert ---------------------------------------------------------------------------
def promotion_of(model_name: str, run: RunRef) -> tuple[Promotion, list[dict[str, Any]]]:
    """What this run promoted, and any ``post_check_rollback`` rows it already wrote (from the audit log alone)."""
    from include.promotion.audit import log as audit
    from include.promotion.errors import RegistryStateError

    mine = [r for r in audit.rows(model_name) if r["dag_id"] == run.dag_id and r["run_id"] == run.run_id]
    promoted = [r for r in mine if r["action"] == AuditAction.PROMOTE]
    if not promoted:
        raise RegistryStateError(
            f"run {run.run_id} recorded no promotion of '{model_name}' in the audit log, so there is nothing to "
            "check; verify_in_production runs only after promote_to_production succeeded."
        )
    version = str(promoted[-1]["version"])
    archived = [str(r["version"]) for r in mine if r["action"] == AuditAction.ARCHIVE and str(r["version"]) != version]
    checked = [r for r in mine if r["action"] == AuditAction.POST_CHECK_ROLLBACK]
    return Promotion(model_name, version, archived[-1] if archived else None), checked


def expected_sample(client: MlflowClient, model_name: str, version: str, into: Path) -> Path:
    """The sample evaluate logged to the version's own run, refused unless it matches the digest logged with it."""
    import hashlib

    from include.promotion.registry.lifecycle import require_version

    mv = require_version(client, model_name, version)
    if not mv.run_id:
        raise ValueError(f"v{version} was not registered from an MLflow run, so no evaluation sample exists for it")
    digest = client.get_run(mv.run_id).data.params.get(SAMPLE_DIGEST_PARAM)
    if not digest:
        raise ValueError(f"the run {mv.run_id} of v{version} has no evaluation sample (param {SAMPLE_DIGEST_PARAM})")
    path = Path(client.download_artifacts(mv.run_id, SAMPLE_ARTIFACT, str(into)))
    if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise ValueError(
            f"the evaluation sample of v{version} (run {mv.run_id}, {SAMPLE_ARTIFACT}) was changed after evaluate "
            "logged it: its SHA-256 no longer matches the run's param"
        )
    return path


def run_fresh_interpreter(model_name: str, sample: Path, workdir: Path, timeout: float = CHECK_TIMEOUT) -> dict:
    """``python -m include.promotion.post_promotion.check`` with an empty cache dir: its JSON, or what it died of."""
    cache_dir = workdir / "champion-cache"
    cache_dir.mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "include.promotion.post_promotion.check", "--model", model_name]
    command += ["--sample", str(sample), "--cache-dir", str(cache_dir)]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"loading and predicting took over {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line.removeprefix(RESULT_MARKER))
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    return {"error": f"the fresh interpreter exited with {done.returncode} without a result: {tail}"}


def failures_of(result: dict[str, Any], cfg: ModelConfig) -> list[str]:
    """What failed, one sentence each (empty: the check passed)."""
    if result.get("error"):
        return [result["error"]]
    failed = []
    if result.get("signature"):
        failed.append(result["signature"])
    diff = result.get("max_abs_diff")
    if diff is None or diff > MAX_ABS_DIFF:
        shown = "not a number" if diff is None else f"{diff:.3g}"
        failed.append(
            f"its probabilities on the {result.get('rows', '?')} holdout rows differ from the ones evaluate logged by "
            f"up to {shown} (allowed {MAX_ABS_DIFF:g}): the model served is not the model evaluated"
        )
    p95, limit = result.get("latency_ms_p95"), cfg.post_promotion.latency_ms_p95
    if p95 is None or p95 > limit:
        where = result.get("latency_source", "worker")
        failed.append(
            f"single-row prediction p95 {p95} ms is over post_promotion.latency_ms_p95 = {limit:g} ms "
            f"(measured: {where})"
        )
    return failed


def worth_a_second_look(result: dict[str, Any], cfg: ModelConfig) -> bool:
    """A load error (a network blip?) or a latency breach alone (a busy worker?) is measured again before it is
    judged; a model that predicts differently or has another signature is not: that does not come and go."""
    if result.get("error"):
        return True
    p95 = result.get("latency_ms_p95")
    slow = p95 is None or p95 > cfg.post_promotion.latency_ms_p95
    return slow and len(failures_of(result, cfg)) == 1


def verify_in_production(cfg: ModelConfig, run: RunRef) -> dict[str, Any]:
    """The check, its rollback and its alert; returns the measurements, raises ``PostPromotionCheckFailed``."""
    from include.promotion.errors import PostPromotionCheckFailed
    from include.promotion.post_promotion import outcome
    from include.promotion.registry import client as mlflow_client
    from include.promotion.registry.lifecycle import Change, require_version

    name = cfg.name
    if not cfg.post_promotion.check:
        log.info("%s: the post-promotion check is off (post_promotion.check: false); nothing checked", name)
        return {"model_name": name, "checked": False}
    promotion, already = promotion_of(name, run)
    change = Change.by(run, CHECK_ACTOR)
    if already:  # a retry after this check rolled back: never a second rollback
        restored = next((str(r["version"]) for r in already if r["to_stage"] == Stage.PRODUCTION), "?")
        raise PostPromotionCheckFailed(
            f"{name} v{promotion.version} failed its post-promotion check in this run and was rolled back to "
            f"v{restored} ({already[0]['reason']}); see the audit log. Nothing more was changed."
        )
    client = mlflow_client.client()
    promoted = require_version(client, name, promotion.version)
    if promoted.tags.get(Tag.ROLLBACK_CHANGE) == change.change_id:  # this check crashed half-way through its rollback
        _fail(
            cfg, promotion, [promoted.tags.get(Tag.ROLLBACK_REASON) or "the post-promotion check failed"], change, True
        )
    champion = mlflow_client.get_alias(client, name, CHAMPION_ALIAS)
    if champion is None or str(champion.version) != promotion.version:
        _moved(cfg, promotion, str(champion.version) if champion is not None else None, change)
    with tempfile.TemporaryDirectory(prefix="post-promotion-") as tmp:
        try:
            sample = expected_sample(client, name, promotion.version, Path(tmp))
        except ValueError as exc:
            _fail(cfg, promotion, [str(exc)], change)
        started = time.perf_counter()
        result = run_fresh_interpreter(name, sample, Path(tmp, "first"))
        if worth_a_second_look(result, cfg):  # a network blip or a busy worker must not roll back a good model
            log.warning("%s v%s: %s; measuring once more before judging", name, promotion.version, result)
            result = run_fresh_interpreter(name, sample, Path(tmp, "again"))
    result["check_seconds"] = round(time.perf_counter() - started, 3)
    _serving_latency(name, promotion.version, result)
    loaded = result.get("version")
    if loaded is not None and loaded != promotion.version:
        _moved(cfg, promotion, loaded, change)
    if failed := failures_of(result, cfg):
        log.error("%s v%s: post-promotion measurements %s", name, promotion.version, json.dumps(result))
        _fail(cfg, promotion, failed, change)
    passed = (
        f"loaded in {result['load_seconds']:.2f} s through the serving loader, {result['rows']} holdout "
        f"probabilities within {MAX_ABS_DIFF:g} of evaluate's (max {result['max_abs_diff']:.3g}), single-row p95 "
        f"{result['latency_ms_p95']:.2f} ms (limit {cfg.post_promotion.latency_ms_p95:g} ms; "
        f"{result['latency_source']})"
    )
    outcome.record_outcome(promotion, change, AuditAction.POST_CHECK_PASSED, f"passed: {passed}")
    log.info("%s v%s passed its post-promotion check: %s", name, promotion.version, passed)
    return {**result, "checked": True, "passed": True}


SERVING_LATENCY_MIN_ROWS = 50  # champion predictions of the version in the last hour, for the serving-side p95
SERVING_LATENCY_WINDOW_SECONDS = 3600


def _serving_latency(name: str, version: str, result: dict[str, Any]) -> None:
    """Judge latency where the model serves: the p95 of ``latency_ms`` in the prediction log (role champion, this
    version, the last hour, at least ``SERVING_LATENCY_MIN_ROWS`` rows) replaces the worker's figure when it exists
    (a busy worker must not roll back a good model); ``latency_source`` says which one was judged."""
    from datetime import UTC, datetime, timedelta

    from include.promotion.audit.schema import connect
    from include.promotion.shadow import queries

    result["latency_source"] = "worker"
    since = datetime.now(UTC) - timedelta(seconds=SERVING_LATENCY_WINDOW_SECONDS)
    try:
        conn = connect()
        try:
            p95, rows = queries.serving_latency(conn, name, version, since)
        finally:
            conn.close()
    except Exception:  # the worker's own measurement stands
        log.warning(
            "%s v%s: could not read the serving-side latency; judging the worker's", name, version, exc_info=True
        )
        return
    if p95 is not None and rows >= SERVING_LATENCY_MIN_ROWS:
        result["worker_latency_ms_p95"] = result.get("latency_ms_p95")
        result["latency_ms_p95"] = round(float(p95), 3)
        result["latency_source"] = f"serving (prediction_log: {rows} champion predictions in the last hour)"
    log.info("%s v%s: latency judged from %s", name, version, result["latency_source"])


def check_outcome_recorded(cfg: ModelConfig, change: Change, run: RunRef | None = None, grace: float = 0.0) -> None:
    """Handle a promotion without a check outcome as a failed check (alert; roll back when configured): ``run``'s
    own, or (the watch) the champion's, once ``grace`` minutes passed (``outcome.unchecked``). Raises
    ``PostPromotionCheckFailed``."""
    from include.promotion.post_promotion import outcome

    if found := outcome.unchecked(cfg, run, grace):
        _fail(cfg, found[0], [found[1]], change)


def _moved(cfg: ModelConfig, promotion: Promotion, holder: str | None, change: Change) -> None:
    """Someone else moved ``champion`` since this run promoted: alert and fail, never undo their change."""
    from include.promotion.errors import PostPromotionCheckFailed
    from include.promotion.notify import alerts as notifiers
    from include.promotion.post_promotion import outcome

    now = f"v{holder}" if holder else "no version"
    message = (
        f"{cfg.name}: this run promoted v{promotion.version}, but 'champion' now points at {now}: someone else "
        "changed production since. The check did not run and nothing was rolled back (it never undoes another "
        "change); see the audit log and the registry watch."
    )
    notifiers.alert_post_promotion(cfg, [message])
    outcome.record_outcome(promotion, change, AuditAction.POST_CHECK_FAILED, message)
    raise PostPromotionCheckFailed(message)


def _fail(cfg: ModelConfig, promotion: Promotion, failed: list[str], change: Change, resume: bool = False) -> None:
    """Roll back to the replaced version (when configured and possible), alert, and fail the task.

    ``resume``: this check's own rollback crashed half-way (its tags are on the version): finish that one.
    """
    from include.promotion.errors import PostPromotionCheckFailed, PromotionError
    from include.promotion.notify import alerts as notifiers
    from include.promotion.post_promotion.outcome import record_outcome
    from include.promotion.registry import rollback

    name, version = cfg.name, promotion.version
    what = "; ".join(failed)
    reason = what if resume else f"post-promotion check failed: {what}"[:1900]  # a reason holds 2,000 characters
    if not cfg.post_promotion.auto_rollback:
        outcome = "post_promotion.auto_rollback is off: nothing was rolled back; roll back with model_rollback"
    elif promotion.previous is None:
        outcome = (
            "it replaced no earlier champion, so there is nothing to roll back to: it stays in production. "
            "Fix the model and promote a new version"
        )
    else:
        try:
            # the rollback DAG's own code: checked here, and again under the model's lock by rollback()
            plan = (
                rollback.RollbackPlan(name, version, promotion.previous)
                if resume
                else rollback.plan_rollback(name, promotion.previous)
            )
            rollback.rollback(plan, reason, change, action=AuditAction.POST_CHECK_ROLLBACK)
            outcome = f"rolled back automatically: v{promotion.previous} is the champion again"
        except PromotionError as exc:  # refused (the champion moved, the target is gone...): say so, change nothing
            outcome = f"the automatic rollback to v{promotion.previous} was refused: {exc}"
    message = f"{name} v{version} failed its post-promotion check: {what.rstrip('.')}. {outcome}."
    notifiers.alert_post_promotion(cfg, [message])
    if not outcome.startswith("rolled back"):  # a rollback's own post_check_rollback rows are the outcome otherwise
        record_outcome(promotion, change, AuditAction.POST_CHECK_FAILED, message)
    raise PostPromotionCheckFailed(message)


if __name__ == "__main__":
    sys.exit(main())
