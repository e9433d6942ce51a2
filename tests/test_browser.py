"""The app in a real browser (Debian's chromium via Playwright): a 3-turn dialog, clicks, reset, watch mode."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.api import Assistant
from assistant.core.store import read_dialogs
from assistant.webapp import launch_app

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT = REPO / "docs" / "app-screenshot.png"
# The tracked screenshot is rewritten only on request: `make screenshot` sets this to the trained demo model's
# directory, and the dialog then runs on that model over the whole demo catalog (plain runs use the tiny model).
SCREENSHOT_MODEL = os.environ.get("FASHION_ASSISTANT_SCREENSHOT")
WAIT_MS = 60_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt when missing and running as root (never `playwright install`)."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root: apt-get install chromium")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=environment, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-noto-color-emoji"],
                   check=True, env=environment, stdout=subprocess.DEVNULL)
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


@pytest.fixture(scope="module")
def app_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("browser-data")
    assistant = Assistant.load(SCREENSHOT_MODEL, "demo", progress=False) if SCREENSHOT_MODEL \
        else request.getfixturevalue("demo_assistant")
    app, url = launch_app(assistant, data_dir, port=free_port(), block=False, quiet=True, watch_delay=0.2)
    try:
        yield url, data_dir
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    executable = ensure_chromium()
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser, app_url: tuple[str, Path]) -> Iterator:
    context = browser.new_context(viewport={"width": 1366, "height": 900})  # a fresh session, like a new tab
    opened = context.new_page()
    opened.goto(app_url[0])
    expect(opened.locator("#shop-gallery img")).to_have_count(12, timeout=WAIT_MS)
    try:
        yield opened
    finally:
        context.close()


def shown_ids(page) -> list[str]:
    """Ids of the items in the results gallery (each picture is served under its catalog file name)."""
    sources = page.locator("#shop-gallery img").evaluate_all("images => images.map(image => image.src)")
    return [Path(source.split("file=")[-1]).stem for source in sources]


def send(page, text: str, user_messages: int) -> None:
    """Type a message, press Send, and wait until the chat shows it and the assistant's answer."""
    page.fill("#shop-message textarea", text)
    page.click("#shop-send")
    expect(page.locator("#shop-chat [data-testid=user]")).to_have_count(user_messages, timeout=WAIT_MS)
    expect(page.locator("#shop-chat [data-testid=bot]")).to_have_count(user_messages, timeout=WAIT_MS)
    expect(page.locator("#shop-gallery img")).to_have_count(12, timeout=WAIT_MS)


def test_a_three_turn_dialog_with_a_click_then_reset(page, app_url: tuple[str, Path]) -> None:
    browsing = shown_ids(page)
    send(page, "a red dress", 1)
    page.wait_for_function("ids => ![...document.querySelectorAll('#shop-gallery img')].every("
                           "(img, i) => img.src.includes(ids[i]))", arg=browsing, timeout=WAIT_MS)
    first = shown_ids(page)
    assert len(set(first)) == 12 and first != browsing

    page.locator("#shop-gallery .thumbnail-item").nth(2).click()
    expect(page.locator("#shop-reference")).to_contain_text("you clicked it", timeout=WAIT_MS)
    expect(page.locator("#shop-gallery .thumbnail-item.selected")).to_have_count(1, timeout=WAIT_MS)
    clicked = first[2]
    send(page, "in blue with long sleeves", 2)
    page.wait_for_function("ids => ![...document.querySelectorAll('#shop-gallery img')].every("
                           "(img, i) => img.src.includes(ids[i]))", arg=first, timeout=WAIT_MS)
    second = shown_ids(page)
    assert clicked not in second  # the item talked about is not shown again
    # the old click is not marked on the new results, nor after the next turn (sent without a selection)
    expect(page.locator("#shop-gallery .thumbnail-item.selected")).to_have_count(0, timeout=WAIT_MS)
    send(page, "shorter", 3)
    expect(page.locator("#shop-understood")).to_contain_text("Understood", timeout=WAIT_MS)
    expect(page.locator("#shop-gallery .thumbnail-item.selected")).to_have_count(0, timeout=WAIT_MS)

    chat = page.locator("#shop-chat [data-testid=user]").all_inner_texts()
    assert chat == ["a red dress", "in blue with long sleeves", "shorter"]
    page.wait_for_function("[...document.querySelectorAll('[data-testid=status-tracker]')].every("
                           "tracker => tracker.classList.contains('hide'))", timeout=WAIT_MS)
    if SCREENSHOT_MODEL:  # the picture must show results that fit what the assistant says it understood
        understood = page.locator("#shop-understood").inner_text()
        assert all(part in understood for part in ("blue", "dress", "long")), understood
        captions = page.locator("#shop-gallery .thumbnail-item").all_inner_texts()[:6]
        assert all("blue" in caption.lower() and "dress" in caption.lower() for caption in captions), captions
        page.wait_for_timeout(500)  # let the last fade-in finish
        shot = SCREENSHOT.with_suffix(".tmp.png")
        page.screenshot(path=str(shot), full_page=True)
        os.replace(shot, SCREENSHOT)

    [dialog] = [d for d in read_dialogs(app_url[1]) if d["turns"] and d["turns"][0]["text"] == "a red dress"]
    assert [t["text"] for t in dialog["turns"]] == ["a red dress", "in blue with long sleeves", "shorter"]
    assert dialog["turns"][1]["reference"] == clicked and dialog["turns"][1]["clicked"]
    assert dialog["turns"][2]["reference"] == second[0] and not dialog["turns"][2]["clicked"]

    page.click("#shop-reset")
    expect(page.locator("#shop-chat [data-testid=user]")).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator("#shop-reference")).to_contain_text("none yet", timeout=WAIT_MS)
    expect(page.locator("#shop-gallery img")).to_have_count(12, timeout=WAIT_MS)


def test_markup_typed_by_a_shopper_is_shown_as_text_and_never_run(page) -> None:
    message = "<img src=x onerror=\"window.injected=1\"> <b>bold</b> **stars** 赤 👗"
    send(page, message, 1)
    bubble = page.locator("#shop-chat [data-testid=user]").first
    assert bubble.inner_text() == message
    assert bubble.locator("img, b, strong").count() == 0
    assert page.evaluate("window.injected === undefined")


def test_an_empty_message_prompts_without_a_turn(page) -> None:
    page.fill("#shop-message textarea", "   ")
    page.click("#shop-send")
    expect(page.locator("#shop-status")).to_contain_text("Tell me what you are looking for", timeout=WAIT_MS)
    assert page.locator("#shop-chat [data-testid=user]").count() == 0


def test_watch_mode_plays_three_turns(page) -> None:
    page.get_by_role("tab", name="Watch a simulated shopper").click()
    page.click("#watch-draw")
    expect(page.locator("#watch-target-id textarea, #watch-target-id input").first).not_to_have_value(
        "", timeout=WAIT_MS)
    turns = page.locator("#watch-turns input[type=number]")
    turns.fill("3")
    turns.press("Enter")
    page.click("#watch-start")
    expect(page.locator("#watch-status")).to_have_text(re.compile(r"Turn 3: .*|.*Found it!"), timeout=WAIT_MS)
    played = page.locator("#watch-chat [data-testid=user]").count()
    assert 1 <= played <= 3
    expect(page.locator("#watch-plot img")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#watch-gallery img")).to_have_count(12, timeout=WAIT_MS)



def test_a_tab_carries_on_its_dialog_after_the_server_restarts(demo_assistant, browser, tmp_path: Path) -> None:
    """The tab keeps its dialog id in the browser and the dialog is in the store: after a restart and a reload
    the chat is retold, the same items are on show, and the next message continues the same stored dialog."""
    port = free_port()
    app, url = launch_app(demo_assistant, tmp_path, port=port, block=False, quiet=True)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        page = context.new_page()
        page.goto(url)
        expect(page.locator("#shop-gallery img")).to_have_count(12, timeout=WAIT_MS)
        send(page, "a green coat", 1)
        send(page, "longer", 2)
        page.wait_for_timeout(500)
        shown = shown_ids(page)
        app.close()
        app, url = launch_app(demo_assistant, tmp_path, port=port, block=False, quiet=True)  # same origin
        page.reload()
        expect(page.locator("#shop-chat [data-testid=user]")).to_have_count(2, timeout=WAIT_MS)
        assert page.locator("#shop-chat [data-testid=user]").all_inner_texts() == ["a green coat", "longer"]
        page.wait_for_function("ids => [...document.querySelectorAll('#shop-gallery img')].every("
                               "(img, i) => img.src.includes(ids[i]))", arg=shown, timeout=WAIT_MS)
        page.fill("#shop-message textarea", "in black")
        page.click("#shop-send")
        expect(page.locator("#shop-chat [data-testid=user]")).to_have_count(3, timeout=WAIT_MS)
        page.wait_for_timeout(1000)
    finally:
        context.close()
        app.close()
    [dialog] = list(read_dialogs(tmp_path))
    assert [t["text"] for t in dialog["turns"]] == ["a green coat", "longer", "in black"]
