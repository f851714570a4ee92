"""``make screenshots``: the README's pictures of the Model promotion page, taken from the real demo story.

Starts the stack as ``make run`` does (``scripts.run_local.prepare_demo``: PostgreSQL, MLflow, Airflow, the demo data,
the first run of ``fraud-detector`` as shipped in ``include/models``, the scoring service and the demo traffic) in a
temp dir on free ports, then plays the story the README tells, in Chromium (Playwright driving Debian's
``chromium``, as the browser tests do):

1. bob approves the first version through the REST API: v1 serves, and the demo traffic starts;
2. the labeler's batches of labelled traffic start retraining runs (``--announce-every``); the first candidate that
   passes its gates and its shadow evaluation waits for a reviewer;
3. alice opens it under Browse -> Required Actions: **model-promotion-evidence.png**; she approves it;
4. the Model promotion overview in Airflow's frame: **model-promotion-overview.png**;
5. carol, in dark mode, rolls it back from the model's page: **model-promotion-rollback.png** (its versions and
   history, the restore on top).

Differences from ``make run``, all to shorten the waiting: labels arrive after 20 s (``--label-delay``; make run: 60),
a batch is announced every 100 labels (``--announce-every``; make run: 500), and ``shadow_evaluate`` looks every 10 s
(``PROMOTION_SHADOW_POKE_SECONDS``; make run: 60). Mostly waiting: 5-15 minutes, depending on how busy the machine is.
Usage: ``.venv/bin/python -m scripts.screenshots [--out docs] [--state-dir DIR]``.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from include.promotion.config import dag_id_for
from scripts.airflow_api import APPROVE_TASK_ID, AirflowAPI
from scripts.run_local import DEMO_HEALTH_SCHEDULE, DEMO_MODEL, prepare_demo
from scripts.stack import ServiceStack, StackConfig, free_port

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 800
CANDIDATE_TIMEOUT = 1800.0  # seconds to wait for a second candidate at its gate
RUN_TIMEOUT = 900.0  # seconds an approved run or a rollback may take to end
FIRST_REASON = "First version for the card-review queue: every gate passed on the holdout."
APPROVE_REASON = "Trained on the newly labelled traffic; no regression against v{champion} offline or in the shadow."
ROLLBACK_REASON = "Card-review queue reports more false alarms since v{candidate}; back to v{champion} while we look."


def log(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:6.0f} s] {message}", flush=True)


def save(page: Any, path: Path) -> None:
    """The page as a small PNG (256 colours), as the browser tests save theirs."""
    from PIL import Image

    Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(256).save(path, optimize=True)
    path.chmod(0o644)


def champion() -> str:
    """The version ``@champion`` names in MLflow (read as the pipeline's account)."""
    from include.promotion.registry import client as mlflow_client
    from include.promotion.states import CHAMPION_ALIAS

    return str(mlflow_client.get_alias(mlflow_client.client(), DEMO_MODEL, CHAMPION_ALIAS).version)


def runs(api: AirflowAPI, dag_id: str) -> list[dict[str, Any]]:
    return api.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]


def next_candidate(api: AirflowAPI, dag_id: str, seen: set[str], started: float) -> str:
    """The id of the first run not in ``seen`` whose approval task awaits a reviewer; reports the others' ends."""
    deadline = time.monotonic() + CANDIDATE_TIMEOUT
    reported: set[str] = set()
    while time.monotonic() < deadline:
        for run in runs(api, dag_id):
            run_id = run["dag_run_id"]
            if run_id in seen or run_id in reported:
                continue
            if run["state"] in ("success", "failed"):
                reported.add(run_id)
                log(started, f"{run_id} ended {run['state']} without asking a reviewer (not promoted)")
            elif api.task_states(dag_id, run_id).get(APPROVE_TASK_ID) == "awaiting_input":
                return run_id
        time.sleep(5)
    raise SystemExit(f"no candidate reached its approval gate within {CANDIDATE_TIMEOUT:.0f} s")


def browser_page(browser: Any, stack: ServiceStack, user: str, dark: bool = False) -> Any:
    """A page of a new browser context signed in as ``user`` on Airflow's login page."""
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, color_scheme="dark" if dark else "light")
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.goto(f"{stack.airflow_url}/auth/login")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(stack.passwords()[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
    return page


def story(stack: ServiceStack, out: Path, started: float) -> None:
    from playwright.sync_api import sync_playwright

    dag_id = dag_id_for(DEMO_MODEL)
    passwords = stack.passwords()
    admin = AirflowAPI(stack.airflow_url, "admin", passwords["admin"], stack.scheduler_log)
    bob = AirflowAPI(stack.airflow_url, "bob", passwords["bob"], stack.scheduler_log)
    alice = AirflowAPI(stack.airflow_url, "alice", passwords["alice"], stack.scheduler_log)
    carol = AirflowAPI(stack.airflow_url, "carol", passwords["carol"], stack.scheduler_log)

    first = runs(admin, dag_id)[0]["dag_run_id"]
    bob.wait_for_gate(dag_id, first, timeout=RUN_TIMEOUT)
    log(started, f"{first} awaits a reviewer; bob approves v1")
    bob.answer(dag_id, first, "Approve", FIRST_REASON)
    if (state := admin.wait_for_run(dag_id, first, timeout=RUN_TIMEOUT)) != "success":
        raise SystemExit(f"the first run ended {state}: {admin.task_states(dag_id, first)}")
    log(started, "v1 serves; waiting for the labelled traffic to start a retraining run that reaches its gate")

    candidate_run = next_candidate(admin, dag_id, {first}, started)
    detail = alice.wait_for_gate(dag_id, candidate_run, timeout=RUN_TIMEOUT)
    log(started, f"{candidate_run} awaits a reviewer: {detail.get('subject')}")

    executable = shutil.which("chromium")
    if executable is None:
        raise SystemExit("The screenshots need Debian's chromium: run  sudo apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        try:
            page = browser_page(browser, stack, "alice")
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Required Actions").click()
            page.get_by_text(detail["subject"]).first.click()  # "Promote fraud-detector vN to production?"
            page.get_by_role("table").filter(has_text="roc_auc").first.wait_for()
            save(page, out / "model-promotion-evidence.png")
            log(started, "model-promotion-evidence.png")
            page.locator("#element_reason").fill(APPROVE_REASON.format(champion=1))
            page.get_by_test_id("hitl-option-Approve").click()
            if (state := alice.wait_for_run(dag_id, candidate_run, timeout=RUN_TIMEOUT)) != "success":
                raise SystemExit(f"the approved run ended {state}: {admin.task_states(dag_id, candidate_run)}")
            serving = champion()
            log(started, f"v{serving} serves, approved by alice")

            page.get_by_role("link", name="Model promotion", exact=True).click()
            frame = page.frame_locator("iframe").first
            frame.locator(f'tr[data-model="{DEMO_MODEL}"]').wait_for()
            frame.locator("time[title]").first.wait_for()  # times.js has shown the times in the viewer's zone
            save(page, out / "model-promotion-overview.png")
            log(started, "model-promotion-overview.png")

            page = browser_page(browser, stack, "carol", dark=True)
            page.get_by_role("link", name="Model promotion", exact=True).click()
            frame = page.frame_locator("iframe").first
            frame.get_by_role("link", name=DEMO_MODEL, exact=True).click()
            frame.get_by_role("link", name="Roll back").click()
            frame.locator("textarea[name=reason]").fill(ROLLBACK_REASON.format(candidate=serving, champion=1))
            frame.get_by_role("button", name=re.compile(r"^(Roll back to v\d+|Trigger rollback)$")).click()
            run_link = frame.locator("#rollback-result a").first
            run_link.wait_for()
            rollback_run = run_link.inner_text()
            if (state := carol.wait_for_run("model_rollback", rollback_run, timeout=RUN_TIMEOUT)) != "success":
                raise SystemExit(f"the rollback ended {state}: {admin.task_states('model_rollback', rollback_run)}")
            frame.get_by_role("link", name="back to the model").click()
            frame.locator("#history tbody tr").first.wait_for()
            # the versions and the history at the top of the view (production health comes first on the page)
            frame.get_by_role("heading", name="Versions").evaluate("h => h.scrollIntoView({block: 'start'})")
            save(page, out / "model-promotion-rollback.png")
            log(started, "model-promotion-rollback.png")
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go (default: docs/)")
    parser.add_argument("--state-dir", type=Path, help="keep the stack's state (logs) here instead of a temp dir")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the stack
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.state_dir or tmp)
        settings = {"PROMOTION_HEALTH_SCHEDULE": DEMO_HEALTH_SCHEDULE, "PROMOTION_SHADOW_POKE_SECONDS": "10"}
        os.environ.update(settings)
        config = StackConfig(state_dir=root / "stack", airflow_port=0, mlflow_port=0, extra_env=settings)
        stack = ServiceStack(config)
        try:
            stack.start()
            os.environ.update(stack.package_env())
            log(started, f"stack up: {stack.airflow_url}")
            serving = argparse.Namespace(
                no_serving=False, scoring_port=free_port(), label_delay=20.0, announce_every=100, traffic_rate=2.0
            )
            prepare_demo(stack, serving)
            story(stack, args.out, started)
        finally:
            stack.stop()
    log(started, f"done: {args.out}")


if __name__ == "__main__":
    main()
