"""The Model promotion reports against a real MLflow server and a real PostgreSQL audit log, read the way the
api-server reads them: the read-only database role (``promotion_db_reader``) and, for the registry, calls counted."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.registry_workload import DATA_VERSION, fill, proxied_client
from include.promotion.audit.chain import ANCHOR_TAG
from include.promotion.audit.log import AuditEntry, model_lock
from include.promotion.audit.schema import AUDIT_TABLE, connect
from include.promotion.config import ModelConfig, parse_model_config
from include.promotion.registry import client as mlflow_client
from include.promotion.registry import rollback
from include.promotion.registry.accounts import READER_ACCOUNT, acting_as
from include.promotion.web import report as registry_report
from include.promotion.web import rollback_form
from include.promotion.web.registry_reads import VERSIONS_PAGE
from tests.support import DEMO, change, promote, register, snapshot, unique

pytestmark = pytest.mark.usefixtures("services")
HOSTILE = "<script>alert(1)</script> & \"quotes\" 'too'"


def governed(prefix: str) -> ModelConfig:
    return parse_model_config(DEMO).model_copy(update={"name": unique(prefix)})


def counted(call, *args, **kwargs):
    """(result, registry calls by method) of a report."""
    calls: Counter = Counter()
    with proxied_client(lambda method, _: calls.update([method])):
        return call(*args, **kwargs), calls


def test_the_report_shows_every_version_who_did_what_and_the_history_newest_first(services) -> None:
    cfg = governed("report")
    v1 = promote(cfg.name, approver="alice")
    v2 = promote(cfg.name, approver="bob")
    v3 = register(cfg.name)  # registered, never staged
    plan = rollback.plan_rollback(cfg.name, None)
    rollback.rollback(plan, HOSTILE, change("carol"))

    report, calls = counted(registry_report.model_report, cfg, 1, 5)
    assert calls == Counter({"search_registered_models": 1, "search_model_versions": 1})
    assert (report.champion, report.challenger) == (v1, None)
    lines = {line.version: line for line in report.versions}
    assert [line.version for line in report.versions] == [v3, v2, v1]
    assert (lines[v1].status, lines[v1].stage, lines[v1].aliases) == ("production", "Production", ("champion",))
    assert (lines[v1].promoted.action, lines[v1].promoted.actor) == ("rollback_restore", "carol")
    assert lines[v1].approved.actor == "alice"
    assert (lines[v2].status, lines[v2].ended.action, lines[v2].ended.actor) == (
        "rolled_back",
        "rollback_demote",
        "carol",
    )
    assert lines[v2].ended.reason == HOSTILE  # stored and read back as typed; the page escapes it
    assert lines[v3].status == "registered" and lines[v3].promoted is None
    assert lines[v2].data_version == DATA_VERSION and lines[v2].created_at is not None
    assert report.by_status == {"production": 1, "rolled_back": 1, "registered": 1}
    assert report.alerts == ()

    history = report.history
    total = history.total
    assert total >= 10 and history.pages == -(-total // 5) and len(history.rows) == 5
    assert [r["action"] for r in history.rows[:2]] == ["rollback_demote", "rollback_restore"]
    stamps = [r["created_at"] for r in history.rows]
    assert stamps == sorted(stamps, reverse=True)
    last = registry_report.model_report(cfg, history.pages, 5).history
    assert last.rows[-1]["action"] == "register" and len(last.rows) == total - 5 * (history.pages - 1)


def test_versions_come_a_page_at_a_time_in_one_search_whatever_their_number(services) -> None:
    cfg = governed("versions")
    fill(cfg.name, VERSIONS_PAGE + 5)
    newest, calls = counted(registry_report.model_report, cfg)
    assert calls == Counter({"search_registered_models": 1, "search_model_versions": 1})
    listed = [int(line.version) for line in newest.versions]
    assert listed == list(range(VERSIONS_PAGE + 5, 5, -1)) and newest.older_versions == "6"
    older, calls = counted(registry_report.model_report, cfg, before=int(newest.older_versions))
    assert calls == Counter({"search_registered_models": 1, "search_model_versions": 1})
    assert [line.version for line in older.versions] == ["5", "4", "3", "2", "1"] and older.older_versions is None


def test_a_registered_model_is_found_by_its_exact_name_in_one_search(services) -> None:
    # one search, not get_registered_model: MLflow's server loads every version of a model to answer that
    base = unique("exact")
    client = mlflow_client.client()
    for name in (f"{base}_a", f"{base}Xa", f"{base}_a2"):  # '_' is a wildcard in LIKE: only '=' may match
        client.create_registered_model(name, tags={"made_as": name})
    client.set_registered_model_alias(f"{base}_a", "champion", register(f"{base}_a"))
    found, calls = counted(lambda: mlflow_client.find_registered_model(mlflow_client.client(), f"{base}_a"))
    assert calls == Counter({"search_registered_models": 1})
    assert found.name == f"{base}_a" and found.tags["made_as"] == f"{base}_a" and found.aliases == {"champion": "1"}
    missing, calls = counted(lambda: mlflow_client.find_registered_model(mlflow_client.client(), f"{base}_b"))
    assert missing is None
    assert calls == Counter({"search_registered_models": 1, "get_registered_model": 1})


def test_the_overview_reads_champion_and_challenger_only_and_says_who_approved(services) -> None:
    cfg = governed("overview")
    promote(cfg.name, approver="alice")
    champion = promote(cfg.name, approver="bob")
    waiting = register(cfg.name)
    from include.promotion.registry import lifecycle

    lifecycle.promote_to_staging(cfg.name, waiting, change())
    empty = governed("overview-empty")

    (line, nothing), calls = counted(registry_report.overview, [cfg, empty])
    # per model: the registered model, then its champion and its challenger; the model never registered: the search,
    # and the read by name that tells "missing" from "not readable"
    assert calls == Counter({"search_registered_models": 2, "get_model_version": 2, "get_registered_model": 1})
    assert (line.champion.version, line.champion.approved_by, line.champion.approval_reason) == (
        champion,
        "bob",
        "looks good",
    )
    assert line.champion.since is not None and line.champion.restored is None
    assert line.challenger.version == waiting and line.challenger.waiting_since is not None
    assert line.alerts == ()
    assert nothing.champion is None and nothing.challenger is None


def test_drift_on_record_and_a_champion_moved_outside_the_pipeline_are_alerts(services) -> None:
    cfg = governed("alerts")
    first = promote(cfg.name)
    promote(cfg.name)
    with model_lock(cfg.name, "tests/drift") as log:
        log.record(AuditEntry(cfg.name, first, "drift_detected", None, None, "registry-watch", HOSTILE, None, None))
    with acting_as(*services.mlflow.service_env().values()):
        mlflow_client.client().set_registered_model_alias(cfg.name, "champion", first)  # by hand, not audited

    alerts = registry_report.model_report(cfg).alerts
    assert f"registry drift on record: {HOSTILE}" in alerts
    assert any(f"the registry's champion is v{first}" in a for a in alerts)
    assert registry_report.overview([cfg])[0].alerts == alerts


def test_lineage_is_one_tag_search_limited_to_models_the_viewer_may_read(services) -> None:
    mine, other = governed("lineage"), governed("lineage-other")
    versions = [register(mine.name), register(mine.name)]
    register(other.name)

    found, calls = counted(registry_report.lineage, DATA_VERSION, {mine.name}.__contains__)
    assert calls == Counter({"search_model_versions": 1})
    assert [(h.model, h.version) for h in found.versions] == [(mine.name, v) for v in sorted(versions, key=int)[::-1]]
    assert registry_report.lineage("sha256:nothing-trained-on-this", lambda _: True).versions == ()


def test_the_readers_can_read_and_change_nothing(services) -> None:
    """The api-server's accounts, from the attacker's side: SELECT only on the audit log; no registry write."""
    cfg = governed("reader")
    version = promote(cfg.name)
    conn = connect(registry_report.READER_CONN_ID)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {AUDIT_TABLE} WHERE model_name = %s", (cfg.name,))
            assert cur.fetchone()[0] > 0
            for statement in (
                f"INSERT INTO {AUDIT_TABLE} (model_name, version, action, actor, idempotency_key, prev_hash, row_hash) "
                "VALUES ('m', '1', 'approve', 'x', 'k', '', '')",
                f"UPDATE {AUDIT_TABLE} SET reason = 'x'",
                f"DELETE FROM {AUDIT_TABLE}",
            ):
                with pytest.raises(Exception) as refused:
                    cur.execute(statement)
                # insufficient privilege, whichever driver the connection's hook uses
                assert (getattr(refused.value, "sqlstate", None) or refused.value.pgcode) == "42501"
    finally:
        conn.close()
    from mlflow.exceptions import MlflowException

    reader = (READER_ACCOUNT, services.state.secrets["mlflow_reader_password"])
    with acting_as(*reader):
        client = mlflow_client.client()
        assert str(client.get_registered_model(cfg.name).aliases["champion"]) == version
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|403"):
            client.set_registered_model_alias(cfg.name, "champion", "1")
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED|403"):  # nor move the audit chain's anchor
            client.set_registered_model_tag(cfg.name, ANCHOR_TAG, "{}")


def test_the_rollback_form_says_what_a_rollback_restores_read_as_the_pages_reader(services) -> None:
    """The form's preview (``web.rollback_form``) as the api-server reads it: MLflow's read-only account and the
    audit log's reader role; the same answers as ``validate``, and nothing written."""
    cfg = governed("form")
    reader = (READER_ACCOUNT, services.state.secrets["mlflow_reader_password"])

    def preview() -> rollback_form.RollbackPreview:
        with acting_as(*reader):
            return rollback_form.preview(cfg.name, registry_report.READER_CONN_ID)

    never = preview()  # no such registered model yet: MLflow refuses the reader its alias lookups
    assert (never.possible, never.champion) == (False, None) and "has no champion" in never.why_not
    v1 = promote(cfg.name)
    first = preview()
    assert (first.champion, first.target, first.named, first.possible) == (v1, None, (), False)
    assert "replaced no earlier champion" in first.why_not
    v2 = promote(cfg.name)
    assert preview() == rollback_form.RollbackPreview(v2, v1, None, ())
    rollback.rollback(rollback.plan_rollback(cfg.name, None), "v2 is bad", change("carol"))
    before = snapshot(cfg.name)
    back = preview()  # v1 serves again and replaced nothing; v2 may be named, with the rolled-back box
    assert (back.champion, back.target, back.named) == (v1, None, (rollback_form.Restorable(v2, True),))
    assert back.possible and snapshot(cfg.name) == before
