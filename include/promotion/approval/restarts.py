"""Who restarted a promotion run: Airflow's own record of clears and state changes, read as the pipeline.

Four eyes means the approver did not make the candidate. Triggering a run is one way to make it; clearing (or
re-running, or setting the state of) the tasks of someone else's run is another: alice clears every task of a run
bob triggered, it retrains, and the candidate is hers. Airflow records each such request in its event log
(``GET /api/v2/eventLogs``: the user the api-server authenticated, never a value the user can edit), so the gate
reads it there and leaves those users out of the reviewers who may answer.

The pipeline reads the event log through Airflow's REST API with its own read-only account: the connection
``promotion_airflow_api`` (an http connection: the api-server's URL as host, the account's login and password;
role ``viewer`` in the simple auth manager). When it cannot be read the gate refuses to open: four eyes that
cannot be checked are not assumed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from include.promotion.airflow_run import RunRef
from include.promotion.errors import ApprovalRefused

AIRFLOW_API_CONN_ID = "promotion_airflow_api"
# What Airflow's api-server logs when a user clears tasks (a dry run is not logged) ...
CLEAR_EVENTS = ("post_clear_task_instances", "clear_dag_run")
# ... or sets the state of tasks or of the run (marking a task success or failed lets what follows it run again).
STATE_EVENTS = ("patch_task_instance", "bulk_task_instances", "patch_task_group_instances", "patch_dag_run")
_PAGE = 100
_MAX_EVENTS = 5_000  # far more restarts than a run can see; a bound on what one gate reads
_TIMEOUT = 10.0


@dataclass(frozen=True)
class Restart:
    """One request that restarted (part of) a run: who, what, when."""

    user: str
    event: str
    when: str

    def describe(self) -> str:
        what = "cleared tasks" if self.event in CLEAR_EVENTS else "set task states"
        return f"{self.user} ({what} at {self.when[:19].replace('T', ' ')} UTC)"


def restarts_in(events: Iterable[dict[str, Any]], run: RunRef) -> list[Restart]:
    """The events that restarted ``run``: clears and state changes of this run, and clears of this DAG by date range
    (no run named: they may have touched it) made after it was created. Oldest first."""
    found, seen = [], set()
    for event in events:
        name, owner = event.get("event"), event.get("owner")
        if not owner or event.get("dag_id") != run.dag_id or event.get("event_log_id", id(event)) in seen:
            continue
        seen.add(event.get("event_log_id", id(event)))
        extra = _extra(event.get("extra"))
        if event.get("run_id") == run.run_id:
            if name in CLEAR_EVENTS or (name in STATE_EVENTS and ({"new_state", "state"} & extra.keys())):
                found.append(Restart(owner, name, str(event.get("when") or "")))
        elif event.get("run_id") is None and name == "post_clear_task_instances":
            named = extra.get("dag_run_id")
            if named in (None, run.run_id) and _after(event.get("when"), run.run_after):
                found.append(Restart(owner, name, str(event.get("when") or "")))
    return sorted(found, key=lambda r: r.when)


def _after(when: Any, since: datetime | None) -> bool:
    """Whether an event happened after ``since`` (an unreadable time counts: better one reviewer too few)."""
    if since is None:
        return True
    try:
        happened = datetime.fromisoformat(str(when))
    except ValueError:
        return True
    if since.tzinfo is None or happened.tzinfo is None:
        return True
    return happened >= since


def _extra(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def restarts_of(run: RunRef) -> list[Restart]:
    """Who restarted ``run``, from Airflow's event log (``ApprovalRefused`` when it cannot be read; a network error
    or an api-server restart is retried for a few seconds first)."""
    import requests

    from include.promotion.retries import retry_transient

    account = _api_account()
    try:
        events = retry_transient(_read_events, account, run, attempts=3, max_wait=4.0)
    except (requests.RequestException, KeyError, ValueError) as exc:
        raise ApprovalRefused(
            f"cannot read who restarted this run from Airflow's event log ({type(exc).__name__}: "
            f"{str(exc)[:200]}); four eyes cannot be checked, so the approval does not open. Check the connection "
            f"'{AIRFLOW_API_CONN_ID}' (the api-server's URL and the pipeline's read-only Airflow account)."
        ) from None
    return restarts_in(events, run)


def _read_events(account: tuple[str, str, str], run: RunRef) -> list[dict[str, Any]]:
    import requests

    base, login, password = account
    session = requests.Session()
    token = session.post(f"{base}/auth/token", json={"username": login, "password": password}, timeout=_TIMEOUT)
    token.raise_for_status()
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    events: list[dict[str, Any]] = []
    for params in (
        {"dag_id": run.dag_id, "run_id": run.run_id},
        # clears by date range name no run; Airflow's filter cannot ask for "no run id", so read them all
        {"dag_id": run.dag_id, "event": "post_clear_task_instances"},
    ):
        events += _all_pages(session, f"{base}/api/v2/eventLogs", params)
    return events


def _all_pages(session: Any, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < _MAX_EVENTS:
        response = session.get(
            url, params={**params, "limit": _PAGE, "offset": len(events), "order_by": "id"}, timeout=_TIMEOUT
        )
        response.raise_for_status()
        page = response.json().get("event_logs") or []
        events += page
        if len(page) < _PAGE:
            return events
    raise ValueError(f"more than {_MAX_EVENTS} events for {params}")


def _api_account() -> tuple[str, str, str]:
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(AIRFLOW_API_CONN_ID)
    except Exception as exc:  # AirflowNotFoundException, or the secrets backend failing
        raise ApprovalRefused(
            f"no Airflow connection '{AIRFLOW_API_CONN_ID}' ({type(exc).__name__}): the gate reads who restarted a "
            "run from Airflow's event log with it. Create it (AIRFLOW_CONN_PROMOTION_AIRFLOW_API) with the "
            "api-server's URL as host and a read-only (viewer) Airflow account as login and password."
        ) from None
    host = (conn.host or "").strip().rstrip("/")
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname or not conn.login or not conn.password:
        raise ApprovalRefused(
            f"the connection '{AIRFLOW_API_CONN_ID}' needs the api-server's http(s) URL as host and the pipeline's "
            "Airflow account as login and password"
        )
    return host, conn.login, conn.password


__all__ = ["AIRFLOW_API_CONN_ID", "Restart", "restarts_in", "restarts_of"]
