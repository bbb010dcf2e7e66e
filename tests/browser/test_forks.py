"""A fork's page shows, under its title, where it comes from and what it changed, linked to its
parent, whose page lists its forks."""

import re

import pytest

from tests.browser.conftest import Dashboard, playwright_expect
from tests.service.conftest import Service

expect = playwright_expect()

pytestmark = [
    pytest.mark.service,
    pytest.mark.parametrize("service", ["embedded"], indirect=True),
]

TINY = {"training_batches": 100, "batches_per_sample": 20, "validation_size": 200}


def test_a_fork_s_page_shows_its_lineage_and_links_its_parent(
    dashboard: Dashboard, service: Service
) -> None:
    posted = service.client.post("/experiments", json=TINY)
    assert posted.status_code == 202, posted.text
    parent = service.wait_for(posted.json()["id"], lambda e: e["status"] == "succeeded")
    body = {"step": 100, "changes": {"learning_rate": 0.5, "training_batches": 200}}
    forked = service.client.post(f"/experiments/{parent['id']}/fork", json=body)
    assert forked.status_code == 201, forked.text
    fork_id = forked.json()["id"]
    page = dashboard.page

    page.goto(f"/#/experiments/{fork_id}")

    lineage = page.get_by_test_id("lineage")
    expect(lineage).to_have_text(
        f"forked from #{parent['id']} at step 100: learning_rate 0.01 → 0.5; "
        "training_batches 100 → 200"
    )
    lineage.get_by_role("link", name=f"#{parent['id']}").click()
    expect(page).to_have_url(re.compile(f"#/experiments/{parent['id']}$"))
    expect(page.get_by_test_id("lineage")).to_have_text(f"forks: #{fork_id}")
    dashboard.assert_clean()
