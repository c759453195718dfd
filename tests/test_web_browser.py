"""The web page in a real browser (Debian's chromium, headless) against the real Ray scheduler.

Tasks are driven by scripted models (agent/models/scripted.py), named so in each test: a real model
cannot give the same answers twice. Screenshots go to HEARTH_SCREENSHOT_DIR (docs/images when the
docs are refreshed) or the test's tmp dir.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_support import (  # noqa: F401
    browser,
    fill_and_press,
    full_page_screenshot,
    live_site,
    screenshot_dir,
    wait_until,
)
from openclaw_fixtures import make_project
from web_support import recorded_nodes

from cluster import people_tokens
from cluster.api import create_app
from cluster.scheduler_client import RaySchedulerClient

pytestmark = [pytest.mark.browser, pytest.mark.ray]
TOKEN = "browser-admin-token"


@pytest.fixture
def site(scheduler: Any, live_site: Any) -> Any:  # noqa: F811
    app = create_app(RaySchedulerClient(scheduler), Path(scheduler.state_dir) / "hearth.db", TOKEN,
                     plugin_token="plugin-tok")
    return live_site(app)


def log_in(driver: Any, site: Any, token: str = TOKEN) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{site.url}/ui/")
    assert "/ui/login" in driver.current_url and "Log in" in driver.title
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(driver, lambda d: d.find_elements(By.ID, "who"), 30, "the board after logging in")
    assert token not in driver.current_url


def submit(site: Any, project: Path, model: str) -> str:
    reply = httpx.post(f"{site.url}/v1/tasks", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120,
                       json={"project_path": str(project), "prd_path": "tasks/prd.json", "model": model})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def column_of(driver: Any, task_id: str) -> str | None:
    return driver.execute_script(  # type: ignore[no-any-return]
        "const c = document.getElementById('card-' + arguments[0]);"
        "return c ? c.closest('[data-column]').dataset.column : null;", task_id)


def test_log_in_and_see_a_submitted_task_cross_the_board_live_scripted_model(
        site: Any, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    neighbours = [submit(site, make_project(tmp_path, "ask-demo"), "scripted:ask"),
                  submit(site, make_project(tmp_path, "review-demo", approval="each-step"), "scripted:demo")]
    project = make_project(tmp_path, "board-demo")
    log_in(browser, site)
    browser.execute_script("window.notReloaded = true;")
    task_id = submit(site, project, "scripted:sleep-4")
    seen: list[str] = []

    def moved_to(column: str) -> bool:
        where = column_of(browser, task_id)
        if where and (not seen or seen[-1] != where):
            seen.append(where)
        return where == column

    wait_until(browser, lambda d: moved_to("running"), 120, f"{task_id} in the running column")
    wait_until(browser, lambda d: [column_of(d, t) for t in neighbours] == ["waiting_input", "awaiting_approval"],
               120, "the other tasks waiting for people")
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "board.png"))
    wait_until(browser, lambda d: moved_to("done"), 180, f"{task_id} in the done column")
    assert browser.execute_script("return window.notReloaded === true;"), "the page reloaded"
    assert seen[-1] == "done" and "running" in seen, seen
    card = browser.find_element("id", f"card-{task_id}")
    assert "board-demo" in card.text and "step 2/2" in card.text
    for other in neighbours:  # they wait for people who will not come: free their slots
        httpx.post(f"{site.url}/v1/tasks/{other}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    wait_until(browser, lambda d: [column_of(d, t) for t in neighbours] == ["failed", "failed"], 60, "cancelled")


def test_answer_a_question_on_the_task_page_and_the_task_resumes_scripted_ask_model(
        site: Any, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    project = make_project(tmp_path, "ask-web-demo")
    log_in(browser, site)
    browser.get(f"{site.url}/ui/inbox")
    task_id = submit(site, project, "scripted:ask")
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#inbox [data-task='{task_id}']"), 120,
               "the question arriving in the open inbox")
    browser.get(f"{site.url}/ui/tasks/{task_id}")
    for answer in ("teal", "navy"):  # scripted:ask asks once per story
        wait_until(browser, lambda d: "What should answer.txt say?" in d.find_element(By.ID, "question").text, 120,
                   "the question")
        wait_until(browser, lambda d, a=answer: fill_and_press(d, {"answer-text": a}, "answer-send"), 30, "answering")
        wait_until(browser, lambda d, a=answer: f"answered: {a}" in d.find_element(By.ID, "events").text, 60,
                   "the answer in the live event log")
        if answer == "teal":
            browser.save_screenshot(str(screenshot_dir(tmp_path) / "task-answered.png"))
    wait_until(browser, lambda d: d.find_element(By.ID, "task-state").text == "completed", 180, "completed")
    steps = browser.find_element(By.ID, "plan").text
    assert steps.count("done") == 2, steps


def test_approve_a_checkpoint_and_reject_one_with_a_reason_scripted_model(
        site: Any, browser: Any, scheduler: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    name = f"alice-{uuid.uuid4().hex[:6]}"  # the session-wide store may hold an alice already
    token = people_tokens.add(Path(scheduler.state_dir), name, "member")
    project = make_project(tmp_path, "review-web-demo", approval="each-step", approvers=[f"web:{name}"])
    log_in(browser, site, token)
    task_id = submit(site, project, "scripted:demo")
    browser.get(f"{site.url}/ui/tasks/{task_id}")
    wait_until(browser, lambda d: d.find_elements(By.ID, "approval"), 120, "the first checkpoint")
    diff = browser.find_element(By.CSS_SELECTOR, "details.checkpoint .diff")
    assert "hello.txt" in diff.text and diff.find_elements(By.CSS_SELECTOR, "span.gi")  # highlighted "+" lines
    full_page_screenshot(browser, screenshot_dir(tmp_path) / "task-checkpoint.png")
    first = browser.find_element(By.NAME, "checkpoint").get_attribute("value")
    wait_until(browser, lambda d: fill_and_press(d, {"reject-reason": "say hello to the team too"}, "reject"), 30,
               "rejecting")
    wait_until(browser, lambda d: "rejected by" in d.find_element(By.ID, "work").text, 60, "the rejection shown")
    assert "say hello to the team too" in browser.find_element(By.ID, "events").text

    def next_card(d: Any) -> bool:
        fields = d.find_elements(By.NAME, "checkpoint")
        return bool(fields) and fields[0].get_attribute("value") != first

    for _ in range(2):  # US-001 redone after the rejection, then US-002
        wait_until(browser, next_card, 120, "a new checkpoint awaiting a decision")
        first = browser.find_element(By.NAME, "checkpoint").get_attribute("value")
        wait_until(browser, lambda d: fill_and_press(d, {}, "approve"), 30, "approving")
    wait_until(browser, lambda d: d.find_element(By.ID, "task-state").text == "completed", 180, "completed")
    log = browser.find_element(By.ID, "events").text
    assert f"{name} rejected US-001: say hello to the team too" in log and f"{name} approved US-002" in log


def test_nodes_page_shows_vram_bars_from_a_hand_made_nvml_shaped_inventory(
        site: Any, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    async def recorded() -> list[dict[str, Any]]:
        return recorded_nodes()

    site.server.config.app.state.hearth_web.nodes_source = recorded
    log_in(browser, site)
    browser.get(f"{site.url}/ui/nodes")
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".gpu"), 60, "the GPU cards")
    gpus = browser.find_elements(By.CSS_SELECTOR, ".node.alive .gpu")
    assert len(gpus) == 2
    assert "17.5 GiB used" in gpus[0].text and "6.5 GiB free" in gpus[0].text and "qwen2.5-coder-7b" in gpus[0].text
    width = browser.execute_script(
        "const bar = arguments[0].querySelector('.vram-bar'); return bar.querySelector('.used').offsetWidth"
        " / bar.offsetWidth;", gpus[0])
    assert abs(width - 17946 / 24576) < 0.03, width
    lost = browser.find_element(By.CSS_SELECTOR, ".node.lost")
    assert "lost" in lost.text and "none (CPU only)" in lost.text
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "nodes.png"))


def test_submit_page_shows_prd_problems_and_the_plan_before_submitting_scripted_model(
        site: Any, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    project = make_project(tmp_path, "submit-demo")
    submit(site, project, "scripted:demo")  # the cluster knows a project once something was submitted to it
    prd = (project / "tasks" / "prd.json").read_text()
    log_in(browser, site)
    browser.get(f"{site.url}/ui/submit")
    Select(browser.find_element(By.ID, "project")).select_by_visible_text("submit-demo")

    def paste(text: str) -> None:
        browser.execute_script("const box = document.getElementById('prd'); box.value = arguments[0];"
                               "box.dispatchEvent(new Event('input', {bubbles: true}));", text)

    paste(prd.replace('"dependsOn": [\n        "US-001"\n      ]', '"dependsOn": ["US-404"]'))
    wait_until(browser, lambda d: d.find_element(By.ID, "prd-error-story").text == "US-002", 30, "the PRD error")
    assert browser.find_element(By.ID, "prd-error-field").text == "dependsOn"
    paste(prd)
    table = wait_until(browser, lambda d: d.find_elements(By.ID, "plan-table"), 30, "the plan table")[0]
    rows = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert rows[0].startswith("1 US-001") and rows[1].startswith("2 US-002"), rows
    browser.find_element(By.ID, "model").send_keys("scripted:demo")
    browser.save_screenshot(str(screenshot_dir(tmp_path) / "submit.png"))
    browser.find_element(By.ID, "submit").click()
    wait_until(browser, lambda d: "/ui/tasks/T-" in d.current_url, 60, "the new task's page")
    assert "Submitted T-" in browser.find_element(By.CSS_SELECTOR, ".flash.ok").text
    wait_until(browser, lambda d: d.find_element(By.ID, "task-state").text == "completed", 180, "completed")
