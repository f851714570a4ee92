"""Deploy events: derived from the audit rows of one run, signed, and refused by a receiver unless genuine."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from include.promotion.airflow_run import RunRef
from include.promotion.config import DeployNotifications, parse_model_config
from include.promotion.errors import ModelConfigError
from include.promotion.notify.deploy_events import events_from_rows, stale
from include.promotion.notify.targets import _snippet, delivery_id, slack_message

SECRET = "k" * 40
NOW = 1_790_000_000.0
RUN = RunRef("model_promotion__m", "manual__1")
ROLLBACK = RunRef("model_rollback", "manual__2")
DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


def row(id_: int, version: str, action: str, from_stage: str | None, to_stage: str | None, run: RunRef, **kw) -> dict:
    created = datetime(2026, 11, 26, 12, 0, id_, tzinfo=UTC)
    return {
        "id": id_,
        "model_name": "m",
        "version": version,
        "action": action,
        "from_stage": from_stage,
        "to_stage": to_stage,
        "actor": kw.get("actor", "bob"),
        "reason": kw.get("reason", "better"),
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "created_at": created,
    }


SEED = RunRef("seed", "s1")
HISTORY = [
    row(1, "1", "register", None, "None", SEED),
    row(2, "1", "promote", "Staging", "Production", SEED),
    row(3, "2", "register", None, "None", RUN),
    row(4, "2", "stage", "None", "Staging", RUN),
    row(5, "2", "approve", "Staging", "Staging", RUN),
    row(6, "2", "promote", "Staging", "Production", RUN),
    row(7, "1", "archive", "Production", "Archived", RUN),
]


def test_a_promotion_is_one_event_naming_the_champion_it_replaced() -> None:
    [event] = events_from_rows("m", HISTORY, RUN)
    assert event["type"] == "model.promoted"
    assert (event["version"], event["previous_version"]) == ("2", "1")
    assert (event["model_uri"], event["champion_uri"]) == ("models:/m/2", "models:/m@champion")
    assert (event["actor"], event["reason"], event["audit_id"]) == ("bob", "better", 6)
    assert (event["dag_id"], event["run_id"]) == (RUN.dag_id, RUN.run_id)
    assert event["occurred_at"] == "2026-11-26T12:00:06+00:00"
    assert (event["current_champion"], event["superseded_by_audit_id"]) == ("2", None)
    # the first champion replaced nothing; rows of other runs are never this run's events
    [first] = events_from_rows("m", HISTORY, SEED)
    assert (first["version"], first["previous_version"]) == ("1", None)
    assert events_from_rows("m", HISTORY, RunRef("model_promotion__m", "other")) == []


def test_rollbacks_and_automatic_rollbacks_are_events_of_their_own_kind() -> None:
    rows = [
        *HISTORY,
        row(8, "1", "rollback_restore", "Archived", "Production", ROLLBACK, actor="carol", reason="v2 bad"),
        row(9, "2", "rollback_demote", "Production", "Archived", ROLLBACK, actor="carol", reason="v2 bad"),
    ]
    [event] = events_from_rows("m", rows, ROLLBACK)
    assert (event["type"], event["version"], event["previous_version"]) == ("model.rolled_back", "1", "2")
    assert (event["actor"], event["reason"]) == ("carol", "v2 bad")

    check = [
        *HISTORY,
        row(8, "2", "post_check_rollback", "Production", "Archived", RUN, actor="post-promotion-check", reason="p95"),
        row(9, "1", "post_check_rollback", "Archived", "Production", RUN, actor="post-promotion-check", reason="p95"),
    ]
    promoted, rolled_back = events_from_rows("m", check, RUN)
    assert (promoted["type"], promoted["version"]) == ("model.promoted", "2")
    assert (rolled_back["type"], rolled_back["version"], rolled_back["previous_version"]) == (
        "model.auto_rolled_back",
        "1",
        "2",
    )
    assert rolled_back["actor"] == "post-promotion-check"


def test_a_delivery_id_is_stable_per_target_and_audit_row() -> None:
    promoted = events_from_rows("m", HISTORY, RUN)[0]
    again = events_from_rows("m", list(HISTORY), RUN)[0]
    assert delivery_id("hook_a", promoted) == delivery_id("hook_a", again)  # a retried task resends the same id
    assert delivery_id("hook_a", promoted) != delivery_id("hook_b", promoted)
    seed = events_from_rows("m", HISTORY, SEED)[0]
    assert delivery_id("hook_a", promoted) != delivery_id("hook_a", seed)


# -- newest state only ---------------------------------------------------------------------------------------
V3_RUN = RunRef("model_promotion__m", "manual__3")
ROLLED_BACK_TO_2 = [
    *HISTORY,
    row(8, "3", "register", None, "None", V3_RUN),
    row(10, "3", "promote", "Staging", "Production", V3_RUN),
    row(11, "2", "archive", "Production", "Archived", V3_RUN),
    row(12, "2", "rollback_restore", "Archived", "Production", ROLLBACK, actor="carol", reason="v3 bad"),
    row(13, "3", "rollback_demote", "Production", "Archived", ROLLBACK, actor="carol", reason="v3 bad"),
]


def test_an_event_another_run_superseded_is_stale_and_names_the_current_champion() -> None:
    # the promotion of v3, re-sent by a notify task cleared after the rollback to v2
    [promoted] = events_from_rows("m", ROLLED_BACK_TO_2, V3_RUN)
    assert (promoted["version"], promoted["current_champion"], promoted["superseded_by_audit_id"]) == ("3", "2", 12)
    newer = stale(promoted, ROLLED_BACK_TO_2, V3_RUN)
    assert newer is not None and (newer["id"], newer["action"]) == (12, "rollback_restore")
    [rolled_back] = events_from_rows("m", ROLLED_BACK_TO_2, ROLLBACK)
    assert rolled_back["superseded_by_audit_id"] is None and stale(rolled_back, ROLLED_BACK_TO_2, ROLLBACK) is None


def test_a_change_superseded_within_its_own_run_is_still_sent_in_order() -> None:
    check = [
        *HISTORY,
        row(8, "2", "post_check_rollback", "Production", "Archived", RUN, actor="post-promotion-check"),
        row(9, "1", "post_check_rollback", "Archived", "Production", RUN, actor="post-promotion-check"),
    ]
    promoted, rolled_back = events_from_rows("m", check, RUN)
    assert promoted["superseded_by_audit_id"] == 8 and stale(promoted, check, RUN) is None
    assert promoted["current_champion"] == rolled_back["current_champion"] == "1"
    # a later promotion by another run makes both stale
    later = [*check, row(20, "3", "promote", "Staging", "Production", V3_RUN)]
    assert [stale(e, later, RUN)["id"] for e in events_from_rows("m", later, RUN)] == [20, 20]


def test_rows_of_an_earlier_run_under_a_reused_run_id_are_not_this_runs() -> None:
    created_after_row_6 = datetime(2026, 11, 26, 12, 0, 6, tzinfo=UTC) + timedelta(minutes=5)
    reused = RunRef(RUN.dag_id, RUN.run_id, run_after=created_after_row_6)
    assert events_from_rows("m", HISTORY, reused) == []
    # within the clock-skew allowance, the run's own rows count
    same = RunRef(RUN.dag_id, RUN.run_id, run_after=created_after_row_6 - timedelta(minutes=4, seconds=30))
    assert [e["audit_id"] for e in events_from_rows("m", HISTORY, same)] == [6]


def test_a_receivers_answer_reaches_logs_short_without_control_characters_or_url_tokens() -> None:
    answer = "bad\x1b[31m request; see https://user:pw@deploy.example.com/hooks/abc?token=SECRET-TOKEN\r\n" + "x" * 5000
    snippet = _snippet(answer)
    assert "SECRET-TOKEN" not in snippet and "/hooks/abc" not in snippet and "pw@" not in snippet
    assert "\x1b" not in snippet and "\r" not in snippet and len(snippet) <= 121
    assert snippet.startswith("bad [31m request; see https://deploy.example.com")


def test_slack_sdks_logger_prints_nothing_even_after_a_logging_reconfiguration(caplog) -> None:
    from include.promotion.notify.targets import _SLACK_LOG

    # Airflow's logging setup: dictConfig re-enables and re-levels the loggers it knows of
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "root": {"level": "DEBUG"}})
    with caplog.at_level(logging.DEBUG):
        _SLACK_LOG.error("Failed to send a request to Slack API server: https://hooks.slack.com/services/T/B/TOKEN")
        _SLACK_LOG.debug("Sending a request - url: https://hooks.slack.com/services/T/B/TOKEN")
    assert "TOKEN" not in caplog.text
    assert not _SLACK_LOG.isEnabledFor(logging.CRITICAL) and _SLACK_LOG.propagate is False


def test_the_slack_message_escapes_what_people_typed() -> None:
    rows = [*HISTORY[:5], {**HISTORY[5], "reason": "<!channel> see <http://evil|here> & more"}, HISTORY[6]]
    [event] = events_from_rows("m", rows, RUN)
    text = slack_message(event)["text"]
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&amp; more" in text
    assert "*m* v2 promoted to production, replacing v1 by bob" in text
    assert "`models:/m@champion`" in text and "audit row 6" in text


def test_deploy_notifications_config_takes_connection_ids_only(tmp_path: Path) -> None:
    assert DeployNotifications().webhook_conn_ids == [] and DeployNotifications().slack_conn_id is None
    ok = DeployNotifications(webhook_conn_ids=["deploy_hook", "edge.v2-hook"], slack_conn_id="slack_ml")
    assert ok.webhook_conn_ids == ["deploy_hook", "edge.v2-hook"]
    for bad in (
        {"webhook_conn_ids": ["https://deploy.example.com/hook?token=x"]},  # a URL (and a secret) in the YAML
        {"webhook_conn_ids": ["a", "a"]},
        {"webhook_conn_ids": [f"h{i}" for i in range(11)]},
        {"slack_conn_id": "https://hooks.slack.com/services/T/B/X"},
        {"slack_conn_id": ""},
        {"webhooks": ["a"]},
    ):
        with pytest.raises(ValidationError):
            DeployNotifications.model_validate(bad)
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["deploy_notifications"] = {"webhook_conn_ids": ["https://x.example/h"]}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelConfigError, match=r"deploy_notifications.webhook_conn_ids.*not an Airflow connection id"):
        parse_model_config(path)
    assert parse_model_config(DEMO).deploy_notifications == DeployNotifications()


def test_a_webhook_connection_gives_an_http_url_and_a_long_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.promotion.errors import DeployNotificationFailed
    from include.promotion.notify.targets import WebhookTarget

    def conn(conn_id: str, **fields) -> str:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", **fields}))
        return conn_id

    parts = WebhookTarget(conn("u_parts", host="deploy.example.com", port=8443, password=SECRET))
    assert parts.url == "https://deploy.example.com:8443"
    full = WebhookTarget(conn("u_full", host="https://user:tok@deploy.example.com/h?k=v", password=SECRET))
    assert full.url == "https://user:tok@deploy.example.com/h?k=v"
    for conn_id, fields, message in (
        ("u_ftp", {"host": "ftp://deploy.example.com", "password": SECRET}, "not an http"),
        ("u_empty", {"password": SECRET}, "not an http"),
        ("u_short", {"host": "https://d.example.com", "password": "short"}, "shorter than 32"),
    ):
        with pytest.raises(DeployNotificationFailed, match=message):
            WebhookTarget(conn(conn_id, **fields))
    with pytest.raises(DeployNotificationFailed, match="no such Airflow connection"):
        WebhookTarget("u_not_defined_anywhere")
