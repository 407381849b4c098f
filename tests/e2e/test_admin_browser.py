"""The admin pages in a real browser (headless Chromium through selenium), against the real service
started by the init script in a scratch home: log in with the token, start one more process of
the default worker type and see the desired count rise, launch a job and see it succeed, find
it on the Jobs page (filtered), re-drive a dead job from the Dead tab and follow it on its own
page to success, cancel a running job from its page, pause and resume a queue, see the charts
of the last hour, read the operator's actions on the Audit
page, reset the counts, stop the type. Takes one screenshot per page: the README's pictures,
written to docs/ only with ``UPDATE_SCREENSHOTS=1`` (else to a scratch directory, so that
``make test`` leaves the checkout as it found it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from enstratus_workers.demo import pages_hint
from enstratus_workers.layout import Layout
from tests import servicehome as sh
from tests.conftest import CI

# Installing Chromium on a fresh machine takes a minute or two of this budget; the run itself
# takes some 20 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS = sh.REPO / "docs"
SHOTS = DOCS      # where this run's screenshots go (``_screenshots``)
WAIT_S = 30


@pytest.fixture(autouse=True)
def _screenshots(tmp_path_factory, monkeypatch):
    if os.environ.get("UPDATE_SCREENSHOTS") != "1":
        monkeypatch.setitem(globals(), "SHOTS", tmp_path_factory.mktemp("screenshots"))


def _have_browser() -> bool:
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium and chromium-driver, installed when missing: in CI or fail, elsewhere or skip."""
    if not _have_browser():
        try:
            for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
                subprocess.run(cmd, check=True, capture_output=True, timeout=240,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.SubprocessError) as exc:
            reason = f"cannot install chromium and chromium-driver: {exc!r}"
            if CI:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
    if not _have_browser():
        (pytest.fail if CI else pytest.skip)("chromium or chromedriver missing after the install")
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture
def service(tmp_path):
    """The whole service (publisher, subscriber, pinger, admin) of a scratch home; admin on a free port."""
    home = sh.make_home(tmp_path)
    # the pages refresh every second (3 by default): the test waits on what they show
    sh.set_keys(home / "services" / "worker" / "classes" / "admin.cfg", {"port": 0, "refresh": 1})
    try:
        r = sh.init(home, "start")
        assert r.returncode == 0, r.stdout + r.stderr
        run = home / "services" / "worker" / "run"
        url = next(run.glob("admin@*.url")).read_text().strip()
        token = (run / "admin.token").read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        yield url, token, home
    finally:
        r = sh.init(home, "stop")
        leftovers = sh.our_processes(home)
        for pid in leftovers:  # a failed stop must not leave processes behind
            os.kill(pid, 9)
        assert r.returncode == 0 and not leftovers, r.stdout + r.stderr


@pytest.fixture
def browser(chromium, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # nothing outside is reachable: never fetch a driver
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path,
                                              log_output=str(tmp_path / "chromedriver.log")), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, predicate, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        try:
            return predicate(d)
        except StaleElementReferenceException:  # the live part was swapped mid-read: look again
            return False
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(check, message=what)


def cell(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text.strip()


def submit(url: str, token: str, job: dict) -> int:
    """A job submitted by a script, with the token (not through the pages); its id."""
    request = urllib.request.Request(url + "jobs", data=json.dumps(job).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
        return json.load(answer)["job"]["job_id"]


def screenshot(driver, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    tmp = path.with_suffix(".tmp.png")
    assert driver.save_screenshot(str(tmp)), f"no screenshot for {name}"
    shutil.move(tmp, path)
    return path


SCREENSHOTS = ("status.png", "launch.png", "jobs.png", "dead.png", "job.png", "charts.png", "audit.png")


def test_operator_logs_in_starts_a_worker_launches_a_job_and_sees_it(service, browser):
    from selenium.webdriver.common.by import By

    url, token, home = service
    row = 'tr[data-type="default"]'
    # What make run prints at its end leads here: this status page, and the token's file
    assert pages_hint(Layout(home)).startswith(f"Status page: {url}ui/status\n  log in with the token in "
                                               "services/worker/run/admin.token")
    # A job a script submitted that dies at its only attempt (test.flaky fails before attempt 2):
    # it is dead by the time the operator opens the Dead tab
    dying = submit(url, token, {"action": "test.flaky", "arguments": {"succeed_on": 2}, "max_attempts": 1})

    # Given the status page asked for without a session, the login form comes instead
    browser.get(url + "ui/status")
    assert browser.find_element(By.ID, "token").is_displayed()
    # When the operator logs in with the token
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    # Then the status page shows the default worker type: desired 2-2, and (the subscriber
    # running) 2 on-line, and its queue with its consumer
    wait_for(browser, lambda d: d.current_url.endswith("/ui/status") and cell(d, f"{row} td.desired") == "2–2",
             "the default type's desired processes")
    wait_for(browser, lambda d: cell(d, f"{row} td.online") == "2", "two default workers on-line")
    wait_for(browser, lambda d: cell(d, 'tr[data-queue="default"] td.consumers') == "1", "one consumer of default")

    # When start (the up-arrow) is clicked, the desired count rises by one process
    browser.find_element(By.CSS_SELECTOR, f"{row} button.start").click()
    wait_for(browser, lambda d: cell(d, f"{row} td.desired") == "3–3", "desired 3-3 after start")
    assert "enabled, desired 3–3 processes" in cell(browser, "#message")
    # and the subscriber follows: a third worker comes on-line
    wait_for(browser, lambda d: cell(d, f"{row} td.online") == "3", "three default workers on-line")
    screenshot(browser, "status.png")

    # When a job is launched from the Launch page
    browser.find_element(By.ID, "nav-launch").click()
    wait_for(browser, lambda d: d.current_url.endswith("/ui/launch"), "the launch page")
    action = browser.find_element(By.ID, "action")
    action.clear()
    action.send_keys("echo")
    arguments = browser.find_element(By.ID, "arguments")
    arguments.clear()
    arguments.send_keys('{"hello": "from the browser"}')
    browser.find_element(By.ID, "launch-button").click()
    # Then its outcome is shown: succeeded, with the echoed arguments
    outcome = wait_for(browser, lambda d: (o := d.find_element(By.ID, "outcome"))
                       and o.get_attribute("data-status") == "succeeded" and o, "the job to succeed")
    job_id = outcome.get_attribute("data-job")
    assert "from the browser" in outcome.find_element(By.CSS_SELECTOR, "pre.result").text
    screenshot(browser, "launch.png")

    # When the Jobs page is opened, the job is there with its outcome and counted
    browser.find_element(By.ID, "nav-jobs").click()
    job_row = f'tr[data-job="{job_id}"]'
    wait_for(browser, lambda d: cell(d, f"{job_row} td.status") == "succeeded", "the job on the Jobs page")
    assert "from the browser" in cell(browser, f"{job_row} td.outcome")
    assert int(cell(browser, "td.count-succeeded")) >= 1
    # and filtering by its action keeps it, and only jobs of that action
    browser.find_element(By.ID, "action-filter").send_keys("echo")
    browser.find_element(By.ID, "apply-filter").click()
    wait_for(browser, lambda d: "action=echo" in d.current_url and "Jobs matching the filters" in cell(d, "#live")
             and cell(d, f"{job_row} td.status") == "succeeded", "the Jobs page filtered by action")
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{dying}"]')
    screenshot(browser, "jobs.png")
    # And resetting the counts starts them from nothing, the job staying listed
    browser.find_element(By.ID, "reset-stats").click()
    wait_for(browser, lambda d: cell(d, "td.count-total") == "0", "counts reset")
    assert cell(browser, f"{job_row} td.status") == "succeeded"

    # When the Dead tab is opened, the job that died is there with its error
    browser.find_element(By.ID, "nav-dead").click()
    dead_row = f'#dead tr[data-job="{dying}"]'
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, dead_row), "the dead job on the Dead tab")
    assert "transient failure on attempt 1" in cell(browser, f"{dead_row} td.outcome")
    screenshot(browser, "dead.png")
    # and its Re-drive is clicked: it leaves the tab, pending again
    browser.find_element(By.CSS_SELECTOR, f"{dead_row} button.retry").click()
    wait_for(browser, lambda d: f"job {dying} re-driven" in cell(d, "#message"), "the re-drive answered")
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, dead_row), "the job gone from the Dead tab")
    # Then on its own page it succeeds at its second attempt: two bars on its timeline, the
    # first with the error that killed it, both with their worker's host
    browser.get(url + f"ui/jobs/{dying}")
    wait_for(browser, lambda d: d.find_element(By.ID, "job").get_attribute("data-status") == "succeeded"
             and len(d.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")) == 2, "the re-driven job succeeding")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attempts-timeline rect.bar")) == 2
    assert "transient failure on attempt 1" in cell(browser, '#attempts tr[data-attempt="1"] td.error')
    assert cell(browser, '#attempts tr[data-attempt="2"] td.outcome') == "succeeded"
    screenshot(browser, "job.png")

    # When a long job is running, and Cancel is clicked on its page, its action is told to stop
    # (sleep ends early when cancelled) and the job ends cancelled
    sleeper = submit(url, token, {"action": "sleep", "arguments": {"seconds": 120}})
    browser.get(url + f"ui/jobs/{sleeper}")
    wait_for(browser, lambda d: d.find_element(By.ID, "job").get_attribute("data-status") == "running",
             "the long job running")
    browser.find_element(By.ID, "cancel").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "job").get_attribute("data-status") == "cancelled",
             "the long job cancelled")
    assert not browser.find_elements(By.ID, "cancel")

    # When the default queue is paused from its row on the status page, the row says so, and
    # when it is resumed, its jobs are relayed again
    browser.find_element(By.ID, "nav-status").click()
    relay = 'tr[data-queue="default"] td.relay'
    wait_for(browser, lambda d: cell(d, relay).startswith("relayed"), "the default queue relayed")
    browser.find_element(By.CSS_SELECTOR, f"{relay} button.pause").click()
    wait_for(browser, lambda d: cell(d, relay).startswith("paused since"), "the default queue paused")
    assert "queue default: paused" in cell(browser, "#message")
    browser.find_element(By.CSS_SELECTOR, f"{relay} button.resume").click()
    wait_for(browser, lambda d: cell(d, relay).startswith("relayed"), "the default queue relayed again")

    # When the status page's charts are looked at, the attempts of the last minutes are drawn
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#chart-jobs g[data-series="succeeded"]')
             and float(d.find_element(By.CSS_SELECTOR, '#chart-jobs g[data-series="succeeded"]')
                       .get_attribute("data-total")) >= 2, "the charts of the last hour")
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-action="test.flaky"] td.attempts').text == "2"
    browser.execute_script("document.getElementById('charts').scrollIntoView()")
    screenshot(browser, "charts.png")
    browser.execute_script("window.scrollTo(0, 0)")

    # When the Audit page is read, the operator's actions are there, by their session
    browser.find_element(By.ID, "nav-audit").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#audit tr[data-action="job.retry"]'), "the audit log")
    actions = [e.get_attribute("data-action") for e in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert actions[:7] == ["queue.resume", "queue.pause", "job.cancel", "job.retry", "jobs.stats_reset",
                           "instance.start", "session.login"], actions
    retry = '#audit tr[data-action="job.retry"]'
    assert cell(browser, f"{retry} td.actor").startswith("session:") and cell(browser, f"{retry} td.target") == f"job {dying}"
    assert '"status": "dead"' in browser.find_elements(By.CSS_SELECTOR, f"{retry} td.state")[0].text
    screenshot(browser, "audit.png")

    # When stop (the red X) is clicked on the status page, the type is disabled
    browser.find_element(By.ID, "nav-status").click()
    wait_for(browser, lambda d: cell(d, f"{row} td.enabled") == "yes", "the status page again")
    browser.find_element(By.CSS_SELECTOR, f"{row} button.stop").click()
    wait_for(browser, lambda d: cell(d, f"{row} td.enabled") == "no", "the default type disabled")
    # and its workers are retired
    wait_for(browser, lambda d: cell(d, f"{row} td.online") == "0", "no default worker on-line")
    for name in SCREENSHOTS:
        assert (SHOTS / name).stat().st_size > 10_000 and time.time() - (SHOTS / name).stat().st_mtime < 300
