"""The drift alert reaches people by e-mail through Airflow's SMTP hook, with tag values escaped."""

from __future__ import annotations

import email
import socketserver
import threading
from collections.abc import Iterator
from email.message import Message

import pytest

from include.promotion.config import ModelConfig
from include.promotion.notify import alerts as notifiers


class _SmtpSession(socketserver.StreamRequestHandler):
    """Just enough of SMTP (RFC 5321) for one plain message: what a mail relay on loopback would accept."""

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 localhost test relay")
        while line := self.rfile.readline().decode():
            verb = line[:4].upper()
            if verb == "EHLO" or verb == "HELO":
                self.reply("250 localhost")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                body = []
                while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                    body.append(data[1:] if data.startswith("..") else data)
                self.server.messages.append(email.message_from_string("".join(body)))  # type: ignore[attr-defined]
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:  # MAIL FROM, RCPT TO, RSET, NOOP
                self.reply("250 ok")


@pytest.fixture
def relay(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Message]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSession)
    server.messages = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    uri = f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true&from_email=airflow%40example.org"
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", uri)
    try:
        yield server.messages  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def config(emails: list[str], **extra: object) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            **extra,
            "name": "fraud-detector",
            "data": {"source": "builtin", "dataset": "breast_cancer"},
            "target": "y",
            "features": ["x"],
            "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
            "gates": {"roc_auc": 0.5},
            "approval": {"reviewers": ["alice"], "notify_emails": emails},
        }
    )


def test_a_drift_alert_is_mailed_to_the_models_people_with_values_escaped(relay: list[Message]) -> None:
    line = "fraud-detector v3: promotion_status is '<script>alert(1)</script>'; the audit log records 'archived'"
    notifiers.alert_drift(config(["ml-oncall@example.org"]), [line])
    assert len(relay) == 1
    message = relay[0]
    assert message["To"] == "ml-oncall@example.org" and "[registry drift] fraud-detector" in message["Subject"]
    html = next(part for part in message.walk() if part.get_content_type() == "text/html").get_payload(decode=True)
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in html and b"<script>" not in html


def test_without_addresses_the_alert_stays_in_the_log(relay: list[Message], caplog) -> None:
    notifiers.alert_drift(config([]), ["fraud-detector v3: alias 'champion' was deleted"])
    assert relay == [] and "REGISTRY DRIFT fraud-detector v3: alias 'champion' was deleted" in caplog.text


def test_alerts_go_to_the_alerts_recipients_not_the_reviewers_list(relay: list[Message]) -> None:
    """``alerts.emails`` is on-call's list; ``approval.notify_emails`` stays the reviewers' (asked to approve)."""
    cfg = config(["reviewers@example.org"], alerts={"emails": ["oncall@example.org", "sre@example.org"]})
    notifiers.alert_post_promotion(cfg, ["fraud-detector v4 failed its check: p95 812 ms > 500 ms"])
    assert [m["To"] for m in relay] == ["oncall@example.org, sre@example.org"]
    assert "[post-promotion check failed] fraud-detector" in relay[0]["Subject"]


def test_an_empty_alerts_list_silences_mail_but_not_the_log(relay: list[Message], caplog) -> None:
    cfg = config(["reviewers@example.org"], alerts={"emails": []})
    notifiers.alert_drift(cfg, ["fraud-detector v3: alias 'champion' was deleted"])
    assert relay == [] and "REGISTRY DRIFT fraud-detector v3" in caplog.text


@pytest.mark.parametrize(
    ("alerts", "message"),
    [
        ({"emails": ["not-an-address"]}, "is not an e-mail address"),
        ({"slack_conn_id": "https://hooks.slack.com/services/T/B/x"}, "is not an Airflow connection id"),
        ({"email": ["oncall@example.org"]}, "email"),  # a typo of a key is refused, not ignored
    ],
)
def test_a_malformed_alerts_section_is_refused_with_what_to_fix(alerts: dict, message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        config([], alerts=alerts)


def test_a_mail_relay_that_is_down_does_not_hide_the_alert(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", "smtp://127.0.0.1:9?disable_tls=true&disable_ssl=true")
    notifiers.alert_drift(config([], alerts={"emails": ["oncall@example.org"]}), ["fraud-detector v3 drifted"])
    assert "REGISTRY DRIFT fraud-detector v3 drifted" in caplog.text
    assert "could not send the alert '[registry drift] fraud-detector" in caplog.text
