"""End to end in headless Chromium: the page at / builds a history by searching titles, shows recommendations,
switches to a dataset user, and adds an item (with an image) that then appears in the rankings.

Uses Debian's chromium and chromium-driver (`make test` installs them when missing; no browser is downloaded) and
a real uvicorn server on a loopback port in a background thread.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny import NUM_ITEMS, png_bytes, write_tiny_dataset
from tiny import text_only_model as text_model

from pmmrec.data import load_dataset
from pmmrec.serving import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason="needs Debian's chromium and chromium-driver at /usr/bin (`make test` installs them with apt-get)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app over the tiny dataset and model, served by uvicorn on 127.0.0.1 (a free port) in a thread."""
    import uvicorn

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PMMREC_CACHE", str(tmp_path_factory.mktemp("pmmrec-cache")))
        data = write_tiny_dataset(tmp_path_factory.mktemp("browser") / "data", preset="serving")
        app = create_app(text_model(), load_dataset(data))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_build_a_history_see_recommendations_and_add_an_item(server: str, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)

    def ids(selector: str) -> list[str]:
        """Item ids of the rows under `selector`, read in one script call (the lists are re-rendered often)."""
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((li) => li.dataset.itemId);", selector
        )

    def text(element_id: str) -> str:
        return browser.execute_script("return document.getElementById(arguments[0]).textContent;", element_id)

    browser.get(server + "/")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert f"{NUM_ITEMS} items" in text("model-summary")

    def search_and_add(query: str) -> str:
        box = browser.find_element(By.ID, "item-search")
        box.clear()
        box.send_keys(query)
        wait.until(
            lambda d: d.execute_script(
                "const rows = [...document.querySelectorAll('#search-results li')];"
                "return rows.length > 0 && rows.every((li) => li.textContent.toLowerCase().includes(arguments[0]));",
                query,
            )
        )
        item_id = ids("#search-results li")[0]
        browser.find_element(By.CSS_SELECTOR, f'#search-results li[data-item-id="{item_id}"] button').click()
        return item_id

    # Build a history of two items found by title; recommendations appear, without the seen items.
    history = [search_and_add("dragon"), search_and_add("ocean")]
    wait.until(lambda d: ids("#history li") == history)
    wait.until(lambda d: "2 seen items excluded" in text("results-note") and len(ids("#results li")) == 10)
    assert not set(history) & set(ids("#results li"))
    assert browser.find_elements(By.CSS_SELECTOR, "#results li img")  # the dataset's images are shown

    # Show the whole catalogue, so an added item must appear in the ranking.
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("100")
    browser.find_element(By.ID, "recommend").click()
    wait.until(lambda d: len(ids("#results li")) == NUM_ITEMS - 2)

    # Add an item with an image from the form: it is embedded at once and ranked with the others.
    picture = tmp_path / "poster.png"
    picture.write_bytes(png_bytes(64, (20, 120, 220)))
    browser.find_element(By.ID, "new-id").send_keys("browser-new-1")
    browser.find_element(By.ID, "new-text").send_keys("The dragon of the deep ocean (2025)")
    browser.find_element(By.ID, "new-image").send_keys(str(picture))
    browser.find_element(By.ID, "add-submit").click()
    wait.until(lambda d: "added browser-new-1" in text("add-status"))
    wait.until(lambda d: "browser-new-1" in ids("#results li") and "browser-new-1, is at rank" in text("results-note"))
    assert len(ids("#results li")) == NUM_ITEMS - 1
    row = browser.find_element(By.CSS_SELECTOR, '#results li[data-item-id="browser-new-1"]')
    assert "added live" in row.text
    assert row.find_element(By.TAG_NAME, "img").get_attribute("src").endswith("/images/browser-new-1")
    wait.until(
        lambda d: (
            d.execute_script(
                "const img = document.querySelector('#results li[data-item-id=\"browser-new-1\"] img');"
                "return img.complete ? img.naturalWidth : 0;"
            )
            == 224
        )
    )

    # A duplicate id is refused with the server's message, shown on the page.
    browser.find_element(By.ID, "new-id").send_keys("browser-new-1")
    browser.find_element(By.ID, "new-text").send_keys("again")
    browser.find_element(By.ID, "add-submit").click()
    wait.until(lambda d: "409" in text("add-status"))
    assert "already exists" in text("add-status")

    # Pick a dataset user instead: their recent items become the history, and rankings follow.
    user = browser.find_element(By.ID, "user-input")
    user.send_keys("user3")
    browser.find_element(By.ID, "user-load").click()
    wait.until(lambda d: "ranking for user user3" in text("user-note") and ids("#history li"))
    wait.until(lambda d: "seen items excluded" in text("results-note") and ids("#results li"))
    assert not text("error")


def test_the_api_docs_render_offline(server: str, browser: Any) -> None:
    """/docs (Swagger UI) draws the operations from assets the server ships; nothing comes from a CDN."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(server + "/docs")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = browser.execute_script(
        "return [...document.querySelectorAll('.opblock-summary-path')].map((e) => e.textContent);"
    )
    assert {"/recommend", "/items", "/health", "/metrics"} <= {path.replace("\u200b", "") for path in paths}
    sources = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name);")
    assert sources and all(source.startswith(server) for source in sources), sources


def test_the_page_works_with_a_data_url_image_too(server: str) -> None:
    """The API accepts what the page's FileReader sends (a data: URL), checked without the browser."""
    import json
    import urllib.request

    body = json.dumps(
        {
            "item_id": "data-url",
            "text": "From a data URL",
            "image_base64": "data:image/png;base64," + base64.b64encode(png_bytes()).decode(),
        }
    ).encode()
    request = urllib.request.Request(server + "/items", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        assert json.load(response)["has_image"] is True
