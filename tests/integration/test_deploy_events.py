"""Deploy events from the real audit log (PostgreSQL) to real HTTP receivers on loopback.

The production changes are made in-process with the package's own lifecycle and rollback code against the real
MLflow server; the receivers check every signature with ``deploy_events.verify_delivery``.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from promotion_client.events import encode, signed_headers

from include.promotion.airflow_run import RunRef
from include.promotion.audit import log as audit
from include.promotion.config import DeployNotifications
from include.promotion.errors import DeployNotificationFailed
from include.promotion.notify import deploy_events
from include.promotion.notify.deploy_events import events_from_rows, send_production_changes
from include.promotion.notify.targets import RetryPolicy
from include.promotion.registry import lifecycle, rollback
from include.promotion.states import AuditAction
from tests.deploy_receiver import DeployReceiver
from tests.support import DEMO, change, promote, register, snapshot, unique
from tests.unit.test_notifiers import relay  # noqa: F401  (the loopback SMTP relay fixture)

pytestmark = pytest.mark.usefixtures("services")
QUICK = RetryPolicy(attempts=3, first_wait=0.1, max_wait=0.4, connect_timeout=2, read_timeout=5)


def run_of_last(name: str, action: str) -> RunRef:
    """The Airflow run that recorded the model's last ``action`` row (the in-process helpers make their own)."""
    row = [r for r in audit.rows(name) if r["action"] == action][-1]
    return RunRef(row["dag_id"], row["run_id"])


@pytest.fixture
def receiver():
    with DeployReceiver() as running:
        yield running


def connect(monkeypatch: pytest.MonkeyPatch, conn_id: str, connection: dict) -> str:
    monkeypatch.setenv(DeployReceiver.env_name(conn_id), json.dumps(connection))
    return conn_id


def test_a_promotion_reaches_the_receiver_signed_once_and_a_replay_is_refused(monkeypatch, receiver) -> None:
    name = unique("deploy")
    v1, v2 = promote(name), promote(name)
    run = run_of_last(name, "promote")
    hook = connect(monkeypatch, "deploy_hook_a", receiver.connection())

    [outcome] = send_production_changes(name, run, DeployNotifications(webhook_conn_ids=[hook]), QUICK)

    assert outcome.delivered and outcome.detail.startswith("HTTP 200")
    [event] = receiver.events
    promoted = [r for r in audit.rows(name) if r["action"] == "promote"][-1]
    assert event["type"] == "model.promoted" and (event["version"], event["previous_version"]) == (v2, v1)
    assert (event["model"], event["champion_uri"], event["model_uri"]) == (
        name,
        f"models:/{name}@champion",
        f"models:/{name}/{v2}",
    )
    assert (event["audit_id"], event["actor"], event["run_id"]) == (promoted["id"], "bob", run.run_id)
    [taken] = receiver.requests
    assert taken.headers["X-Promotion-Delivery-Id"] == outcome.delivery_id
    assert taken.headers["X-Promotion-Signature"].startswith("v1,")

    # an attacker replays the captured request: refused, not taken again; an altered copy: refused as unsigned
    replay = requests.post(receiver.url, data=taken.body, headers=taken.headers, timeout=5)
    assert replay.status_code == 409
    altered = requests.post(receiver.url, data=taken.body.replace(b"bob", b"eve"), headers=taken.headers, timeout=5)
    assert altered.status_code == 401 and "signature does not match" in altered.text
    # the task retried later: the same delivery id, freshly signed; the receiver already has it, which counts
    [again] = send_production_changes(name, run, DeployNotifications(webhook_conn_ids=[hook]), QUICK)
    assert again.delivered and again.delivery_id == outcome.delivery_id and "already received" in again.detail
    assert len(receiver.events) == 1
    assert [status for status, _ in receiver.refusals] == [409, 401, 409]


def test_a_rollback_goes_to_every_target_and_slack_gets_an_escaped_message(monkeypatch, receiver) -> None:
    name = unique("deploy")
    v1, v2 = promote(name), promote(name)
    run = RunRef("model_rollback", unique("manual"))
    plan = rollback.plan_rollback(name, None)
    rollback.rollback(plan, "v2 pages <!channel> & more", lifecycle.Change("carol", run.dag_id, run.run_id))
    second = DeployReceiver()
    try:
        targets = DeployNotifications(
            webhook_conn_ids=[
                connect(monkeypatch, "deploy_hook_b", receiver.connection()),
                connect(monkeypatch, "deploy_hook_c", second.connection()),
            ],
            slack_conn_id=connect(monkeypatch, "deploy_slack", receiver.slack_connection()),
        )
        outcomes = send_production_changes(name, run, targets, QUICK)
    finally:
        second.close()

    assert [o.target for o in outcomes] == [
        "webhook 'deploy_hook_b'",
        "webhook 'deploy_hook_c'",
        "Slack 'deploy_slack'",
    ]
    for got in (receiver.events, second.events):
        [event] = got
        assert (event["type"], event["version"], event["previous_version"]) == ("model.rolled_back", v1, v2)
        assert (event["actor"], event["reason"]) == ("carol", "v2 pages <!channel> & more")
    assert receiver.events[0]["event_id"] == second.events[0]["event_id"]
    assert outcomes[0].delivery_id != outcomes[1].delivery_id  # one id per (target, audit row)
    [message] = receiver.slack_messages
    assert "restored to production by a rollback, replacing v" + v2 in message["text"]
    assert "&lt;!channel&gt; &amp; more" in message["text"] and "<!channel>" not in message["text"]
    [slack_request] = [r for r in receiver.requests if r.path.startswith("/services/")]
    assert slack_request.path == "/services/T0000/B0000/notARealToken"  # the hook's own URL building


def test_a_promotion_rolled_back_by_the_post_promotion_check_sends_both_changes_in_order(monkeypatch, receiver) -> None:
    name = unique("deploy")
    v1 = promote(name)
    run = RunRef("model_promotion__deploy", unique("manual"))  # the promotion run, then its check, as the DAG does
    v2 = register(name)
    lifecycle.promote_to_staging(name, v2, change())
    approval = lifecycle.Change("bob", run.dag_id, run.run_id)
    lifecycle.record_approval(name, v2, "bob", "looks good", approval)
    lifecycle.promote_to_production(name, v2, approval)
    check = lifecycle.Change("post-promotion-check", run.dag_id, run.run_id)
    rollback.rollback(
        rollback.plan_rollback(name, None), "p95 80 ms > 50 ms", check, action=AuditAction.POST_CHECK_ROLLBACK
    )
    hook = connect(monkeypatch, "deploy_hook_auto", receiver.connection())

    send_production_changes(name, run, DeployNotifications(webhook_conn_ids=[hook]), QUICK)

    promoted, rolled_back = receiver.events
    assert (promoted["type"], promoted["version"], promoted["previous_version"]) == ("model.promoted", v2, v1)
    assert (rolled_back["type"], rolled_back["version"], rolled_back["previous_version"]) == (
        "model.auto_rolled_back",
        v1,
        v2,
    )
    assert (rolled_back["actor"], rolled_back["reason"]) == ("post-promotion-check", "p95 80 ms > 50 ms")
    assert promoted["audit_id"] < rolled_back["audit_id"]


def test_a_target_answering_500_is_retried_with_backoff_until_it_takes_the_event(monkeypatch, receiver) -> None:
    name = unique("deploy")
    promote(name)
    receiver.fail_next = [500, 503]
    hook = connect(monkeypatch, "deploy_hook_d", receiver.connection())

    [outcome] = send_production_changes(
        name, run_of_last(name, "promote"), DeployNotifications(webhook_conn_ids=[hook]), QUICK
    )

    assert outcome.delivered
    assert [r.status for r in receiver.requests] == [500, 503, 200]
    assert {r.headers["X-Promotion-Delivery-Id"] for r in receiver.requests} == {outcome.delivery_id}
    assert [e["type"] for e in receiver.events] == ["model.promoted"]


def test_targets_that_stay_down_fail_loudly_after_the_others_got_it_and_undo_nothing(
    monkeypatch, receiver, caplog
) -> None:
    name = unique("deploy")
    promote(name)
    promote(name)
    run = run_of_last(name, "promote")
    down = DeployReceiver(path="/hooks/x?token=PATH-TOKEN-NOT-TO-SHOW")
    down.close()  # connection refused
    failing = DeployReceiver(fail_always=500)
    wrong_secret = DeployReceiver()
    try:
        targets = DeployNotifications(
            webhook_conn_ids=[
                connect(monkeypatch, "deploy_down", down.connection()),
                connect(monkeypatch, "deploy_500", failing.connection()),
                connect(monkeypatch, "deploy_wrong_secret", {**wrong_secret.connection(), "password": "w" * 40}),
                connect(monkeypatch, "deploy_no_secret", {"conn_type": "http", "host": receiver.url}),
                "deploy_not_defined",
                connect(monkeypatch, "deploy_ok", receiver.connection()),
            ],
            slack_conn_id=connect(monkeypatch, "deploy_slack_down", down.slack_connection("T1/B1/SLACK-TOKEN")),
        )
        before = snapshot(name)
        with pytest.raises(DeployNotificationFailed) as failed, caplog.at_level(logging.DEBUG):
            send_production_changes(name, run, targets, QUICK)
        assert snapshot(name) == before  # registry and audit log as they were: the promotion stands
    finally:
        failing.close()
        wrong_secret.close()

    message = str(failed.value)
    assert "6 deploy notification(s) not delivered" in message and "1 other(s) were delivered" in message
    assert "webhook 'deploy_down': model.promoted" in message and "no answer (ConnectionError)" in message
    assert "webhook 'deploy_500'" in message and "last answer: HTTP 500" in message
    assert "webhook 'deploy_wrong_secret'" in message and "HTTP 401: the signature does not match" in message
    assert "'deploy_no_secret': its password (the signing secret) is missing" in message
    assert "'deploy_not_defined': no such Airflow connection" in message
    assert "Slack 'deploy_slack_down': model.promoted" in message and "no answer (URLError)" in message
    for secret in (receiver.secret, down.secret, failing.secret, "w" * 40, "PATH-TOKEN-NOT-TO-SHOW", "SLACK-TOKEN"):
        assert secret not in message
        assert secret not in caplog.text  # slack_sdk's own retry log line would print the webhook URL
    assert "target Slack 'deploy_slack_down': no answer (URLError) (attempt 1 of 3); retrying" in caplog.text
    assert len(failing.requests) == QUICK.attempts  # retried
    assert len(wrong_secret.requests) == 1  # a refusal is not retried: the secret will not change by itself
    assert [e["type"] for e in receiver.events] == ["model.promoted"]  # the healthy target still got it


def test_notify_deployers_reads_the_models_config(monkeypatch, receiver, models_dir: Path, caplog) -> None:
    name, quiet = unique("deploy"), unique("deploy")
    for model, notifications in ((name, {"webhook_conn_ids": ["deploy_cfg_hook"]}), (quiet, None)):
        # promoted in-process without a check: its outcome is not what these tests are about
        cfg = {**yaml.safe_load(DEMO.read_text()), "name": model, "post_promotion": {"check": False}}
        if notifications:
            cfg["deploy_notifications"] = notifications
        (models_dir / f"{model}.yaml").write_text(yaml.safe_dump(cfg))
    connect(monkeypatch, "deploy_cfg_hook", receiver.connection())
    promote(name)
    promote(quiet)

    result = deploy_events.notify_deployers(name, run_of_last(name, "promote"))
    assert result["events"] == [f"model.promoted v1 (audit row {receiver.events[0]['audit_id']})"]
    assert result["deliveries"][0].startswith("webhook 'deploy_cfg_hook': HTTP 200")
    # nothing configured: said, and nothing sent; a run that changed nothing: nothing sent
    with caplog.at_level(logging.INFO, logger="include.promotion.notify.deploy_events"):
        assert deploy_events.notify_deployers(quiet, run_of_last(quiet, "promote")) == {"events": [], "deliveries": []}
        assert deploy_events.notify_deployers(name, RunRef("model_rollback", "nothing")) == {
            "events": [],
            "deliveries": [],
        }
    assert "no deploy targets configured" in caplog.text and "changed no production version" in caplog.text
    assert len(receiver.requests) == 1


def test_a_notify_task_cleared_after_a_rollback_does_not_undo_it_at_the_receiver(monkeypatch, receiver, caplog) -> None:
    name = unique("deploy")
    v1, v2 = promote(name), promote(name)
    promotion = run_of_last(name, "promote")
    hook = connect(monkeypatch, "deploy_hook_stale", receiver.connection())
    targets = DeployNotifications(webhook_conn_ids=[hook])
    send_production_changes(name, promotion, targets, QUICK)
    assert receiver.deployed[name] == v2
    rollback_run = RunRef("model_rollback", unique("manual"))
    carol = lifecycle.Change("carol", rollback_run.dag_id, rollback_run.run_id)
    rollback.rollback(rollback.plan_rollback(name, None), "v2 bad", carol)
    [rolled_back] = send_production_changes(name, rollback_run, targets, QUICK)
    assert rolled_back.delivered and receiver.deployed[name] == v1
    requests_before = len(receiver.requests)

    # hours later someone clears the promotion's notify task: its event is stale, nothing is sent
    with caplog.at_level(logging.WARNING, logger="include.promotion.notify.deploy_events"):
        assert send_production_changes(name, promotion, targets, QUICK) == []
    assert "changed production since; that run announces it" in caplog.text
    assert len(receiver.requests) == requests_before and receiver.deployed[name] == v1

    # an older sender (or anyone holding the secret) re-signs the promotion freshly once the receiver's process
    # memory of event ids forgot it: the durable last-applied audit id per model still makes it ignore the event
    receiver.forget_recent()
    [promoted] = events_from_rows(name, audit.rows(name), promotion)
    assert (promoted["superseded_by_audit_id"], promoted["current_champion"]) == (rolled_back.audit_id, v1)
    body = encode({**promoted, "target": hook})
    late = requests.post(
        receiver.url, data=body, headers=signed_headers(receiver.secret, "late-1", body, "model.promoted"), timeout=5
    )
    assert late.status_code == 200 and late.text == "ignored"
    assert receiver.deployed[name] == v1 and [e["audit_id"] for e in receiver.ignored] == [promoted["audit_id"]]


def test_a_deploy_that_failed_at_the_receiver_is_taken_again_on_retry_not_counted_delivered(
    monkeypatch, receiver
) -> None:
    name = unique("deploy")
    version = promote(name)
    receiver.fail_deploy_next = 1  # verified, but the deploy action fails: 500
    hook = connect(monkeypatch, "deploy_hook_retry_action", receiver.connection())

    [outcome] = send_production_changes(
        name, run_of_last(name, "promote"), DeployNotifications(webhook_conn_ids=[hook]), QUICK
    )

    assert outcome.delivered and outcome.detail.startswith("HTTP 200") and "already received" not in outcome.detail
    assert [r.status for r in receiver.requests] == [500, 200]
    assert receiver.deployed[name] == version


def test_a_delivery_for_another_target_sharing_the_secret_is_refused(monkeypatch, receiver) -> None:
    name = unique("deploy")
    promote(name)
    receiver.target = "deploy_hook_a_bound"
    other = DeployReceiver(secret=receiver.secret, target="deploy_hook_b_bound")  # the same secret, reused
    try:
        hook = connect(monkeypatch, "deploy_hook_a_bound", receiver.connection())
        send_production_changes(name, run_of_last(name, "promote"), DeployNotifications(webhook_conn_ids=[hook]), QUICK)
        [taken] = receiver.requests
        relayed = requests.post(other.url, data=taken.body, headers=taken.headers, timeout=5)
        assert relayed.status_code == 401 and "another target" in relayed.text
        assert other.events == [] and receiver.events[0]["target"] == hook
    finally:
        other.close()


def raw_post(port: int, content_length: str) -> str:
    """A POST whose Content-Length announces ``content_length`` and whose body never comes: the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"POST /hooks/models HTTP/1.1\r\nHost: x\r\nContent-Length: {content_length}\r\n\r\n".encode())
        return conn.recv(200).decode().split("\r\n")[0]


@pytest.mark.parametrize(
    ("content_length", "status"), [("1000000000", "413"), ("65537", "413"), ("-1", "400"), ("abc", "400")]
)
def test_the_receiver_refuses_a_bad_content_length_before_reading_the_body(receiver, content_length, status) -> None:
    assert raw_post(receiver.port, content_length).startswith(f"HTTP/1.0 {status}")
    assert receiver.requests == []  # nothing was read, nothing verified


class _NotHttp(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"SURPRISE\r\n\r\n")  # http.client: BadStatusLine, neither URLError nor OSError


def test_any_slack_failure_names_only_its_kind_and_connection_and_stops_no_other_target(
    monkeypatch, receiver, caplog
) -> None:
    name = unique("deploy")
    promote(name)
    garbage = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _NotHttp)
    threading.Thread(target=garbage.serve_forever, daemon=True).start()
    token = "T9/B9/SLACK-SECRET-TOKEN"
    try:
        bad_scheme = connect(
            monkeypatch,
            "deploy_slack_ftp",
            {"conn_type": "slackwebhook", "schema": "ftp", "host": "hooks.example", "password": token},
        )
        not_http = connect(
            monkeypatch,
            "deploy_slack_garbage",
            {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{garbage.server_address[1]}/s", "password": token},
        )
        hook = connect(monkeypatch, "deploy_hook_beside_slack", receiver.connection())
        run = run_of_last(name, "promote")
        failures = []
        with caplog.at_level(logging.DEBUG):
            for slack in (bad_scheme, not_http):
                with pytest.raises(DeployNotificationFailed) as failed:
                    send_production_changes(
                        name, run, DeployNotifications(webhook_conn_ids=[hook], slack_conn_id=slack), QUICK
                    )
                failures.append(str(failed.value))
    finally:
        garbage.shutdown()
        garbage.server_close()

    assert "Slack 'deploy_slack_ftp'" in failures[0] and "does not make an http(s) webhook URL" in failures[0]
    assert "Slack 'deploy_slack_garbage'" in failures[1]
    assert "the Slack client failed (BadStatusLine) on connection 'deploy_slack_garbage'" in failures[1]
    assert all("1 other(s) were delivered" in f for f in failures)  # the webhook beside it got the event
    assert len(receiver.events) == 1  # the second send: 409, already applied
    for text in (*failures, caplog.text, *(str(r.exc_info) for r in caplog.records if r.exc_info)):
        assert "SLACK-SECRET-TOKEN" not in text and "hooks.example" not in text


def test_a_failed_delivery_is_alerted_by_log_and_e_mail_and_fails_the_task(
    monkeypatch,
    receiver,
    models_dir: Path,
    relay,  # noqa: F811
    caplog,
) -> None:
    name = unique("deploy")
    cfg = {**yaml.safe_load(DEMO.read_text()), "name": name, "post_promotion": {"check": False}}
    cfg["deploy_notifications"] = {"webhook_conn_ids": ["deploy_hook_alerted"]}
    cfg["approval"] = {**cfg["approval"], "notify_emails": ["ml-oncall@example.org"]}
    (models_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    # a wrong secret: refused with 401, which is not retried (the task's default policy would wait 15 s on a 500)
    connect(monkeypatch, "deploy_hook_alerted", {**receiver.connection(), "password": "w" * 40})
    promote(name)

    with caplog.at_level(logging.ERROR), pytest.raises(DeployNotificationFailed, match="not delivered after retries"):
        deploy_events.notify_deployers(name, run_of_last(name, "promote"))

    assert f"DEPLOY NOTIFICATION FAILED {name}: 1 deploy notification(s) not delivered" in caplog.text
    deadline = time.monotonic() + 10
    while not relay and time.monotonic() < deadline:
        time.sleep(0.1)
    [mail] = relay
    assert mail["To"] == "ml-oncall@example.org" and "[deploy notification failed]" in mail["Subject"]
    assert receiver.secret not in mail.as_string()
