"""The Prefect UI in a real browser, for tests: Playwright for Python driving Debian's
`chromium` (`apt-get install chromium`; `.ci/run` installs it). Playwright's own browser
download needs the internet, so the browser is the system's, through `executable_path`.

A test calls `open_browser()` first: it skips, naming what is missing, without Playwright
or chromium.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

#: Debian's names for its Chromium build, first found wins.
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    """The system's Chromium, or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@contextmanager
def open_browser(width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A fresh page of a headless Chromium; skips the test when either part is missing."""
    pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')"
    )
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium; .ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def form_field(page: Page, title: str) -> Locator:
    """The innermost field of a Prefect schema form whose label is `title` (the form adds
    " (Optional)" to fields that are not required)."""
    label = page.locator(
        ".schema-form-property__label",
        has_text=re.compile("^" + re.escape(title) + r"( \(Optional\))?$"),
    )
    return page.locator(".schema-form-property:not(:has(.schema-form-property))").filter(has=label)


def table_with(page: Page, header: str) -> dict[str, int]:
    """The rendered two-column table whose first header cell is `header`, as name → count."""
    heading = page.locator("th").filter(has_text=re.compile(rf"^\s*{re.escape(header)}\s*$"))
    table = page.locator("table").filter(has=heading).first
    table.wait_for()
    rows: dict[str, int] = {}
    for row in table.locator("tbody tr").all():
        name, count = (cell.inner_text().strip() for cell in row.locator("td").all()[:2])
        rows[name] = int(count.replace(",", ""))
    return rows
