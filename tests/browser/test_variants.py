"""Variants on the dashboard, in a real browser against the real service: the form offers every
variant the service knows, the chart draws one curve per variant with a legend entry each and
marks a net that diverged where it diverged, the collapse demo asks every net, and a sweep's
report fits the page however many columns it has."""

import re

import pytest

from bnlab.vocabulary import BATCH_DEPENDENT, STUDY_VARIANTS, VARIANTS
from tests.browser.conftest import Dashboard, playwright_expect
from tests.service.conftest import Service

expect = playwright_expect()

pytestmark = [
    pytest.mark.service,
    pytest.mark.parametrize("service", ["embedded"], indirect=True),
]

# Bad initial weights and a large step: the plain relu net's loss overflows within a few steps
# (before its first sample point after step 0), the normalized ones train on.
DIVERGING = {
    "training_batches": 200,
    "batches_per_sample": 50,
    "validation_size": 200,
    "learning_rate": 1,
}
TRAINING_TIMEOUT_MS = 180_000


def test_every_variant_is_offered_drawn_with_a_legend_entry_and_a_diverged_net_is_marked(
    dashboard: Dashboard, service: Service
) -> None:
    page = dashboard.page
    page.goto("/#/new")
    page.get_by_role("button", name="relu 1 bad", exact=True).click()
    form = page.get_by_test_id("new-experiment")
    boxes = form.get_by_test_id("variants").get_by_role("checkbox")
    # What the service knows, in its order; the study's pair ticked.
    expect(boxes).to_have_count(len(VARIANTS))
    for variant in VARIANTS:
        box = form.get_by_test_id("variants").get_by_label(variant, exact=True)
        if variant in STUDY_VARIANTS:
            expect(box).to_be_checked()
        else:
            expect(box).not_to_be_checked()
        box.check()
    for name, value in DIVERGING.items():
        form.locator(f"[name={name}]").fill(str(value))
    form.locator("[name=groups]").fill("4")
    form.get_by_role("button", name="Start experiment").click()

    page.wait_for_url(re.compile(r"#/experiments/\d+$"))
    experiment_id = int(page.url.rsplit("/", 1)[1])
    expect(page.get_by_test_id("status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    experiment = service.client.get(f"/experiments/{experiment_id}").json()
    assert experiment["spec"]["variants"] == list(VARIANTS)
    assert experiment["spec"]["groups"] == 4

    chart = page.get_by_test_id("curve")
    legend = chart.locator(".u-legend .u-series[data-variant]")
    expect(legend).to_have_count(len(VARIANTS))
    assert [entry.get_attribute("data-variant") for entry in legend.all()] == list(VARIANTS)
    for variant in VARIANTS:
        entry = chart.locator(f".u-legend .u-series[data-variant={variant}]")
        expect(entry).to_contain_text(variant)
        expect(entry).to_be_visible()
    # Parts a page leaves out leave nothing behind (replaceChildren writes a null as "null").
    expect(page.locator("#view")).not_to_contain_text("null", use_inner_text=True)
    header = page.get_by_test_id("results").locator("thead th[data-variant]")
    expect(header).to_have_text(list(VARIANTS))

    diverged = {
        variant: results["diverged_at_step"]
        for variant, results in experiment["results"].items()
        if results["diverged_at_step"] is not None
    }
    assert "plain" in diverged, experiment["results"]  # the spec above makes it diverge
    assert set(diverged) != set(VARIANTS)  # and some nets train on
    marks = chart.get_by_test_id("diverged")
    expect(marks).to_have_count(len(diverged))
    over = chart.locator(".u-over").bounding_box()
    assert over is not None
    total = DIVERGING["training_batches"]
    for variant, step in diverged.items():
        mark = chart.locator(f"[data-testid=diverged][data-variant={variant}]")
        expect(mark).to_be_visible()
        expect(mark).to_contain_text(f"{variant} diverged at step {step}")
        box = mark.bounding_box()
        assert box is not None
        # On the x axis (0 to the run's length) where it diverged, within a pixel or two.
        assert abs(box["x"] - over["x"] - step / total * over["width"]) <= 2

    # The collapse demo asks every net: those that depend on the batch in both modes.
    for variant in VARIANTS:
        dependent = variant in BATCH_DEPENDENT
        for key, shown in ((variant, not dependent), (f"{variant}-batch", dependent)):
            expect(page.get_by_test_id(key)).to_have_count(int(shown))
    page.get_by_role("button", name="First 200 test images, one at a time").click()
    checked = page.get_by_test_id("test-collapse")
    # Every net over the whole test set as well: seconds on a loaded machine.
    expect(checked.locator("table")).to_be_visible(timeout=120_000)
    for variant in VARIANTS:
        rows = checked.locator(f"tbody[data-variant={variant}] tr")
        if variant in diverged:  # its weights are not finite: it has no answers to show
            expect(rows).to_have_count(0)
            continue
        expect(rows).to_have_count(2 if variant in BATCH_DEPENDENT else 1)
        if variant in BATCH_DEPENDENT:
            expect(rows.nth(1)).to_contain_text("every image:")  # the collapse

    # The list: a test-accuracy column per variant.
    page.goto("/#/")
    listed = page.locator(f"[data-experiment='{experiment_id}']")
    for variant, results in experiment["results"].items():
        accuracy = results["test_accuracy"]
        shown = "—" if accuracy is None else f"{accuracy:.3f}"
        expect(listed.locator(f"td[data-variant={variant}]")).to_have_text(shown)
    dashboard.assert_clean()


@pytest.mark.parametrize("width", [1200, 760])
def test_a_wide_sweep_report_fits_the_page(
    dashboard: Dashboard, service: Service, width: int
) -> None:
    # The classic study's 15 cells at two batch sizes, every variant: 6 varying fields, 15
    # columns. Queued for a GPU no worker serves: nothing trains, the report lists every row.
    posted = service.client.post(
        "/sweeps",
        json={
            "preset": "classic",
            "grid": {"batch_size": [60, 120]},
            "base": {"device": "gpu", "variants": list(VARIANTS)},
        },
    )
    assert posted.status_code == 202, posted.text
    sweep_id = posted.json()["id"]

    page = dashboard.page
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"/#/sweeps/{sweep_id}")
    report = page.get_by_test_id("report")
    expect(report.locator("tbody")).to_have_count(30)
    expect(report.locator("thead th")).to_have_count(15)
    expect(report.locator("tbody").first.locator("tr")).to_have_count(len(VARIANTS))

    # The page itself never scrolls sideways; the report stays inside the viewport.
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    scroll = report.get_by_test_id("report-scroll")
    box = scroll.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width

    # Where the table is wider than its box, it scrolls there, its first column kept in sight.
    first = report.locator("tbody").first.locator("td").first
    expect(first).to_have_text("relu")
    scroll.evaluate("(box) => { box.scrollLeft = box.scrollWidth; }")
    cell = first.bounding_box()
    assert cell is not None and abs(cell["x"] - box["x"]) <= 1
    last = report.locator("thead th").last.bounding_box()
    assert last is not None and last["x"] + last["width"] <= box["x"] + box["width"] + 1
    service.client.post(f"/sweeps/{sweep_id}/cancel")
    dashboard.assert_clean()


def test_compared_experiments_draw_each_variant_in_its_own_line_style(
    dashboard: Dashboard, service: Service
) -> None:
    # Queued for a GPU no worker serves: their nets are listed (and drawn once they have points).
    ids = []
    for learning_rate in (0.5, 1.0):
        spec = {"device": "gpu", "variants": list(VARIANTS), "learning_rate": learning_rate}
        posted = service.client.post("/experiments", json=spec)
        assert posted.status_code == 202, posted.text
        ids.append(posted.json()["id"])
    page = dashboard.page
    page.goto(f"/#/compare?experiments={ids[0]},{ids[1]}")
    chart = page.get_by_test_id("compare-chart")
    expect(chart).to_have_attribute("data-lines", str(2 * len(VARIANTS)))
    lines = page.evaluate(
        "() => window.bnlab.plot.series.slice(1).map((s) => [s.label, s.stroke(), s.dash])"
    )
    # A colour per experiment, a line style per variant: every net tells from every other.
    assert len({(stroke, tuple(dash)) for _, stroke, dash in lines}) == len(lines), lines
    for experiment_id in ids:
        service.client.post(f"/experiments/{experiment_id}/cancel")
    dashboard.assert_clean()
