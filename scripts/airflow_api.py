"""A small client for Airflow 3.3's public REST API, as a user would drive it.

Used by ``make run`` (to trigger the first run), the end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

TERMINAL_RUN_STATES = {"success", "failed"}
GATE_SETTLE_SECONDS = 3.0
# How often a wait asks again: a wait ends on average half a poll after the event, and each poll costs the api-server
# about 20 ms of CPU (two authenticated GETs), which the scheduler and the tasks on the same cores then lack.
POLL_SECONDS = 0.5

# The promotion DAG's approval task (a contract named in docs/architecture.md "Contracts"; dags/model_promotion.py).
APPROVE_TASK_ID = "approve"


class AirflowAPIError(RuntimeError):
    def __init__(self, response: requests.Response):
        self.status_code = response.status_code
        self.body = response.text
        super().__init__(f"{response.request.method} {response.url} -> {response.status_code}: {response.text[:500]}")


class ExecutorEvents:
    """The executor events a scheduler logged, read incrementally from its log file."""

    MARK = "Received executor event with state success for task instance "

    def __init__(self, scheduler_log: Path):
        self.path = scheduler_log
        self._offset = 0
        self._seen: list[str] = []

    def seen(self, dag_id: str, run_id: str, task_id: str) -> bool:
        try:
            with self.path.open("rb") as log:
                if log.seek(0, 2) < self._offset:  # the log was replaced: read it from the start
                    self._offset = 0
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            return False
        complete = chunk.rfind(b"\n") + 1  # a half-written last line is read next time
        self._offset += complete
        self._seen += [line for line in chunk[:complete].decode(errors="replace").splitlines() if self.MARK in line]
        key = f"TaskInstanceKey(dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}'"
        return any(key in line for line in self._seen)


class AirflowAPI:
    """Calls the API as one user (simple auth manager: POST /auth/token).

    ``scheduler_log``: the scheduler's log file, when the caller runs the stack; see ``wait_for_gate``.
    """

    def __init__(self, base_url: str, username: str, password: str, scheduler_log: Path | None = None):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._executor_events = ExecutorEvents(scheduler_log) if scheduler_log else None
        self._session = requests.Session()
        token = self._session.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        if token.status_code not in (200, 201):
            raise AirflowAPIError(token)
        self._session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def request(self, method: str, path: str, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        response = self._session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code not in ok:
            raise AirflowAPIError(response)
        return response.json() if response.content else None

    # -- DAGs and runs -------------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has serialized ``dag_id``; unpause it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                dag = self.request("GET", f"/dags/{dag_id}")
                if dag.get("is_paused"):
                    self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
                return dag
            except AirflowAPIError as exc:
                if exc.status_code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(POLL_SECONDS)

    def has_dag(self, dag_id: str) -> bool:
        """Whether the dag-processor has serialized ``dag_id``."""
        try:
            self.request("GET", f"/dags/{dag_id}")
        except AirflowAPIError as exc:
            if exc.status_code != 404:
                raise
            return False
        return True

    def param_choices(self, dag_id: str, param: str) -> list[Any]:
        """The choices (``enum``) of ``dag_id``'s ``param`` as its file was last parsed (the rollback form's models)."""
        return self.request("GET", f"/dags/{dag_id}/details")["params"][param]["schema"].get("enum", [])

    def reparse_until(self, parsed: Mapping[str, Callable[[], bool]], timeout: float = 120, every: float = 5) -> None:
        """For each ``dag_id: check`` of ``parsed``: ask for that DAG's file to be parsed, and again every ``every``
        seconds, until ``check()`` holds; the files are asked for at once.

        One request is not always enough: a parse under way may have read the models folder before the change, and
        Airflow 3.3 writes a changed DAG (and its api-server checks its cached copy) at most once per
        ``[core] min_serialized_dag_update_interval``; the next periodic parse can be far off
        (``min_file_process_interval``)."""
        deadline = time.monotonic() + timeout
        pending = dict(parsed)
        while pending:
            for dag_id in pending:
                self.reparse(dag_id)
            asked = time.monotonic()
            while pending and time.monotonic() - asked < every:
                pending = {dag_id: check for dag_id, check in pending.items() if not check()}
                if pending and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{sorted(pending)}: files parsed for {timeout:.0f} s without the change showing"
                    )
                if pending:
                    time.sleep(POLL_SECONDS)

    def reparse(self, dag_id: str) -> None:
        """Ask the dag-processor to parse ``dag_id``'s file now, not at its next interval (e.g. after a model
        file was added: the rollback form's model list, a new model's DAG in the same file)."""
        file_token = self.request("GET", f"/dags/{dag_id}")["file_token"]
        self.request("PUT", f"/parseDagFile/{file_token}", ok=(200, 201, 204))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def trigger_once_listed(
        self, dag_id: str, conf: dict[str, Any], param: str = "model_name", timeout: float = 120, unpause: bool = True
    ) -> str:
        """Trigger ``dag_id`` once its form lists ``conf[param]``: a form whose choices are the models (the
        rollback's ``model_name``) knows a new model only after its file was re-parsed, and refuses it with a 400
        naming ``param`` until then. Any other refusal is raised at once. ``unpause=False`` leaves a paused DAG
        paused (a run that must wait in the queue)."""
        if unpause:
            self.wait_for_dag(dag_id)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.trigger(dag_id, conf)
            except AirflowAPIError as exc:
                if exc.status_code != 400 or param not in exc.body or time.monotonic() > deadline:
                    raise
            time.sleep(POLL_SECONDS)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        tis = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in tis}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {task_id: ti["state"] for task_id, ti in self.task_instances(dag_id, run_id).items()}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Wait until the run ends; return its state."""
        deadline = time.monotonic() + timeout
        while (state := self.run(dag_id, run_id)["state"]) not in TERMINAL_RUN_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{dag_id}/{run_id} still {state} after {timeout}s: {self.task_states(dag_id, run_id)}"
                )
            time.sleep(POLL_SECONDS)
        return state

    def wait_for_gate(
        self, dag_id: str, run_id: str, task_id: str = APPROVE_TASK_ID, timeout: float = 300
    ) -> dict[str, Any]:
        """Wait until the approval task awaits input, and has settled there; return its HITL detail.

        Airflow 3.3 races when an answer lands before the scheduler has drained the executor's "success"
        event for the process that parked the task: if the resumed attempt is already running, that
        stale event fails it (apache/airflow#72716, fix open in #72767). A person never answers that
        fast; a test must not either. With the scheduler's log at hand this waits for that very event;
        without it, for a fixed few seconds.
        """
        self.wait_for_task(dag_id, run_id, task_id, {"awaiting_input"}, timeout=timeout)
        if self._executor_events is None:
            time.sleep(GATE_SETTLE_SECONDS)
        else:
            deadline = time.monotonic() + timeout
            while not self._executor_events.seen(dag_id, run_id, task_id):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the scheduler never logged the executor event of {dag_id}/{run_id}/{task_id}")
                time.sleep(0.5)
            time.sleep(0.5)  # the event is logged just before it is processed, in the same scheduler loop
        self.wait_for_task(dag_id, run_id, task_id, {"awaiting_input"}, timeout=timeout)
        return self.hitl_detail(dag_id, run_id, task_id)

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 300) -> str:
        """Wait until ``task_id`` is in one of ``states`` (fails fast if the run ends first)."""
        deadline = time.monotonic() + timeout
        while True:
            task_states = self.task_states(dag_id, run_id)
            if task_states.get(task_id) in states:
                return task_states[task_id]
            run_state = self.run(dag_id, run_id)["state"]
            if run_state in TERMINAL_RUN_STATES or time.monotonic() > deadline:
                raise TimeoutError(
                    f"{dag_id}/{run_id}: {task_id} never reached {states} (run {run_state}): {task_states}"
                )
            time.sleep(POLL_SECONDS)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """The task's log as text (the API serves structured events; their messages, one per line); ``map_index``
        for one instance of a mapped task."""
        body = self.request(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index},
        )
        content = body.get("content", [])
        if isinstance(content, str):
            return content
        lines = []
        for event in content:
            if not isinstance(event, dict):
                lines.append(str(event))
                continue
            lines.append(str(event.get("event", "")))
            lines += [f"{d.get('exc_type')}: {d.get('exc_value')}" for d in event.get("error_detail") or []]
        return "\n".join(lines)

    # -- Assets --------------------------------------------------------------------------------------
    def asset(self, name: str) -> dict[str, Any]:
        """The Asset named ``name`` (it exists once a parsed DAG schedules on it or produces it)."""
        assets = self.request("GET", "/assets", params={"name_pattern": name, "limit": 100})["assets"]
        for asset in assets:
            if asset["name"] == name:
                return asset
        raise LookupError(f"no Asset named {name!r}: no parsed DAG schedules on it or produces it (yet)")

    def asset_id(self, name: str) -> int:
        return int(self.asset(name)["id"])

    def busy_consumers(self, name: str) -> list[str]:
        """The DAGs scheduled on the Asset ``name`` that have a queued or running run."""
        busy = []
        for ref in self.asset(name)["scheduled_dags"]:
            params = {"state": ["queued", "running"], "limit": 1}
            if self.request("GET", f"/dags/{ref['dag_id']}/dagRuns", params=params)["total_entries"]:
                busy.append(ref["dag_id"])
        return busy

    def add_asset_event(self, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record an event on the Asset ``name``, as an upstream pipeline announces new data (needs role Op under
        the simple auth manager); the DAGs scheduled on it start a run."""
        return self.request("POST", "/assets/events", json={"asset_id": self.asset_id(name), "extra": extra or {}})

    # -- Human-in-the-loop ---------------------------------------------------------------------------
    def hitl_detail(self, dag_id: str, run_id: str, task_id: str = APPROVE_TASK_ID) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails")

    def answer(
        self, dag_id: str, run_id: str, option: str, reason: str | None = None, task_id: str = APPROVE_TASK_ID
    ) -> Any:
        """Answer an approval gate as this user (Approve or Reject, with a reason)."""
        body: dict[str, Any] = {"chosen_options": [option]}
        if reason is not None:
            body["params_input"] = {"reason": reason}
        return self.request(
            "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails", json=body
        )
