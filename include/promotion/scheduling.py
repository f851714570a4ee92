"""The promotion DAG's ``schedule`` from a model's config: a cron, Asset events, or both.

* a cron only (or none): the cron string (or ``None``), exactly what the DAG took before Assets existed;
* Assets only: ``AssetAny`` of them (one event on any of them starts a run; a plain list would wait for all);
* both: ``AssetOrTimeSchedule`` (the cron's ``CronTriggerTimetable``, or an event, whichever comes first).

The Assets are ``ModelConfig.schedule_assets``: the data Assets the config names, and the model's retrain Asset when
``health.on_breach`` is ``retrain``. ``PROMOTION_SCHEDULE_OVERRIDE`` replaces the cron only (``none``: no cron), so
the tests' manual-runs-only stacks still run a model on the events they post. Airflow is imported only when Assets
are involved: a cron-only model's DAG parses as fast as before.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.promotion.config import ModelConfig

DEFAULT_TIMEZONE = "UTC"


def promotion_schedule(cfg: ModelConfig, timezone: Any = DEFAULT_TIMEZONE) -> Any:
    """The value for ``@dag(schedule=...)`` of ``cfg``'s promotion DAG (see the module's docstring)."""
    cron, asset_names = cfg.effective_schedule, cfg.schedule_assets
    if not asset_names:
        return cron
    return _asset_schedule(cron, tuple(asset_names), timezone)


# One object per distinct schedule, shared by the DAGs that have it: building a cron timetable describes the cron in
# words (cron_descriptor loads its translations each time), about 0.2 ms of CPU per DAG. Timetables are immutable
# values; the DAGs only read them.
@lru_cache(maxsize=256)
def _asset_schedule(cron: str | None, asset_names: tuple[str, ...], timezone: Any) -> Any:
    from airflow.sdk import Asset, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable

    assets = AssetAny(*(Asset(name) for name in asset_names))
    if cron is None:
        return assets
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone=timezone), assets=assets)


def schedule_summary(cfg: ModelConfig) -> str:
    """What starts ``cfg``'s promotion DAG, in words (its ``doc_md``)."""
    cron, names = cfg.effective_schedule, cfg.schedule_assets
    parts = [f"on the schedule `{cron}`"] if cron else []
    if names:
        parts.append("on each event of the Asset(s) " + ", ".join(f"`{n}`" for n in names))
    return " and ".join(parts) if parts else "only when triggered (no schedule)"
