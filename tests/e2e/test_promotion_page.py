"""The "Model promotion" page and the human paths around it, on the real stack: from the attacker's side with plain
HTTP, and as people use it, in a real browser (Playwright driving Debian's chromium).

One model and one run waiting at its approval gate are shared by the browser tests, in file order, as in life: the
triggerer and a non-reviewer look at the request and cannot answer it (nothing changes), a reviewer follows the page's
links from Airflow's frame (to the DAG, the run, Required Actions, MLflow), then approves it (the page shows the new
champion, the reviewer and the reason), then on-call rolls it back from the page (the page shows the previous version
restored and the rollback in the history). Screenshots go to ``PROMOTION_SCREENSHOTS_DIR``
(default: the test's temp folder); ``PROMOTION_SCREENSHOTS_DIR=docs`` refreshes the README's.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import requests
import yaml

from include.promotion.audit import log as audit
from include.promotion.config import dag_id_for
from include.promotion.registry import client as mlflow_client
from include.promotion.registry.accounts import READER_ACCOUNT
from scripts.airflow_api import AirflowAPIError
from tests.e2e.conftest import known_to_airflow
from tests.support import Gate, champion, seed_champion, snapshot, unique

pytestmark = pytest.mark.e2e

DEMO = Path(__file__).resolve().parents[2] / "include" / "models" / "fraud-detector.yaml"
CHROMIUM_MISSING = "The browser tests need Debian's chromium: run  sudo apt-get install -y chromium"
# A reason that would run or render as markup anywhere it was not escaped.
HOSTILE = '<script>window.injected = 1</script><b id="injected">not bold</b> & "quoted"'
WIDTH, HEIGHT = 1280, 800
# What Chromium logs when the sandbox of Airflow's frame refuses a link (no allow-top-navigation, no allow-popups)
REFUSED_NAVIGATION = ("Unsafe attempt to initiate navigation", "Blocked opening")


# -- the shared gate -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gate_run(models_dir: Path, as_user: Callable) -> tuple[str, str, str, str]:
    """A model whose champion bob approved for a hostile reason, and alice's retraining run, triggered: (name, DAG,
    run, champion). The first test asks for it, so that the run trains while that test checks the routes."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(
        name=unique("page"),
        schedule=None,
        data={"source": "builtin", "dataset": "synthetic_transactions", "rows": 3000, "seed": 11},
        estimator={
            "class": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500, "class_weight": "balanced"},
        },
    )
    (models_dir / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    dag_id = dag_id_for(cfg["name"])
    alice = as_user("alice")
    known_to_airflow(as_user("admin"), cfg["name"])
    seeded = seed_champion(cfg["name"], reason=HOSTILE)
    return cfg["name"], dag_id, alice.trigger(dag_id), seeded


@pytest.fixture(scope="module")
def gate(gate_run: tuple[str, str, str, str], as_user: Callable) -> Gate:
    """``gate_run``, waiting at its approval gate."""
    name, dag_id, run_id, seeded = gate_run
    as_user("alice").wait_for_gate(dag_id, run_id)
    candidate = mlflow_client.client().get_model_version_by_alias(name, "challenger").version
    return Gate(name, dag_id, run_id, seeded, candidate)


# Both evaluation curves of a version are on the page and loaded (a broken image has no natural width).
CURVES_LOADED = """() => {
    const curves = [...document.querySelectorAll('img[src$="_curve.png"]')];
    return curves.length === 2 && curves.every(i => i.complete && i.naturalWidth > 0);
}"""


# -- the browser ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium under Playwright (its own browser download is not reachable); missing: a failure."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(CHROMIUM_MISSING, pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("PROMOTION_SCREENSHOTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def sign_in(browser, airflow) -> Iterator[Callable[..., Any]]:
    """``sign_in("bob", login_page=True)``: a page of a new browser context (one per user), signed in as that user:
    on Airflow's login page, or (quicker, for the paths that are not about signing in) with the session cookie the
    login page sets, from ``POST /auth/token``. MLflow asks for its own login (HTTP basic): the browser gives its
    read-only account's."""
    contexts = []
    passwords = airflow.passwords()
    mlflow_login = {
        "username": READER_ACCOUNT,
        "password": airflow.state.secrets["mlflow_reader_password"],
        "origin": airflow.mlflow_url,
    }

    def open_as(user: str, login_page: bool = False, dark: bool = False) -> Any:
        scheme = "dark" if dark else "light"
        context = browser.new_context(
            viewport={"width": WIDTH, "height": HEIGHT}, color_scheme=scheme, http_credentials=mlflow_login
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        if login_page:
            page.goto(f"{airflow.airflow_url}/auth/login")
            page.get_by_label("Username").fill(user)
            page.get_by_label("Password").fill(passwords[user])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)
        else:
            context.add_cookies([{"name": "_token", "value": airflow.api_token(user), "url": airflow.airflow_url}])
            page.goto(airflow.airflow_url)
        return page

    yield open_as
    for context in contexts:
        context.close()


def screenshot(page: Any, path: Path) -> None:
    """The page as a small PNG (256 colours): what the README shows, and what a failed run leaves to look at."""
    from PIL import Image

    Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(256).save(path, optimize=True)
    path.chmod(0o644)


def promotion_frame(page: Any) -> Any:
    """The Model promotion page, as the Airflow UI shows it: in its frame."""
    return page.frame_locator("iframe").first


def refused_navigations(page: Any) -> list[str]:
    """The page's console messages (its frames' included) saying the browser refused a link, from now on."""
    refused: list[str] = []
    page.on("console", lambda message: refused.extend(m for m in REFUSED_NAVIGATION if m in message.text))
    return refused


# -- from the attacker's side --------------------------------------------------------------------------------------
ROUTES = [
    ("/promotion/", "page"),
    ("/promotion/models/{name}", "page"),
    ("/promotion/models/{name}/rollback", "page"),
    ("/promotion/lineage?data_version=sha256:x", "page"),
    ("/promotion/api/models", "api"),
    ("/promotion/api/models/{name}", "api"),
    ("/promotion/api/lineage?data_version=sha256:x", "api"),
]


@pytest.mark.usefixtures("gate_run")  # (the browser tests' run reaches its gate meanwhile)
def test_every_route_needs_an_airflow_login_with_read_access_to_the_models_dags(airflow) -> None:
    name = "fraud-detector"
    base = airflow.airflow_url
    forged = jwt.encode({"sub": "admin", "role": "admin", "exp": int(time.time()) + 600}, "not-the-secret", "HS512")
    nobody = airflow.api_token("nobody")  # signed in, with no role: may read no DAG
    alice = airflow.api_token("alice")
    for route, kind in ROUTES:
        url = base + route.format(name=name)
        anonymous = requests.get(url, allow_redirects=False, timeout=30)
        if kind == "api":
            assert anonymous.status_code == 401, url
        else:
            assert anonymous.status_code == 303, url
            assert anonymous.headers["location"].startswith("/auth/login?next=%2Fpromotion%2F"), url
        for headers in ({"Authorization": f"Bearer {forged}"}, {"Cookie": f"_token={forged}"}):
            assert requests.get(url, headers=headers, allow_redirects=False, timeout=30).status_code == 403, url
        assert requests.get(url, headers={"Authorization": f"Bearer {nobody}"}, timeout=30).status_code == 403, url
        allowed = requests.get(url, headers={"Authorization": f"Bearer {alice}"}, timeout=60)
        assert allowed.status_code == 200, (url, allowed.text[:300])
    unknown = requests.get(
        f"{base}/promotion/api/models/no-such-model", headers={"Authorization": f"Bearer {alice}"}, timeout=30
    )
    assert unknown.status_code == 404
    bad_page = requests.get(
        f"{base}/promotion/api/models/{name}?page=0", headers={"Authorization": f"Bearer {alice}"}, timeout=30
    )
    assert bad_page.status_code == 400 and "between 1 and" in bad_page.json()["detail"]
    page = requests.get(f"{base}/promotion/", cookies={"_token": alice}, timeout=60)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "sha256-" not in policy
    assert "<script>" not in page.text and "<style" not in page.text
    assets = re.findall(r'(?:src|href)="(/promotion/static/[^"]+)"', page.text)
    assert len(assets) == 4, assets  # the stylesheet, theme.js, times.js, links.js, behind the same login as the pages
    for asset in assets:
        assert requests.get(base + asset, allow_redirects=False, timeout=30).status_code == 401
        served = requests.get(base + asset, cookies={"_token": alice}, timeout=30)
        assert served.status_code == 200 and served.headers["content-type"].startswith(("text/css", "text/javascript"))
    injection = {"data_version": "x' or name != '"}
    quoted = requests.get(f"{base}/promotion/api/lineage", params=injection, cookies={"_token": alice}, timeout=30)
    assert quoted.status_code == 400


# -- the human paths, in a browser ---------------------------------------------------------------------------------
def test_the_triggerer_and_a_non_reviewer_see_the_request_but_cannot_answer(gate, sign_in, as_user, airflow) -> None:
    before = snapshot(gate.name)
    task = f"/dags/{gate.dag_id}/runs/{gate.run_id}/tasks/approve/required_actions"
    told = {
        "alice": "You (alice) may not answer: you triggered this run",
        "mallory": "You (mallory) may not answer: you are not one of the model's reviewers",
    }
    for user in ("alice", "mallory"):  # alice triggered the run; mallory is no reviewer
        page = sign_in(user)
        # the Model promotion page tells them before they click: who may answer, and why they may not
        page.get_by_role("link", name="Model promotion").click()
        waiting = promotion_frame(page).locator(f'tr[data-model="{gate.name}"] .answerers')
        assert waiting.inner_text() == "May answer: bob (not alice, who triggered the run)."
        assert told[user] in promotion_frame(page).locator(f'tr[data-model="{gate.name}"] .may-not').inner_text()
        page.goto(airflow.airflow_url + task)
        page.get_by_text(f"Promote {gate.name} v{gate.candidate} to production?").first.wait_for()
        # the evidence's ROC and PR curves load inline, from this app, with the viewer's Airflow login
        page.wait_for_function(CURVES_LOADED, timeout=30_000)
        # Airflow 3.3 shows the form to every viewer and refuses an answer from anyone not assigned
        page.locator("#element_reason").fill(f"{user} approves")
        page.get_by_test_id("hitl-option-Approve").click()
        page.get_by_text("You do not have permission to perform this action.").first.wait_for()
        with pytest.raises(AirflowAPIError) as refused:  # and the REST API refuses it the same way
            as_user(user).answer(gate.dag_id, gate.run_id, "Approve", f"{user} approves")
        assert refused.value.status_code == 403
    assert snapshot(gate.name) == before
    assert as_user("bob").task_states(gate.dag_id, gate.run_id)["approve"] == "awaiting_input"


def test_links_open_where_they_point_from_airflows_frame_and_directly(gate, sign_in, airflow) -> None:
    """Airflow's frame is sandboxed (no top navigation, no popups): links.js sends a link to an Airflow page through
    Airflow's own router and opens MLflow in a new tab; opened directly, the same links are plain links."""
    page = sign_in("bob")
    refused = refused_navigations(page)
    base = airflow.airflow_url
    run = f"/dags/{gate.dag_id}/runs/{quote(gate.run_id, safe='')}"
    page.get_by_role("link", name="Model promotion").click()
    row = promotion_frame(page).locator(f'tr[data-model="{gate.name}"]')
    assert row.locator(".may").inner_text() == "You may answer it."  # bob: a reviewer who did not trigger it
    for path, shown in (
        (f"/dags/{gate.dag_id}", page.get_by_text(gate.dag_id)),  # the model's DAG
        (f"{run}/tasks/approve/required_actions", page.get_by_text(f"Promote {gate.name} v{gate.candidate}")),
        (run, page.get_by_text(gate.run_id)),  # its last retraining run
    ):
        row.locator(f'a[href="{path}"]').click()
        page.wait_for_url(base + path)  # Airflow itself went there, in the whole window
        shown.first.wait_for()
        page.go_back()  # and the browser's Back button returns to the view
        row.wait_for()
        assert page.url.startswith(f"{base}/plugin/"), page.url
    frame = promotion_frame(page)
    frame.get_by_role("link", name=gate.name, exact=True).click()
    candidate = frame.locator(f'#versions tr[data-version="{gate.candidate}"]')
    with page.context.expect_page() as opened:
        candidate.get_by_role("link", name=f"v{gate.candidate}", exact=True).click()
    mlflow = opened.value
    mlflow.wait_for_url(mlflow_client.version_url(gate.name, gate.candidate))
    mlflow.get_by_text(f"Version {gate.candidate}").first.wait_for()  # MLflow's own page of the version
    mlflow.close()
    candidate.locator(f'a[href="{run}"]').click()  # the run that trained the version
    page.wait_for_url(base + run)
    assert refused == []

    page.goto(f"{base}/promotion/")  # opened directly, not framed: a plain link, the same place
    page.locator(f'tr[data-model="{gate.name}"] a[href="/dags/{gate.dag_id}"]').click()
    page.wait_for_url(f"{base}/dags/{gate.dag_id}")
    assert refused == []


def test_a_reviewer_approves_in_required_actions_and_the_page_shows_the_new_champion(
    gate, sign_in, as_user, airflow, screenshots
) -> None:
    reason = f"recall up 4 points on weekend traffic {HOSTILE}"
    page = sign_in("bob", login_page=True)
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Required Actions").click()
    page.get_by_text(f"Promote {gate.name} v{gate.candidate} to production?").first.click()
    # the evidence: candidate and champion side by side, the champion's approval reason as text, never as markup
    page.get_by_role("table").filter(has_text="roc_auc").first.wait_for()
    page.get_by_text(f"approved by bob: “{HOSTILE}”").first.wait_for()
    assert page.locator("#injected").count() == 0 and page.evaluate("window.injected") is None
    screenshot(page, screenshots / "model-promotion-evidence.png")
    page.locator("#element_reason").fill(reason)
    page.get_by_test_id("hitl-option-Approve").click()
    assert as_user("bob").wait_for_run(gate.dag_id, gate.run_id, timeout=120) == "success"
    promoted = f"Promoted v{gate.candidate} to production (approved by bob; v{gate.champion} archived)."
    assert as_user("bob").run(gate.dag_id, gate.run_id)["note"] == promoted
    page.goto(f"{airflow.airflow_url}/dags/{gate.dag_id}/runs/{quote(gate.run_id, safe='')}")
    page.get_by_text(promoted).first.wait_for()  # Airflow's own view of the run shows the note

    page.get_by_role("link", name="Model promotion").click()
    row = promotion_frame(page).locator(f'tr[data-model="{gate.name}"]')
    row.wait_for()
    text = row.inner_text()
    assert f"v{gate.candidate}" in text and "approved by bob" in text and reason in text
    assert promotion_frame(page).locator("#injected").count() == 0
    # the stylesheet and the script are files of the app, and the page's CSP lets them (and only them) apply
    promotion_frame(page).locator("time[title]").first.wait_for()  # times.js showed it in the viewer's time zone
    # (a script at the end of the body runs once the stylesheet above it has loaded: the style is applied by now)
    assert row.evaluate("r => getComputedStyle(r.closest('.box')).overflowX") == "auto"
    screenshot(page, screenshots / "model-promotion-overview.png")
    assert champion(gate.name) == gate.candidate
    promoted_row = [r for r in audit.rows(gate.name) if r["action"] == "promote"][-1]
    assert promoted_row["reason"] == reason  # what bob typed, kept as typed


def test_on_call_rolls_back_from_the_page_and_sees_it_in_the_history(
    gate, sign_in, as_user, airflow, screenshots
) -> None:
    assert champion(gate.name) == gate.candidate, "needs the previous test's approval"
    reason = f"v{gate.candidate} flags every weekend card; back to v{gate.champion}"
    page = sign_in("carol", dark=True)
    page.get_by_role("link", name="Model promotion").click()
    frame = promotion_frame(page)
    frame.get_by_role("link", name=gate.name, exact=True).click()
    frame.get_by_role("link", name="Roll back").click()
    # the form names the version it restores before anything is triggered
    assert frame.locator("#rollback-target").inner_text() == f"v{gate.champion}"
    frame.locator("textarea[name=reason]").fill(reason)
    frame.get_by_role("button", name=f"Roll back to v{gate.champion}").click()
    # it follows the run to its end, and says how it ended (the run's note)
    frame.locator('#rollback-result[data-state="success"]').wait_for(timeout=120_000)
    done = frame.locator("#rollback-result").inner_text()
    assert f"Rolled back {gate.name}: v{gate.champion} is the champion again, v{gate.candidate} is rolled back." in done
    run_link = frame.locator("#rollback-result a").first
    run_id = run_link.inner_text()
    assert as_user("carol").run("model_rollback", run_id)["state"] == "success"
    refused = refused_navigations(page)
    with page.context.expect_page() as opened:  # the triggered run, in a new tab (ctrl+click) from Airflow's frame
        run_link.click(modifiers=["ControlOrMeta"])
    opened.value.wait_for_url(f"{airflow.airflow_url}/dags/model_rollback/runs/{quote(run_id, safe='')}")
    opened.value.close()
    assert refused == []

    frame.get_by_role("link", name="back to the model").click()
    history = frame.locator("#history tbody tr")
    history.first.wait_for()
    rows = [history.nth(i).inner_text() for i in range(2)]
    assert rows[0].split("\t")[1:5] == [f"v{gate.candidate}", "rollback_demote", "Production → Archived", "carol"]
    assert rows[1].split("\t")[1:5] == [f"v{gate.champion}", "rollback_restore", "Archived → Production", "carol"]
    assert all(reason in r for r in rows)
    assert f"Champion: v{gate.champion}" in frame.locator(".summary").inner_text()
    restored = frame.locator(f'#versions tr[data-version="{gate.champion}"]').inner_text()
    assert "production" in restored and "@champion" in restored
    assert re.search(r"rolled_back", frame.locator(f'#versions tr[data-version="{gate.candidate}"]').inner_text())
    screenshot(page, screenshots / "model-promotion-rollback.png")
    assert champion(gate.name) == gate.champion


def test_a_refused_rollback_shows_validates_message_and_an_alert_and_no_champion_disables_the_form(
    gate, sign_in, airflow, models_dir
) -> None:
    assert champion(gate.name) == gate.champion, "needs the previous test's rollback"
    page = sign_in("carol")
    page.get_by_role("link", name="Model promotion").click()
    frame = promotion_frame(page)
    frame.get_by_role("link", name=gate.name, exact=True).click()
    frame.get_by_role("link", name="Roll back").click()
    # v1 was the first champion: no version to go back to by default; the rolled-back candidate may be named
    plan = frame.locator("#rollback-plan").inner_text()
    assert f"No version to restore by default: {gate.name} v{gate.champion} replaced no earlier champion" in plan
    assert f"v{gate.candidate} (rolled back earlier: tick the box)" in plan
    before = snapshot(gate.name)
    frame.locator("input[name=target_version]").fill("99")
    frame.locator("textarea[name=reason]").fill("try a version that does not exist")
    frame.get_by_role("button", name="Roll back to v99").click()
    frame.locator('#rollback-result[data-state="failed"]').wait_for(timeout=120_000)
    failed = frame.locator("#rollback-result").inner_text()
    assert "ended failed" in failed and f"validate failed: model '{gate.name}' has no version 99" in failed, failed
    run_id = frame.locator("#rollback-result a").first.inner_text()
    assert snapshot(gate.name) == before
    # the failed rollback is an alert on the overview and on the model's page until a rollback of it succeeds
    frame.get_by_role("link", name="Model promotion", exact=True).click()  # the page's own link, in the frame
    alert = f"the last rollback run failed ({run_id}): validate failed: model '{gate.name}' has no version 99"
    row = promotion_frame(page).locator(f'tr[data-model="{gate.name}"]')
    assert alert in row.inner_text()
    promotion_frame(page).get_by_role("link", name=gate.name, exact=True).click()
    assert alert in promotion_frame(page).locator(".alerts").inner_text()

    # a model with no champion: no Roll back button, and its form says why and cannot be submitted
    cfg = yaml.safe_load((models_dir / f"{gate.name}.yaml").read_text())
    cfg["name"] = unique("nochamp")
    (models_dir / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))
    base = airflow.airflow_url
    page.goto(f"{base}/promotion/models/{cfg['name']}")
    assert "Roll back: no champion to roll back" in page.locator(".summary").inner_text()
    assert page.get_by_role("link", name="Roll back").count() == 0
    page.goto(f"{base}/promotion/models/{cfg['name']}/rollback")
    assert (
        f"No rollback is possible: model '{cfg['name']}' has no champion" in page.locator("#rollback-plan").inner_text()
    )
    # the whole form is off (a disabled fieldset): its button and fields cannot be used
    assert page.get_by_role("button", name="Trigger rollback").is_disabled()
    assert page.locator("textarea[name=reason]").is_disabled()


AXE = Path(__file__).resolve().parents[2] / ".cache" / "axe-core-4.14.1" / "axe.min.js"
AXE_MISSING = "The accessibility check needs axe-core from the npm registry: run  make browser"


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page (WCAG 2 A/AA rules and best practices), one line each."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)")
    return [
        f"{v['id']} ({v['impact']}): {v['help']}: {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def test_the_pages_follow_airflows_theme_pass_axe_and_stay_readable_at_800_px(gate, browser, airflow) -> None:
    """In light and dark, at 800 px: axe-core (injected; the context bypasses the page's CSP only for that) finds no
    serious or critical violation on any page, tables say they scroll; framed, the page takes Airflow's theme."""
    if not AXE.exists():
        pytest.fail(AXE_MISSING, pytrace=False)
    base, name = airflow.airflow_url, gate.name
    paths = ("/promotion/", f"/promotion/models/{name}", f"/promotion/models/{name}/rollback")
    paths += (
        f"/promotion/lineage?data_version={quote(snapshot(name)['versions'][gate.champion]['tags']['data_version'])}",
    )
    curve = f"{base}/promotion/models/{name}/versions/{gate.candidate}/roc_curve.png"
    assert requests.get(curve, timeout=30).status_code == 401  # behind the same login as the pages
    carol = {"_token": airflow.api_token("carol")}
    served = requests.get(curve, cookies=carol, timeout=60)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content.startswith(b"\x89PNG")
    assert requests.get(curve.replace("roc_curve", "secrets"), cookies=carol, timeout=30).status_code == 404
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport={"width": 800, "height": 800}, color_scheme=scheme, bypass_csp=True)
        context.add_cookies([{"name": "_token", "value": airflow.api_token("carol"), "url": base}])
        page = context.new_page()
        for path in paths:
            page.goto(base + path)
            page.locator("h1").wait_for()
            if page.locator(".curves").count():  # a challenger's curves (approved by an earlier test: none)
                page.wait_for_function(CURVES_LOADED, timeout=30_000)
            assert serious_violations(page) == [], (scheme, path)
            for box in page.locator(".box:has(table)").all():
                assert box.evaluate("b => getComputedStyle(b).overflowX") == "auto"
            if page.locator(".box:has(table)").count():
                assert page.locator(".scroll-hint").first.is_visible()  # at 800 px the hint says the table scrolls
        # Airflow's own theme wins over the system's: chosen dark on a light system (and light on a dark one)
        chosen = "dark" if scheme == "light" else "light"
        page.goto(base + "/")
        page.evaluate(f"localStorage.setItem('theme', '{chosen}')")
        page.reload()
        page.get_by_role("link", name="Model promotion").click()
        framed = promotion_frame(page).locator("html")
        promotion_frame(page).locator("h1").wait_for()
        assert framed.get_attribute("data-theme") == chosen
        background = promotion_frame(page).locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
        assert background == ("rgb(18, 22, 28)" if chosen == "dark" else "rgb(255, 255, 255)"), background
        context.close()
