"""The experiment page in a real browser shows why BN helps under the curves for an experiment
with probes (a chart per measurement, a line per net with points drawn), and nothing of the kind
for one without."""

import pytest

from tests.browser.conftest import Dashboard, playwright_expect
from tests.service.conftest import Service

expect = playwright_expect()

pytestmark = [
    pytest.mark.service,
    pytest.mark.parametrize("service", ["embedded"], indirect=True),
]

TINY = {"training_batches": 100, "batches_per_sample": 25, "validation_size": 200, "seed": 5}
PROBES = {"landscape": True, "ics": True, "sharpness": True, "every": 2}
# loss band, beta-smoothness, sharpness, covariate shift's norm and cosine
CHARTS = 5


def trained(service: Service, spec: dict) -> int:
    posted = service.client.post("/experiments", json=spec)
    assert posted.status_code == 202, posted.text
    experiment_id: int = posted.json()["id"]
    experiment = service.wait_for(experiment_id, lambda e: e["status"] not in ("queued", "running"))
    assert experiment["status"] == "succeeded", experiment["error"]
    return experiment_id


def test_probed_experiment_shows_the_why_panels(dashboard: Dashboard, service: Service) -> None:
    experiment_id = trained(service, TINY | {"probes": PROBES})
    page = dashboard.page
    page.goto(f"/#/experiments/{experiment_id}")
    panels = page.get_by_test_id("why")
    expect(panels).to_be_visible()
    charts = panels.locator("[data-chart]")
    expect(charts).to_have_count(CHARTS)
    sharpness = panels.locator("[data-chart^='sharpness']")
    # plain and bn at steps 0, 50, 100, and the 2/lr line
    expect(sharpness).to_have_attribute("data-series", "3")
    expect(sharpness).to_have_attribute("data-points", "6")
    expect(sharpness.locator("canvas")).to_have_count(1)
    dashboard.assert_clean()


def test_experiment_without_probes_shows_none(dashboard: Dashboard, service: Service) -> None:
    experiment_id = trained(service, TINY)
    page = dashboard.page
    page.goto(f"/#/experiments/{experiment_id}")
    expect(page.get_by_test_id("results")).to_be_visible()
    expect(page.get_by_test_id("activations")).to_be_visible()  # the page has loaded its end
    expect(page.get_by_test_id("why")).to_have_count(0)
    dashboard.assert_clean()


def test_probed_sweep_report_shows_the_medians(dashboard: Dashboard, service: Service) -> None:
    body = {"grid": {"learning_rate": [0.1, 0.5]}, "base": TINY | {"probes": PROBES}}
    posted = service.client.post("/sweeps", json=body)
    assert posted.status_code == 202, posted.text
    sweep_id = posted.json()["id"]
    service.poll(
        f"/sweeps/{sweep_id}", lambda s: s["status"] != "running" and s["status"] != "queued", 180
    )
    report = service.client.get(f"/sweeps/{sweep_id}/report").json()
    beta = report["rows"][0]["why"]["plain"]["beta_smoothness"]
    page = dashboard.page
    page.goto(f"/#/sweeps/{sweep_id}")
    table = page.get_by_test_id("report")
    expect(table.locator("th", has_text="β-smoothness")).to_have_count(1)
    plain = table.locator("tbody").first.locator("tr[data-variant='plain']")
    expect(plain).to_contain_text(f"{beta:.3g}"[:4])
    dashboard.assert_clean()
