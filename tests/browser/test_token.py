"""The dashboard on a service that wants an API token (BNLAB_API_TOKEN): the page itself loads
without one, says what to do, and works once the user types the token into its field."""

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.conftest import open_dashboard, playwright_expect
from tests.service.conftest import Service, running_service, service_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser

expect = playwright_expect()

pytestmark = pytest.mark.service

TOKEN = "dashboard-test-token"


@pytest.fixture(scope="module")
def guarded_service(
    tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path
) -> Iterator[Service]:
    tmp_path = tmp_path_factory.mktemp("guarded")
    with running_service(tmp_path, service_env(tmp_path, idx_data_dir, api_token=TOKEN)) as service:
        yield service


def test_page_asks_for_the_token_and_works_with_it(
    browser: "Browser", guarded_service: Service
) -> None:
    with open_dashboard(browser, str(guarded_service.client.base_url)) as dashboard:
        page = dashboard.page
        page.goto("/")
        expect(page.get_by_role("heading", name="Experiments")).to_be_visible()
        expect(page.locator("#view .message.error")).to_contain_text("API token")

        page.get_by_label("API token").fill(TOKEN)
        page.get_by_label("API token").press("Enter")
        expect(page.get_by_text("No experiments yet")).to_be_visible()
        expect(page.locator("#view .message.error")).to_have_count(0)

        # Kept for the next visit, like a user would expect.
        page.reload()
        expect(page.get_by_text("No experiments yet")).to_be_visible()
        dashboard.assert_clean()
