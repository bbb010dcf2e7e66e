"""A real browser on the dashboard: Debian's Chromium driven by Playwright (its own browser
download cannot work here), against the real service of tests/service.

Without Chromium or Playwright the tests skip, saying why; under CI=true they fail instead.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from tests.service.conftest import Service, service  # noqa: F401  (the fixture, reused here)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must install it (.ci/run)")
    pytest.skip(reason, allow_module_level=True)


def playwright_expect() -> Any:
    """Playwright's `expect`, for the test modules to import at their top."""
    try:
        from playwright.sync_api import expect
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    return expect


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Dashboard:
    page: "Page"
    outside_requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """The page fetched nothing from outside the service and raised no script error."""
        assert self.outside_requests == [], "the dashboard must work offline"
        assert self.page_errors == []


@contextmanager
def open_dashboard(
    browser: "Browser", base_url: str, token: str | None = None
) -> Iterator[Dashboard]:
    """A fresh browser context on the service at `base_url`; requests anywhere else are
    refused and recorded. `token`: as if the user had typed it into the page's token field."""
    base_url = base_url.rstrip("/")
    context = browser.new_context(base_url=base_url, viewport={"width": 1200, "height": 900})
    if token:
        context.add_init_script(f"localStorage.setItem('bnlab.token', {json.dumps(token)})")
    page = context.new_page()
    dashboard = Dashboard(page)

    def only_the_service(route: "Route") -> None:
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            dashboard.outside_requests.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    page.on("pageerror", lambda error: dashboard.page_errors.append(str(error)))
    page.set_default_timeout(30_000)
    try:
        yield dashboard
    finally:
        context.close()


@pytest.fixture
def dashboard(browser: "Browser", service: Service) -> Iterator[Dashboard]:  # noqa: F811
    token = service.env.get("BNLAB_API_TOKEN")
    with open_dashboard(browser, str(service.client.base_url), token) as dashboard:
        yield dashboard
