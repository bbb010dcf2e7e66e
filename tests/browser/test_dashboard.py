"""The dashboard in a real browser against the real service: start an experiment from the form,
watch its curve draw, ask its nets about a drawn digit in both BN modes, and read why a failed
experiment failed.

Set BNLAB_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the README's screenshot.
"""

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.browser.conftest import Dashboard, playwright_expect
from tests.service.conftest import Service

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

expect = playwright_expect()

# One stack is enough: the page only talks HTTP; tests/service covers both stacks.
pytestmark = [
    pytest.mark.service,
    pytest.mark.parametrize("service", ["embedded"], indirect=True),
]

TINY = {
    "training_batches": 200,
    "batches_per_sample": 20,
    "validation_size": 200,
    "learning_rate": 0.5,
}
STEPS = list(range(0, 201, 20))
TRAINING_TIMEOUT_MS = 180_000
PANELS = ("bn-population", "bn-batch", "plain")

# Strokes as fractions of the pad: a "1", then a "7".
ONE = [[(0.5, 0.15), (0.5, 0.85)]]
SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.4, 0.85)]]


def draw(page: "Page", strokes: list[list[tuple[float, float]]]) -> None:
    box = page.get_by_test_id("pad").bounding_box()
    assert box is not None

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    for (x, y), *rest in strokes:
        page.mouse.move(*at(x, y))
        page.mouse.down()
        for point in rest:
            page.mouse.move(*at(*point), steps=10)
        page.mouse.up()


def answers(page: "Page") -> dict[str, tuple[str, str]]:
    """Each panel's predicted class and its ten probabilities, as shown."""
    shown = {}
    for panel in PANELS:
        box = page.get_by_test_id(panel)
        expect(box.get_by_test_id("prediction")).to_have_text(re.compile(r"^[0-9]$"))
        expect(box.get_by_test_id("probabilities").locator("li")).to_have_count(10)
        shown[panel] = (
            box.get_by_test_id("prediction").inner_text(),
            box.get_by_test_id("probabilities").inner_text(),
        )
    return shown


def predict(page: "Page", strokes: list[list[tuple[float, float]]]) -> dict[str, tuple[str, str]]:
    page.get_by_role("button", name="Clear").click()
    expect(page.get_by_test_id("bn-population").get_by_test_id("prediction")).to_have_count(0)
    draw(page, strokes)
    page.get_by_role("button", name="Predict").click()
    return answers(page)


def save_screenshot(page: "Page", path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    # As a palette PNG the README's copy is a third of the size, and looks the same.
    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)


def test_experiment_from_the_form_draws_its_curve_and_shows_the_collapse(
    dashboard: Dashboard, service: Service, tmp_path: Path
) -> None:
    page = dashboard.page
    page.goto("/")
    expect(page.get_by_role("heading", name="Experiments")).to_be_visible()
    page.locator("header").get_by_role("link", name="New experiment").click()

    page.get_by_role("button", name="relu 1 good", exact=True).click()
    form = page.get_by_test_id("new-experiment")
    expect(form.locator("[name=learning_rate]")).to_have_value("1")
    expect(form.locator("[name=training_batches]")).to_have_value("50000")
    expect(form.locator("[name=activation]")).to_have_value("relu")
    for name, value in TINY.items():
        form.locator(f"[name={name}]").fill(str(value))
    form.get_by_role("button", name="Start experiment").click()

    page.wait_for_url(re.compile(r"#/experiments/\d+$"))
    experiment_id = int(page.url.rsplit("/", 1)[1])
    expect(page.get_by_role("heading", name=f"Experiment {experiment_id}")).to_be_visible()
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=curve]').dataset.points) > 0"
        " || document.querySelector('[data-testid=error]')",
        timeout=TRAINING_TIMEOUT_MS,
    )
    expect(page.get_by_test_id("error")).to_have_count(0)
    expect(page.get_by_test_id("status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)

    # Both curves, every sample point, as uPlot holds them to draw.
    steps, plain, bn = page.evaluate("() => window.bnlab.chart.plot.data")
    assert steps == STEPS
    assert all(0 <= value <= 1 for value in plain + bn)
    expect(page.get_by_test_id("curve").locator("canvas")).to_be_visible()

    # The results table says what the API says.
    results = service.client.get(f"/experiments/{experiment_id}").json()["results"]
    row = page.locator("[data-result=test_accuracy]")
    for variant in ("plain", "bn"):
        shown = row.locator(f"[data-variant={variant}]")
        expect(shown).to_have_text(f"{results[variant]['test_accuracy']:.3f}")

    first = predict(page, ONE)
    second = predict(page, SEVEN)
    # The collapse: with the statistics of one image the bn net answers the same whatever is
    # drawn; with population statistics (and the plain net) the drawing matters.
    assert first["bn-batch"] == second["bn-batch"]
    assert first["bn-population"][1] != second["bn-population"][1]
    assert first["plain"][1] != second["plain"][1]

    # The study's own check, on the test images: one at a time, batch statistics give one class.
    page.get_by_role("button", name="First 200 test images, one at a time").click()
    batch_row = page.get_by_test_id("test-collapse").get_by_role("row", name="batch statistics")
    expect(batch_row).to_contain_text("every image:")

    # Activation plots appear exactly when the service recorded activation statistics.
    activations = service.client.get(f"/experiments/{experiment_id}/activations")
    recorded = activations.status_code == 200 and any(activations.json()["variants"].values())
    expect(page.get_by_test_id("activations").locator("img")).to_have_count(int(recorded))

    save_screenshot(
        page, Path(os.environ.get("BNLAB_DASHBOARD_SCREENSHOT") or tmp_path / "shot.png")
    )

    page.goto("/#/")
    listed = page.locator(f"[data-experiment='{experiment_id}']")
    expect(listed.get_by_test_id("status")).to_have_text("succeeded")
    dashboard.assert_clean()


def test_failed_experiment_page_says_why(dashboard: Dashboard, service: Service) -> None:
    # The test data directory has MNIST only: a fashion-mnist experiment fails, with a reason.
    posted = service.client.post("/experiments", json={**TINY, "dataset": "fashion-mnist"})
    assert posted.status_code == 202, posted.text
    experiment_id = posted.json()["id"]
    experiment = service.wait_for(experiment_id, lambda e: e["status"] in ("failed", "succeeded"))
    assert experiment["status"] == "failed"
    assert experiment["error"]

    page = dashboard.page
    page.goto(f"/#/experiments/{experiment_id}")
    expect(page.get_by_test_id("status")).to_have_text("failed")
    expect(page.get_by_test_id("error")).to_contain_text(experiment["error"])
    expect(page.get_by_text("No trained nets to ask")).to_be_visible()
    dashboard.assert_clean()


def test_without_the_event_stream_the_page_follows_by_polling(
    dashboard: Dashboard, service: Service
) -> None:
    # Queued on the gpu queue, which no worker serves here: it waits until cancelled.
    posted = service.client.post("/experiments", json={**TINY, "device": "gpu"})
    assert posted.status_code == 202, posted.text
    experiment_id = posted.json()["id"]
    page = dashboard.page
    asked = []

    def no_stream(route: "Route") -> None:
        asked.append(route.request.url)
        route.fulfill(status=404, json={"detail": "Not Found"})  # as a service without it

    page.route(re.compile(r"/events$"), no_stream)
    page.goto(f"/#/experiments/{experiment_id}")
    expect(page.get_by_test_id("status")).to_have_text("queued")
    expect(page.locator(".message.warning")).to_contain_text("gpu")
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()

    cancelled = service.client.post(f"/experiments/{experiment_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    expect(page.get_by_test_id("status")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    assert asked == [f"{service.client.base_url}/experiments/{experiment_id}/events"]
    dashboard.assert_clean()


def test_sweep_page_shows_the_report_and_the_curve_grid(
    dashboard: Dashboard, service: Service
) -> None:
    grid = {"activation": ["relu", "sigmoid"]}
    posted = service.client.post("/sweeps", json={"grid": grid, "base": TINY})
    if posted.status_code in (404, 405):
        pytest.skip("this service has no POST /sweeps")
    assert posted.status_code == 202, posted.text
    sweep = posted.json()
    cells = [cell["id"] for cell in sweep["cells"]]
    for cell in cells:
        service.wait_for(cell, lambda e: e["status"] in ("succeeded", "failed", "cancelled"))

    page = dashboard.page
    page.goto(f"/#/sweeps/{sweep['id']}")
    expect(page.get_by_role("heading", name=f"Sweep {sweep['id']}")).to_contain_text("succeeded")
    # A block per cell, a line per variant: its test accuracy as the API reports it.
    rows = service.client.get(f"/sweeps/{sweep['id']}/report").json()["rows"]
    report = page.get_by_test_id("report").locator("tbody")
    expect(report).to_have_count(2)
    expect(report.first.locator("td").first).to_have_text("relu")
    for block, row in zip(report.all(), rows, strict=True):
        lines = block.locator("tr[data-variant]")
        expect(lines).to_have_count(2)
        for variant in ("plain", "bn"):
            shown = block.locator(f"tr[data-variant={variant}] td.number").first
            expect(shown).to_have_text(f"{row['variants'][variant]['test_accuracy']:.3f}")
    expect(page.get_by_test_id("legend-key").locator("[data-variant]")).to_have_text(
        ["━ plain", "━ bn"]
    )
    for cell in cells:
        card = page.get_by_test_id("curve-grid").locator(f"[data-experiment='{cell}']")
        expect(card.locator("[data-points]")).to_have_attribute("data-points", str(2 * len(STEPS)))
    expect(page.get_by_role("img", name="the sweep's curves, one panel per cell")).to_be_visible()
    dashboard.assert_clean()
