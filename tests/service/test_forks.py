"""Forks end to end, on both stacks, through a real worker: a fork with no changes continues its
parent exactly (the same curve from its step on, as floats, and the same final weights); one
with another learning rate differs, and says so; the parent's kept states outlive its job."""

import pytest
import torch
from safetensors.torch import load

from tests.service.conftest import SMALL, Service
from tests.service.test_why import PROBES

pytestmark = pytest.mark.service

# The parent keeps its state at every second sample point (and the last): 0, 100, 200, 300.
PARENT = {**SMALL, "keep_states_every": 2}


def finished(experiment: dict) -> bool:
    return experiment["status"] in ("succeeded", "failed", "cancelled")


def succeeded(service: Service, experiment_id: int) -> dict:
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    return experiment


def fork(service: Service, parent_id: int, step: int, **changes: object) -> int:
    response = service.client.post(
        f"/experiments/{parent_id}/fork", json={"step": step, "changes": changes}
    )
    assert response.status_code == 201, response.text
    fork_id: int = response.json()["id"]
    return fork_id


def curve(service: Service, experiment_id: int) -> dict:
    series: dict = service.client.get(f"/experiments/{experiment_id}/curve").json()["series"]
    return series


def from_step(series: dict, step: int) -> dict:
    """Each net's points from `step` on."""
    cut = {}
    for variant, values in series.items():
        first = values["step"].index(step)
        cut[variant] = {name: column[first:] for name, column in values.items()}
    return cut


def tensors(service: Service, experiment_id: int, variant: str) -> dict[str, torch.Tensor]:
    download = service.client.get(f"/experiments/{experiment_id}/checkpoints/{variant}")
    assert download.status_code == 200, download.text
    return load(download.content)


@pytest.fixture(scope="module")
def parent(service: Service) -> dict:
    posted = service.client.post("/experiments", json=PARENT)
    assert posted.status_code == 202, posted.text
    return succeeded(service, posted.json()["id"])


def test_a_fork_with_no_changes_continues_its_parent_bit_for_bit(
    service: Service, parent: dict
) -> None:
    # kept at every second sample point and the last, and still there after its job ended
    assert parent["kept_steps"] == [0, 100, 200, 300]

    forked = succeeded(service, fork(service, parent["id"], 100))

    assert forked["parent"] == {"id": parent["id"], "step": 100, "changes": {}}
    ours, theirs = curve(service, forked["id"]), from_step(curve(service, parent["id"]), 100)
    assert ours == theirs  # steps, val_accuracy and train_loss: equal floats
    assert ours["bn"]["step"] == [100, 150, 200, 250, 300]
    for variant in ("plain", "bn"):
        mine, reference = forked["results"][variant], parent["results"][variant]
        for result in ("final_val_accuracy", "test_accuracy", "test_accuracy_batch_stats"):
            assert mine[result] == reference[result], (variant, result)
    for variant in ("plain", "bn"):
        mine, reference = (
            tensors(service, forked["id"], variant),
            tensors(service, parent["id"], variant),
        )
        assert mine.keys() == reference.keys()
        assert all(torch.equal(mine[name], reference[name]) for name in mine), variant
    # its own kept states: every second of its sample points after 100, and the last
    assert forked["kept_steps"] == [200, 300]
    assert service.client.get(f"/experiments/{parent['id']}").json()["forks"] == [forked["id"]]


def test_a_fork_with_another_learning_rate_differs_and_says_what_changed(
    service: Service, parent: dict
) -> None:
    forked = succeeded(service, fork(service, parent["id"], 200, learning_rate=0.05))

    assert forked["parent"]["changes"] == {"learning_rate": {"parent": 0.5, "fork": 0.05}}
    assert forked["spec"]["learning_rate"] == 0.05
    ours, theirs = curve(service, forked["id"]), from_step(curve(service, parent["id"]), 200)
    for variant in ("plain", "bn"):
        assert ours[variant]["step"] == theirs[variant]["step"] == [200, 250, 300]
        # the same point at the fork's step (the same nets), then another run
        assert ours[variant]["val_accuracy"][0] == theirs[variant]["val_accuracy"][0]
        assert ours[variant]["train_loss"][1:] != theirs[variant]["train_loss"][1:]
        mine, reference = (
            tensors(service, forked["id"], variant),
            tensors(service, parent["id"], variant),
        )
        assert not torch.equal(mine["weight.0"], reference["weight.0"])


def test_a_fork_can_train_longer_and_add_a_variant_from_the_plain_net(
    service: Service, parent: dict
) -> None:
    forked = succeeded(
        service,
        fork(service, parent["id"], 300, training_batches=400, variants=["plain", "layer_norm"]),
    )

    series = curve(service, forked["id"])
    assert series["plain"]["step"] == [300, 350, 400]
    assert series["layer_norm"]["step"] == [350, 400]  # it starts after the fork's step
    assert set(forked["results"]) == {"plain", "layer_norm"}
    assert forked["results"]["layer_norm"]["test_accuracy"] > 0.5


def series_from(series: dict, step: int) -> dict:
    """A series' per-step columns from `step` on (the others, e.g. step sizes, as they are)."""
    first, count = series["step"].index(step), len(series["step"])
    return {
        name: column[first:] if isinstance(column, list) and len(column) == count else column
        for name, column in series.items()
    }


def test_a_probed_parent_s_fork_with_no_changes_measures_what_it_did_from_its_step_on(
    service: Service,
) -> None:
    posted = service.client.post("/experiments", json=PARENT | {"probes": PROBES})
    assert posted.status_code == 202, posted.text
    parent_id = succeeded(service, posted.json()["id"])["id"]
    fork_id = succeeded(service, fork(service, parent_id, 100))["id"]

    for what in ("landscape", "sharpness", "ics"):
        ours = service.client.get(f"/experiments/{fork_id}/{what}").json()["variants"]
        theirs = service.client.get(f"/experiments/{parent_id}/{what}").json()["variants"]
        assert ours.keys() == theirs.keys() == {"plain", "bn"}
        for variant in ours:
            # ics: a series per weight layer; the others: one per net
            mine, reference = ours[variant], theirs[variant]
            if what != "ics":
                mine, reference = [mine], [reference]
            assert [s["step"] for s in mine] == [[100, 200, 300]] * len(reference), what
            assert mine == [series_from(s, 100) for s in reference], (what, variant)
