"""The review app in a real headless browser (Debian chromium + chromedriver through Selenium).

A reviewer opens the night, filters, opens a group, sees thumbnails and scores, signs in, records
a decision, reloads and sees it stored. A hostile title and image uri render inert. Screenshots
go to ``$SSPR_TEST_ARTIFACTS`` (default ``var/test-artifacts``).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.review.conftest import HOSTILE_TITLE, RUN_DATE

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.browser


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("SSPR_TEST_ARTIFACTS", REPO / "var" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def server(review_config):
    """The app served by uvicorn on a free local port, in a thread."""
    import uvicorn

    from review.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(review_config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the review app did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are missing: run bin/install-browser (make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def click_and_wait(driver, element) -> None:
    """Clicks something that loads a new page and waits until the new document has loaded.

    A navigation gives the document a new ``performance.timeOrigin``; polling it is robust where
    ``staleness_of`` is not (chromium sometimes answers the old node with an inspector error).
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    origin_script = "return [performance.timeOrigin, document.readyState]"
    old_origin = driver.execute_script(origin_script)[0]
    element.click()

    def loaded(d) -> bool:
        try:
            origin, state = d.execute_script(origin_script)
        except WebDriverException:  # mid-navigation: the old context is gone, the new one not ready
            return False
        return origin != old_origin and state == "complete"

    WebDriverWait(driver, 20).until(loaded, "the page did not navigate")


def assert_no_dialog(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - the property raises when no dialog is open


def test_a_reviewer_goes_from_a_night_to_a_stored_decision(server, browser, review_config):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server + "/")
    assert browser.find_element(By.ID, "group-count").text.startswith("3 groups")
    assert browser.find_elements(By.CSS_SELECTOR, "figure.histogram svg line.threshold")

    Select(browser.find_element(By.ID, "f-supplier")).select_by_value("s-dairy")
    click_and_wait(browser, browser.find_element(By.ID, "f-apply"))
    assert browser.find_element(By.ID, "group-count").text.startswith("2 groups")
    assert "supplier=s-dairy" in browser.current_url

    click_and_wait(browser, browser.find_element(By.LINK_TEXT, "g-milk"))
    assert browser.find_element(By.ID, "group-id").text == "g-milk"
    thumbs = browser.find_elements(By.CSS_SELECTOR, "img.thumb")
    assert len(thumbs) == 3
    loaded = lambda driver: all(
        driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", t) for t in thumbs
    )
    WebDriverWait(browser, 20).until(loaded, "the thumbnails did not load")  # decoded: naturalWidth > 0
    pairs = browser.find_element(By.ID, "pairs").text
    assert "0.950" in pairs and "0.970" in pairs and "0.620" in pairs
    assert browser.find_element(By.CSS_SELECTOR, "#pairs tr.weakest").text.startswith("m2 ↔ m3")
    assert browser.find_element(By.ID, "group-decision").text == "undecided"

    click_and_wait(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Sign in"))
    browser.find_element(By.ID, "reviewer-name").send_keys("ana@example.com")
    click_and_wait(browser, browser.find_element(By.ID, "signin-submit"))
    assert browser.find_element(By.ID, "group-id").text == "g-milk"  # back where the reviewer was
    click_and_wait(browser, browser.find_element(By.ID, "confirm-group"))
    assert browser.find_element(By.ID, "group-decision").text.startswith("confirmed by ana@example.com")
    click_and_wait(browser, browser.find_elements(By.CSS_SELECTOR, "button.reject-member")[2])  # m3: not a duplicate

    browser.refresh()
    assert browser.find_element(By.ID, "group-decision").text.startswith("confirmed by ana@example.com")
    assert "not a duplicate" in browser.find_element(By.CSS_SELECTOR, "tr.member[data-listing='m3']").text
    browser.save_screenshot(str(artifacts_dir() / "review-group.png"))
    rows = (
        sqlite3.connect(review_config.review.decisions_db)
        .execute("SELECT listing_id, decision, reviewer FROM review_decisions ORDER BY listing_id")
        .fetchall()
    )
    assert rows == [("", "confirm", "ana@example.com"), ("m3", "reject", "ana@example.com")]

    browser.get(server + f"/runs/{RUN_DATE}?undecided=1")
    assert browser.find_element(By.ID, "group-count").text.startswith("2 groups")
    browser.get(server + "/calibration")
    assert "decided pairs" in browser.find_element(By.ID, "precision-overall").text
    browser.save_screenshot(str(artifacts_dir() / "review-calibration.png"))


def test_hostile_title_and_image_uri_render_inert(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + f"/runs/{RUN_DATE}/groups/g-evil")
    assert_no_dialog(browser)
    row = browser.find_element(By.CSS_SELECTOR, "tr.member[data-listing='e1']")
    assert row.find_element(By.CSS_SELECTOR, "td.title").text == HOSTILE_TITLE
    assert row.find_elements(By.TAG_NAME, "script") == []
    assert row.find_elements(By.TAG_NAME, "img") == []  # javascript: is never an image source
    assert "no image" in row.text
    sources = [i.get_attribute("src") or "" for i in browser.find_elements(By.TAG_NAME, "img")]
    assert not any(s.startswith(("javascript:", "data:text")) for s in sources)
    browser.save_screenshot(str(artifacts_dir() / "review-hostile.png"))
    assert_no_dialog(browser)
