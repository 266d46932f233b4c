"""What the UI tests share: a Gradio server for a service, a page in Debian's Chromium, and the clicks and
waits that Gradio's widgets need. One place, so that the browser flags and the launch arguments cannot drift
apart between test files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# Never let Playwright fetch its own browser; these flags keep Debian's one quiet and offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@contextmanager
def serving(service: Any, *, poll_interval: float = 0.02, **launch_kwargs: Any) -> Iterator[str]:
    """The real Gradio UI for ``service`` on a free local port; yields its URL and closes the server after.

    ``service`` is not closed here: the caller that made it owns it.
    """
    from webui.ui import CSS, JS, build_ui

    for attempt in range(3):
        demo = build_ui(service, poll_interval=poll_interval)
        try:
            _, url, _ = demo.launch(
                prevent_thread_lock=True,
                quiet=True,
                ssr_mode=False,
                server_name="127.0.0.1",
                css=CSS,
                js=JS,
                **launch_kwargs,
            )
            break
        except ValueError as err:
            # Gradio polls its new server for a few seconds only; on a loaded 2-core machine it can give up
            # ("localhost is not accessible") before the server answers. Start it again.
            demo.close(verbose=False)
            if "localhost is not accessible" not in str(err) or attempt == 2:
                raise
    try:
        yield url
    finally:
        demo.close(verbose=False)


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright (skips the test where Playwright or Chromium is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1100) -> Iterator[Any]:
    """A fresh page in its own :func:`chromium`."""
    with chromium() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


def pick(page: Any, elem_id: str, option: str) -> None:
    """Choose ``option`` in the Gradio dropdown ``elem_id``."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def set_number(page: Any, elem_id: str, value: float) -> None:
    """Type into a slider's / number's input box (Gradio applies it on blur)."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def wait_text(page: Any, selector: str, text: str, timeout: float = 30_000) -> None:
    """Wait until the first element of ``selector`` shows ``text`` (a text box's value, or any element's text)."""
    page.wait_for_function(
        "([el, text]) => (el.value ?? el.innerText).includes(text)",
        arg=[page.locator(selector).first.element_handle(), text],
        timeout=timeout,
    )
