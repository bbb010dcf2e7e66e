"""Why BN helps, end to end on both stacks: a probed experiment through a real worker writes the
landscape, covariate shift and sharpness of each net at every other sample point, the API serves
them (JSON and PNG), training is the same as without probes, and a probed sweep's report says it
in numbers."""

import math

import pytest

from tests.service.conftest import SMALL, STEPS, Service
from tests.service.test_sweeps import finished, wait_for_sweep

pytestmark = pytest.mark.service

PROBES = {"landscape": True, "ics": True, "sharpness": True, "every": 2}
PROBED_STEPS = STEPS[::2]  # every other sample point, step 0 first
NETS = SMALL | {"hidden_layers": [32, 32]}  # three weight layers
WEIGHT_LAYERS = 3


def run(service: Service, spec: dict) -> int:
    posted = service.client.post("/experiments", json=spec)
    assert posted.status_code == 202, posted.text
    experiment_id: int = posted.json()["id"]
    experiment = service.wait_for(experiment_id, lambda e: e["status"] not in ("queued", "running"))
    assert experiment["status"] == "succeeded", experiment["error"]
    return experiment_id


def test_probed_experiment_measures_each_net(service: Service) -> None:
    probed = run(service, NETS | {"probes": PROBES})
    get = service.client.get

    landscape = get(f"/experiments/{probed}/landscape").json()
    assert landscape["measured"] is True and list(landscape["variants"]) == ["plain", "bn"]
    for variant, series in landscape["variants"].items():
        assert series["step"] == PROBED_STEPS, variant
        assert len(series["step_sizes"]) >= 2
        for low, high, beta in zip(
            series["loss_min"], series["loss_max"], series["beta_smoothness"], strict=True
        ):
            assert 0 < low <= high and beta > 0
        assert all(len(losses) == len(series["step_sizes"]) for losses in series["losses"])

    ics = get(f"/experiments/{probed}/ics").json()
    for variant, layers in ics["variants"].items():
        assert [layer["layer"] for layer in layers] == list(range(WEIGHT_LAYERS)), variant
        first = layers[0]  # nothing before the first layer moves: no shift there
        assert first["norm"] == pytest.approx([0.0] * len(PROBED_STEPS), abs=1e-6)
        assert all(-1 <= c <= 1 + 1e-6 for layer in layers for c in layer["cosine"])
        assert all(layer["step"] == PROBED_STEPS for layer in layers)

    sharpness = get(f"/experiments/{probed}/sharpness").json()
    assert sharpness["edge"] == pytest.approx(2 / NETS["learning_rate"])
    for variant, series in sharpness["variants"].items():
        assert series["step"] == PROBED_STEPS, variant
        assert all(math.isfinite(e) and e > 0 for e in series["eigenvalue"])
        assert all(i >= 1 for i in series["iterations"])

    for what in ("landscape", "ics", "sharpness"):
        png = get(f"/experiments/{probed}/{what}.png")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), what


def test_probes_leave_training_as_it_was(service: Service) -> None:
    probed = run(service, NETS | {"probes": PROBES, "seed": 11})
    plain = run(service, NETS | {"seed": 11})
    curves = [
        service.client.get(f"/experiments/{i}/curve").json()["series"] for i in (probed, plain)
    ]
    assert curves[0] == curves[1]
    off = service.client.get(f"/experiments/{plain}/landscape").json()
    assert off["measured"] is False and "probes were off" in off["message"]
    assert off["variants"]["bn"]["step"] == []


def test_probed_sweep_report_says_it_in_numbers(service: Service) -> None:
    body = {"grid": {"learning_rate": [0.05, 0.5]}, "base": NETS | {"probes": PROBES}}
    body["base"].pop("learning_rate")
    posted = service.client.post("/sweeps", json=body)
    assert posted.status_code == 202, posted.text
    sweep = wait_for_sweep(service, posted.json()["id"], finished)
    assert sweep["status"] == "succeeded", sweep
    report = service.client.get(f"/sweeps/{sweep['id']}/report").json()
    for row in report["rows"]:
        plain, bn = row["why"]["plain"], row["why"]["bn"]
        assert plain["beta_smoothness"] > 0 and bn["sharpness"] > 0
        assert row["beta_smoothness_plain_over_bn"] == pytest.approx(
            plain["beta_smoothness"] / bn["beta_smoothness"]
        )
    markdown = service.client.get(f"/sweeps/{sweep['id']}/report?format=md").text
    assert "β plain / BN" in markdown
