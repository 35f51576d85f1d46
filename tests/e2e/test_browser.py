"""The standalone app in a real headless browser: tell it a fact, see it in the memory tab, sleep,
then ask in a fresh chat. Writes the PNGs in screenshots/ that the README shows.

Needs Debian's chromium (/usr/bin/chromium; `python install.py test` installs it) and the Python
package playwright (its own browser download is never used).
"""

import shutil
import sys
import time
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")

pytestmark = [pytest.mark.e2e, pytest.mark.model]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FACT, QUESTION, ANSWER = "I live in Portland, Oregon.", "Where do I live?", "Portland"
START_TIMEOUT_S = 900  # the first start converts the default model and computes covariance statistics
STEP_TIMEOUT_MS = 600_000


@pytest.fixture
def app(serve, port, tmp_path):
    server = serve([sys.executable, "-m", "extension.app", "--port", port, "--store", tmp_path / "store"], REPO)
    server.wait_for(f"http://127.0.0.1:{port}/", START_TIMEOUT_S)
    return f"http://127.0.0.1:{port}/", server


@pytest.fixture
def page(tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (as root: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        yield page
        browser.close()


def say(page, text: str) -> None:
    page.locator("#sllm-input textarea").fill(text)
    page.locator("#sllm-send").click()


def wait_for_text(page, server, selector: str, text: str, refresh: str | None = None, absent: bool = False) -> None:
    """Until selector shows text (or no longer shows it), clicking refresh (if given) every few seconds;
    fails at once when the app logs a traceback."""
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    while (text in page.locator(selector).inner_text()) == absent:
        assert "Traceback" not in server.output(10**6), server.output()
        assert time.monotonic() < deadline, f"{selector} never {'hid' if absent else 'showed'} {text!r}"
        if refresh:
            page.locator(refresh).click()
        page.wait_for_timeout(3000)


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def test_learn_sleep_and_recall_in_the_browser(page, app):
    url, server = app
    page.goto(url)
    say(page, FACT)
    wait_for_text(page, server, "#sllm-learned", "Learning")
    shoot(page, "1-chat-learning")

    page.get_by_role("tab", name="Memory").click()
    wait_for_text(page, server, "#sllm-facts", ANSWER, refresh="#sllm-refresh")
    # pending until the background injection has written it into the weights
    wait_for_text(page, server, "#sllm-facts", "pending", refresh="#sllm-refresh", absent=True)
    assert "healthy" in page.locator("#sllm-facts").inner_text(), server.output()
    shoot(page, "2-memory-tab")

    page.locator("#sllm-sleep").click()
    wait_for_text(page, server, "#sllm-report-summary", "Sleep #1")
    shoot(page, "3-after-sleep")

    page.get_by_role("tab", name="Chat").click()
    page.locator("#sllm-new-chat").click()
    say(page, QUESTION)
    wait_for_text(page, server, "#sllm-chatbot", ANSWER)
    shoot(page, "4-recall-in-a-new-chat")
