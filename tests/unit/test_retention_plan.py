"""The retention plan: every protection keeps its version, everything else old goes, and bad policies are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from include.promotion.audit.replay import audited_state
from include.promotion.config import parse_model_config
from include.promotion.config_sections import Retention
from include.promotion.errors import ModelConfigError
from include.promotion.retention.plan import OpenRuns, RegistryVersion, plan_retention, served_until
from include.promotion.retention.runs import open_run_ids, rollback_targets
from include.promotion.tasks.retention import verdict
from include.promotion.watch.reconcile import RegistrySnapshot, differences

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def row(version: int, action: str, at: datetime, to_stage: str | None = None, run_id: str = "r") -> dict[str, Any]:
    return {"version": str(version), "action": action, "created_at": at, "to_stage": to_stage, "run_id": run_id}


def registered(count: int, age_days: float = 400) -> list[dict[str, Any]]:
    """``count`` versions registered ``age_days`` ago by runs r1..rN."""
    return [row(v, "register", days_ago(age_days), run_id=f"r{v}") for v in range(1, count + 1)]


def versions(count: int, age_days: float = 400, aliases: dict[int, str] | None = None) -> list[RegistryVersion]:
    aliases = aliases or {}
    return [
        RegistryVersion(str(v), days_ago(age_days), aliases=(aliases[v],) if v in aliases else ())
        for v in range(1, count + 1)
    ]


POLICY = Retention(mode="enforce", keep_last=2, keep_days=30, keep_served_days=365)


def decisions(plan) -> dict[str, str | None]:
    """{version: why kept, or None when removed}."""
    return {d.version: (d.reason if d.keep else None) for d in plan.decisions}


def test_unprotected_old_versions_go_and_the_newest_keep_last_stay() -> None:
    plan = plan_retention("m", POLICY, versions(5), registered(5), OpenRuns(), NOW)
    kept = decisions(plan)
    assert [v for v, why in kept.items() if why is None] == ["1", "2", "3"]
    assert kept["4"].startswith("among the newest 2") and kept["5"].startswith("among the newest 2")
    assert all("older than keep_days=30; never served" in d.reason for d in plan.removals)


def test_each_protection_keeps_its_version() -> None:
    rows = [
        *registered(12),
        row(1, "promote", days_ago(390), "Production"),  # served until 380 days ago: too long ago
        row(2, "promote", days_ago(380), "Production"),  # served until 370 days ago: too long ago
        row(3, "promote", days_ago(370), "Production"),  # stopped serving 50 days ago: within keep_served_days
        row(4, "promote", days_ago(50), "Production"),  # the previous champion: a default rollback target
        row(5, "promote", days_ago(10), "Production"),  # the champion
        row(6, "stage", days_ago(5), "Staging"),  # awaiting approval
    ]
    found = versions(12, aliases={5: "champion", 7: "shadow"})
    found[8] = RegistryVersion("9", days_ago(3))  # young
    plan = plan_retention(
        "m",
        POLICY,
        found,
        rows,
        OpenRuns(rollback_targets=frozenset({"10"}), promotion_runs=frozenset({"r8"})),
        NOW,
    )
    why = decisions(plan)
    assert why["1"] is None and why["2"] is None  # served, but over a year ago
    assert why["3"].startswith("served in production until") and "within keep_served_days" in why["3"]
    assert why["4"] == "the version a rollback without target_version restores"
    assert why["5"] == "holds alias 'champion'"
    assert why["6"] == "awaiting approval"
    assert why["7"] == "holds alias 'shadow'"
    assert why["8"] == "registered by promotion run r8, still open"
    assert why["9"].endswith("within keep_days")
    assert why["10"] == "the target of an open model_rollback run"
    assert why["11"].startswith("among the newest") and why["12"].startswith("among the newest")


def test_the_audited_champion_is_kept_even_without_its_alias() -> None:
    rows = [*registered(4), row(1, "promote", days_ago(390), "Production")]
    assert decisions(plan_retention("m", POLICY, versions(4), rows, OpenRuns(), NOW))["1"] == "the audited champion"


def test_the_champions_promoted_over_tag_is_kept_as_the_default_rollback_target() -> None:
    plan = plan_retention("m", POLICY, versions(5), registered(5), OpenRuns(), NOW, champion_promoted_over="2")
    assert decisions(plan)["2"] == "the version a rollback without target_version restores"


def test_served_until_follows_replays_rules() -> None:
    rows = [
        row(1, "promote", days_ago(30), "Production"),
        row(2, "promote", days_ago(20), "Production"),
        row(1, "rollback_restore", days_ago(10), "Production"),
        row(2, "rollback_demote", days_ago(10), "Archived"),
    ]
    assert served_until(rows, NOW) == {"1": NOW, "2": days_ago(10)}


def test_a_dry_run_plan_is_the_enforce_plan() -> None:
    dry = plan_retention("m", Retention(keep_last=2), versions(5), registered(5), OpenRuns(), NOW)
    enforce = plan_retention("m", Retention(mode="enforce", keep_last=2), versions(5), registered(5), OpenRuns(), NOW)
    assert dry.decisions == enforce.decisions
    assert dry.summary()["mode"] == "dry_run" and dry.summary()["to_remove_versions"] == ["1", "2", "3"]


def test_max_per_run_removes_the_oldest_first_and_leaves_the_rest_for_the_next_run() -> None:
    policy = Retention(mode="enforce", keep_last=1, max_per_run=2)
    why = decisions(plan_retention("m", policy, versions(5), registered(5), OpenRuns(), NOW))
    assert (why["1"], why["2"]) == (None, None)
    assert why["3"] == why["4"] == "over max_per_run: left for the next run"


def test_a_recorded_deletion_is_finished_without_a_second_row_or_refused_when_protected_now() -> None:
    rows = [*registered(5), row(1, "retention_delete", days_ago(1)), row(2, "retention_delete", days_ago(1))]
    found = versions(5, aliases={2: "challenger"})
    plan = plan_retention("m", POLICY, found, rows, OpenRuns(), NOW)
    first = next(d for d in plan.decisions if d.version == "1")
    assert (first.keep, first.resume) == (False, True)
    second = next(d for d in plan.decisions if d.version == "2")
    assert second.keep and second.conflict and "holds alias 'challenger'" in second.reason


def test_archive_mode_archives_a_version_once() -> None:
    policy = Retention(mode="enforce", action="archive", keep_last=1)
    rows = [*registered(3), row(1, "retention_archive", days_ago(1), "Archived")]
    why = decisions(plan_retention("m", policy, versions(3), rows, OpenRuns(), NOW))
    assert (why["1"], why["2"]) == ("archived by retention earlier", None)


def test_a_deleted_version_is_neither_drift_nor_a_rollback_target() -> None:
    rows = [
        *registered(3),
        row(1, "promote", days_ago(300), "Production"),
        row(2, "promote", days_ago(200), "Production"),
        row(3, "promote", days_ago(100), "Production"),
        row(1, "retention_delete", days_ago(1)),
    ]
    state = audited_state("m", rows)
    assert "1" in state.deleted and "1" not in state.statuses
    assert state.previous_champion(lambda v: True) == "2"
    found = RegistrySnapshot(
        exists=True,
        aliases={"champion": "3"},
        statuses={"2": "archived", "3": "production"},
        stages={"2": "Archived", "3": "Production"},
        created_ms={"2": 0, "3": 0},
    )
    assert differences(state, found, mirror_stages=True) == []
    # still there after its row (a crashed run): reported, not mistaken for a version made outside the pipeline
    found.statuses["1"], found.stages["1"], found.created_ms["1"] = "archived", "Archived", 0
    [drift] = differences(state, found, mirror_stages=True)
    assert "recorded as deleted by the retention policy" in drift.reason and not drift.serving


def test_open_runs_are_the_ones_with_a_task_not_finished() -> None:
    states = {"a": {"x": "success", "y": "failed"}, "b": {"x": "success", "y": None}, "c": {"x": "awaiting_input"}}
    assert open_run_ids(states) == {"b", "c"}
    confs = [
        {"model_name": "m", "target_version": 3},
        {"model_name": "m", "target_version": ""},
        {"model_name": "m", "target_version": "not a number"},
        {"model_name": "other", "target_version": 4},
    ]
    assert rollback_targets("m", confs) == frozenset({"3"})


def test_the_verdict_names_a_model_whose_policy_could_not_be_applied() -> None:
    ok = {"model": "a", "mode": "enforce", "removed": 3}
    assert verdict([ok], ["a"]) == {"models": 1, "removed": 3, "would_remove": 0}
    with pytest.raises(Exception, match="could not be applied to b"):
        verdict([ok, None], ["a", "b"])


@pytest.mark.parametrize(
    ("retention", "expected"),
    [
        ({"keep_last": 0}, "keep_last is 0"),
        ({"keep_days": -1}, "retention.keep_days': Value error, must be a number of days from 0"),
        ({"keep_served_days": 0}, "every version that served in production (the rollback targets) would be deleted"),
        ({"keep_served_days": -5}, "retention.keep_served_days"),
        ({"mode": "delete_all"}, "retention.mode"),
        ({"action": "purge"}, "retention.action"),
        ({"keep_lst": 3}, "did you mean 'keep_last'?"),
    ],
)
def test_a_bad_policy_is_refused_with_the_field_and_the_fix(tmp_path: Path, retention: dict, expected: str) -> None:
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["retention"] = retention
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelConfigError, match=r"m\.yaml") as refused:
        parse_model_config(path)
    assert expected in str(refused.value)


def test_without_a_section_no_version_is_ever_deleted_and_the_defaults_are_safe(tmp_path: Path) -> None:
    cfg = yaml.safe_load(DEMO.read_text())
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert parse_model_config(path).retention is None
    cfg["retention"] = {}
    path.write_text(yaml.safe_dump(cfg))
    policy = parse_model_config(path).retention
    assert (policy.mode, policy.action, policy.keep_last, policy.keep_days) == ("dry_run", "delete", 20, 30)
