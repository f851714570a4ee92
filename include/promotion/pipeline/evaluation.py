"""Score the candidate and the current champion on the same holdout and apply the gates.

Hand-written rather than ``mlflow.models.evaluate`` + ``mlflow.validate_evaluation_results``: its
``MetricThreshold`` refuses a minimum change of 0.0 (the default "not worse than the champion"), and its
metric names differ from the ones the model configs use for gates.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from include.promotion.config import METRICS, ModelConfig
from include.promotion.pipeline.training import TRAINING_FINGERPRINT, holdout_split
from include.promotion.post_promotion.check import EXPECTED_COLUMN, SAMPLE_ARTIFACT, SAMPLE_DIGEST_PARAM, SAMPLE_ROWS
from include.promotion.registry import client as mlflow_client
from include.promotion.states import CHAMPION_ALIAS

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient


@dataclass
class Evaluation:
    """The evaluation verdict; what ``evaluate`` passes on (JSON-friendly)."""

    passed: bool
    metrics: dict[str, float]
    gate_results: list[dict[str, Any]]
    reasons: list[str] = field(default_factory=list)
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(y_true: Any, proba: Any, threshold: float = 0.5) -> dict[str, float]:
    """AUC, F1, average precision, precision and recall of positive-class probabilities."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    predicted = (proba >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y_true, proba)),
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
        "average_precision": float(average_precision_score(y_true, proba)),
        "precision": float(precision_score(y_true, predicted, zero_division=0)),
        "recall": float(recall_score(y_true, predicted, zero_division=0)),
    }


def apply_gates(
    cfg: ModelConfig, metrics: dict[str, float], champion: dict[str, float] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Absolute minimums from the config, then the minimum improvement over the champion (if any)."""
    results: list[dict[str, Any]] = []
    reasons: list[str] = []
    for metric, minimum in cfg.gates.items():
        value = metrics[metric]
        ok = math.isfinite(value) and value >= minimum
        results.append({"gate": f"{metric} >= {minimum}", "value": value, "passed": ok})
        if not ok:
            reasons.append(f"{metric} = {value:.4f} is below the minimum {minimum}")
    if champion is not None:
        metric = cfg.champion_comparison.metric
        needed = champion[metric] + cfg.champion_comparison.min_improvement
        value = metrics[metric]
        ok = value >= needed
        results.append(
            {
                "gate": f"{metric} >= champion {champion[metric]:.4f} + {cfg.champion_comparison.min_improvement}",
                "value": value,
                "passed": ok,
            }
        )
        if not ok:
            reasons.append(
                f"{metric} = {value:.4f} does not beat the champion's {champion[metric]:.4f} "
                f"by the required {cfg.champion_comparison.min_improvement}"
            )
    return results, reasons


def outcome_line(evaluation: Evaluation) -> str:
    """The verdict in one line, reason first: what the ``evaluate`` log opens with."""
    if not evaluation.passed:
        return f"NOT PROMOTED: {'; '.join(evaluation.reasons)}. Nothing will be registered."
    passed = len(evaluation.gate_results)
    against = (
        f"beats champion v{evaluation.champion_version}" if evaluation.champion_version else "no champion to beat yet"
    )
    return f"PASSED all {passed} gates ({against}): the candidate goes on to registration and review."


def gate_lines(evaluation: Evaluation) -> list[str]:
    """One line per gate: PASS or FAIL, the gate, the candidate's value."""
    return [f"  {'PASS' if g['passed'] else 'FAIL'}  {g['gate']}: {g['value']:.4f}" for g in evaluation.gate_results]


REGRESSION = 0.005  # a drop in a metric larger than this is marked for the reviewer (it decides nothing)


def comparison_markdown(evaluation: Evaluation) -> str:
    """Candidate vs champion, metric by metric with deltas, as a Markdown table; a metric worse than the champion's
    by more than ``REGRESSION`` is marked."""
    champion = evaluation.champion_metrics
    head = (
        f"| metric | candidate | champion (v{evaluation.champion_version}) | delta |"
        if champion
        else "| metric | candidate | champion | delta |"
    )
    lines = [head, "|---|---:|---:|---:|"]
    for metric in METRICS:
        cand = evaluation.metrics[metric]
        if champion:
            delta = cand - champion[metric]
            shown = f"**{delta:+.4f} ▼ worse**" if delta < -REGRESSION else f"{delta:+.4f}"
            lines.append(f"| {metric} | {cand:.4f} | {champion[metric]:.4f} | {shown} |")
        else:
            lines.append(f"| {metric} | {cand:.4f} | none yet | n/a |")
    return "\n".join(lines)


def _log_plots(client: Any, run_id: str, y_true: Any, curves: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    for title, display in (("roc_curve", RocCurveDisplay), ("pr_curve", PrecisionRecallDisplay)):
        fig, ax = plt.subplots(figsize=(5, 4))
        for label, proba in curves.items():
            display.from_predictions(y_true, proba, name=label, ax=ax)
        ax.set_title(title.replace("_", " ").upper())
        client.log_figure(run_id, fig, f"evaluation/{title}.png")
        plt.close(fig)


def identical_to_champion(client: MlflowClient, fingerprint: str | None, champion: Any) -> bool:
    """Whether the champion's own MLflow run was trained with this training fingerprint (its run param, which only
    the pipeline writes; never a version tag, which people with EDIT can change)."""
    from mlflow.exceptions import MlflowException

    if not fingerprint or not champion.run_id:
        return False  # a champion registered before fingerprints existed, or created by hand: not provably a copy
    try:
        champion_run = client.get_run(champion.run_id)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return champion_run.data.params.get(TRAINING_FINGERPRINT) == fingerprint


def log_holdout_sample(client: MlflowClient, run_id: str, x_test: pd.DataFrame, proba: Any) -> str:
    """Log the fixed sample of the holdout with the candidate's probabilities, and its digest as a param."""
    import hashlib
    import tempfile
    from pathlib import Path

    sample = x_test.head(SAMPLE_ROWS).reset_index(drop=True).copy()
    sample[EXPECTED_COLUMN] = proba[: len(sample)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, Path(SAMPLE_ARTIFACT).name)
        sample.to_parquet(path, index=False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        client.log_artifact(run_id, str(path), str(Path(SAMPLE_ARTIFACT).parent))
    client.log_param(run_id, SAMPLE_DIGEST_PARAM, digest)
    return digest


def evaluate_candidate(cfg: ModelConfig, frame: pd.DataFrame, trained: dict[str, str]) -> Evaluation:
    """Score candidate and champion on the same holdout, log the evidence, return the verdict."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    client = mlflow_client.client()
    run_id = trained["run_id"]
    candidate_params = client.get_run(run_id).data.params
    split = holdout_split(cfg, frame)
    candidate = mlflow.sklearn.load_model(trained["model_uri"])
    candidate_proba = candidate.predict_proba(split.x_test)[:, 1]
    metrics = score(split.y_test, candidate_proba)

    champion_version = champion_metrics = None
    curves = {"candidate": candidate_proba}
    # no registered model or no champion yet: only the absolute gates apply (any other error fails the task)
    champion = mlflow_client.get_alias(client, cfg.name, CHAMPION_ALIAS)
    if champion is not None:
        champion_model = mlflow.sklearn.load_model(f"models:/{cfg.name}/{champion.version}")
        champion_proba = champion_model.predict_proba(split.x_test)[:, 1]
        champion_version, champion_metrics = str(champion.version), score(split.y_test, champion_proba)
        curves[f"champion v{champion.version}"] = champion_proba

    gate_results, reasons = apply_gates(cfg, metrics, champion_metrics)
    if champion is not None and identical_to_champion(client, candidate_params.get(TRAINING_FINGERPRINT), champion):
        # a retrain on unchanged data and config: reviewers would be asked to approve a copy of the champion
        reasons.insert(0, f"identical to champion v{champion.version} (same data version and training config)")
    evaluation = Evaluation(
        passed=not reasons,
        metrics=metrics,
        gate_results=gate_results,
        reasons=reasons,
        champion_version=champion_version,
        champion_metrics=champion_metrics,
    )
    # The client API, not the fluent one: it writes to this run whatever experiment the process has active.
    logged = {f"holdout_{k}": v for k, v in metrics.items()}
    if champion_metrics:
        logged |= {f"champion_holdout_{k}": v for k, v in champion_metrics.items()}
    decision = {
        "promotion_decision": "passed" if evaluation.passed else "not_promoted",
        "promotion_reason": "; ".join(reasons) if reasons else "all gates passed",
    }
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in logged.items()],
        tags=[RunTag(k, v) for k, v in decision.items()],
    )
    client.log_text(run_id, comparison_markdown(evaluation), "evaluation/comparison.md")
    client.log_text(run_id, json.dumps(evaluation.as_dict(), indent=2), "evaluation/evaluation.json")
    _log_plots(client, run_id, split.y_test, curves)
    if SAMPLE_DIGEST_PARAM not in candidate_params:  # a retried evaluate keeps the sample it logged first
        log_holdout_sample(client, run_id, split.x_test, candidate_proba)
    return evaluation
