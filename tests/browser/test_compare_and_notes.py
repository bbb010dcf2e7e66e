"""Names, notes and tags edited on an experiment's page and filtering the list; experiments
ticked in the list compared side by side; every view's state in its URL, so a reload (or a
link) shows the same view. On experiments queued for a GPU no worker serves: nothing trains."""

import re
from typing import Any

import pytest

from tests.browser.conftest import Dashboard, playwright_expect
from tests.service.conftest import Service

expect = playwright_expect()

pytestmark = [
    pytest.mark.service,
    pytest.mark.parametrize("service", ["embedded"], indirect=True),
]

WAITING = {"training_batches": 200, "batches_per_sample": 20, "device": "gpu"}


def queue(service: Service, **spec: Any) -> int:
    posted = service.client.post("/experiments", json={**WAITING, **spec})
    assert posted.status_code == 202, posted.text
    experiment_id: int = posted.json()["id"]
    return experiment_id


def test_notes_and_tags_are_edited_on_the_page_and_filter_the_list(
    dashboard: Dashboard, service: Service
) -> None:
    tagged, other = queue(service, learning_rate=0.5), queue(service, learning_rate=1.0)
    page = dashboard.page
    page.goto(f"/#/experiments/{tagged}")
    box = page.get_by_test_id("annotations")
    box.get_by_role("button", name="Edit name, notes and tags").click()
    box.get_by_label("Tags").fill("lesson no way!")
    box.get_by_role("button", name="Save").click()
    expect(box.locator(".message.error")).to_contain_text("a tag is 1 to 40 letters")

    box.get_by_label("Name").fill("half rate")
    box.get_by_label("Tags").fill("lesson, bn")
    box.get_by_label("Notes (markdown)").fill("# Why\n\nThe **plain** net stalls.")
    box.get_by_role("button", name="Save").click()
    expect(box.get_by_test_id("name")).to_have_text("half rate")
    expect(box.get_by_test_id("tags").locator(".tag")).to_have_text(["bn", "lesson"])
    expect(box.get_by_role("heading", name="Why")).to_be_visible()
    expect(box.get_by_test_id("notes").locator("strong")).to_have_text("plain")
    assert service.client.get(f"/experiments/{tagged}").json()["tags"] == ["bn", "lesson"]

    box.get_by_role("link", name="lesson").click()  # a tag links to the list, filtered by it
    page.wait_for_url(re.compile(r"#/\?tag=lesson$"))
    expect(page.get_by_label("tag", exact=True)).to_have_value("lesson")
    expect(page.locator(f"[data-experiment='{tagged}']")).to_contain_text("half rate")
    expect(page.locator(f"[data-experiment='{other}']")).to_have_count(0)
    page.reload()
    expect(page.locator(f"[data-experiment='{other}']")).to_have_count(0)
    dashboard.assert_clean()


def test_experiments_ticked_in_the_list_are_compared_and_the_view_is_a_link(
    dashboard: Dashboard, service: Service
) -> None:
    first, second = queue(service, learning_rate=0.5), queue(service, learning_rate=2.0)
    page = dashboard.page
    page.goto("/#/")
    page.get_by_label(f"compare #{first}", exact=True).check()
    expect(page.get_by_test_id("compare-selected")).to_be_hidden()  # one is no comparison
    page.get_by_label(f"compare #{second}", exact=True).check()
    page.get_by_test_id("compare-selected").click()
    page.wait_for_url(re.compile(rf"#/compare\?experiments={first}%2C{second}$"))

    expect(page.get_by_test_id("differing")).to_have_text("What differs: learning_rate")
    table = page.get_by_test_id("compare-table")
    expect(table.locator("tbody tr")).to_have_count(4)
    expect(table.locator(f"[data-net='{first}-bn']")).to_contain_text(f"#{first} lr 0.5, with BN")
    expect(page.get_by_test_id("compare-chart").locator("canvas")).to_be_visible()
    expect(page.get_by_test_id("compare-chart")).to_have_attribute("data-lines", "4")

    page.get_by_test_id("variants").get_by_label("plain").uncheck()
    page.wait_for_url(re.compile(r"variants=bn$"))
    expect(table.locator("tbody tr")).to_have_count(2)  # the locator finds the new view's table
    page.reload()  # the state is the URL: the same view again
    expect(page.get_by_test_id("compare-table").locator("tbody tr")).to_have_count(2)
    expect(page.get_by_test_id("compare-chart")).to_have_attribute("data-lines", "2")

    page.goto("/#/compare?experiments=999999,1")
    expect(page.locator("#view .message.error")).to_contain_text("no experiment with id 999999")
    dashboard.assert_clean()
