"""The promotion DAG's schedule from a model's config: which Assets, which timetable class."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from airflow.sdk import Asset, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable

from include.promotion.config import parse_model_config
from include.promotion.scheduling import promotion_schedule, schedule_summary

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``config(schedule=..., on_breach=...)``: the demo config with that schedule, parsed, no override set."""
    monkeypatch.delenv("PROMOTION_SCHEDULE_OVERRIDE", raising=False)

    def make(schedule, on_breach: str | None = "alert"):
        raw = yaml.safe_load(DEMO.read_text())
        raw["schedule"] = schedule
        if on_breach is None:
            raw.pop("health")
        else:
            raw["health"]["on_breach"] = on_breach
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump(raw))
        return parse_model_config(path)

    return make


def asset_names(schedule) -> list[str]:
    condition = schedule.asset_condition if isinstance(schedule, AssetOrTimeSchedule) else schedule
    assert isinstance(condition, AssetAny), f"not 'any of': {condition!r}"
    return [asset.name for asset in condition.objects]


@pytest.mark.parametrize(
    ("schedule", "expected"), [("@weekly", "@weekly"), (None, None), ({"cron": "@daily"}, "@daily")]
)
def test_a_cron_only_schedule_is_the_plain_string_as_before(config, schedule, expected) -> None:
    assert promotion_schedule(config(schedule)) == expected


def test_assets_without_a_cron_run_on_an_event_of_any_of_them(config) -> None:
    schedule = promotion_schedule(config({"assets": ["labels-a", "labels-b"]}))
    assert isinstance(schedule, AssetAny)
    assert asset_names(schedule) == ["labels-a", "labels-b"]
    assert all(isinstance(a, Asset) and a.uri == a.name for a in schedule.objects)


def test_assets_and_a_cron_make_an_asset_or_time_schedule(config) -> None:
    schedule = promotion_schedule(config({"cron": "0 3 * * 1", "assets": ["labels-a"]}))
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, CronTriggerTimetable)
    assert schedule.timetable.expression == "0 3 * * 1"
    assert asset_names(schedule) == ["labels-a"]


def test_retrain_on_a_breach_adds_the_models_own_retrain_asset(config) -> None:
    assert asset_names(promotion_schedule(config("@weekly", on_breach="retrain"))) == ["model-retrain/fraud-detector"]
    both = promotion_schedule(config({"assets": ["labels-a"]}, on_breach="retrain"))
    assert asset_names(both) == ["labels-a", "model-retrain/fraud-detector"]
    for other in ("alert", "rollback", None):
        assert promotion_schedule(config("@weekly", on_breach=other)) == "@weekly"


def test_the_override_replaces_the_cron_and_keeps_the_assets(config, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config({"cron": "@weekly", "assets": ["labels-a"]}, on_breach="retrain")
    monkeypatch.setenv("PROMOTION_SCHEDULE_OVERRIDE", "none")
    manual = promotion_schedule(cfg)
    assert isinstance(manual, AssetAny)  # no cron left: runs only on events (and by hand)
    assert asset_names(manual) == ["labels-a", "model-retrain/fraud-detector"]
    monkeypatch.setenv("PROMOTION_SCHEDULE_OVERRIDE", "@daily")
    daily = promotion_schedule(cfg)
    assert isinstance(daily, AssetOrTimeSchedule) and daily.timetable.expression == "0 0 * * *"
    assert promotion_schedule(config("@weekly")) == "@daily"


def test_the_summary_says_what_starts_a_run(config) -> None:
    assert schedule_summary(config(None)) == "only when triggered (no schedule)"
    summary = schedule_summary(config({"cron": "@weekly", "assets": ["labels-a"]}, on_breach="retrain"))
    assert summary == (
        "on the schedule `@weekly` and on each event of the Asset(s) `labels-a`, `model-retrain/fraud-detector`"
    )
