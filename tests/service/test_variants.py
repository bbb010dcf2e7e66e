"""An experiment of all five variants through a real worker: each trains, keeps a curve, layer
statistics and a checkpoint, and answers /predict and the demos; only the BN variants' answers
depend on the mode."""

from pathlib import Path

import pytest

from bnlab.models.checkpoint import load_net
from bnlab.models.data import load_splits
from bnlab.vocabulary import BATCH_DEPENDENT, VARIANTS
from tests.service.conftest import SMALL, STEPS, Service

pytestmark = pytest.mark.service

FIVE = SMALL | {"variants": list(VARIANTS), "hidden_layers": [32, 32], "groups": 4}


def test_five_variants_train_side_by_side_and_serve(
    service: Service, idx_data_dir: Path, tmp_path: Path
) -> None:
    posted = service.client.post("/experiments", json=FIVE)
    assert posted.status_code == 202, posted.text
    experiment_id = posted.json()["id"]
    experiment = service.wait_for(
        experiment_id, lambda e: e["status"] != "queued" and e["status"] != "running"
    )
    assert experiment["status"] == "succeeded", experiment["error"]
    assert list(experiment["results"]) == list(VARIANTS)
    for variant, results in experiment["results"].items():
        assert 0.5 < results["test_accuracy"] <= 1.0, variant

    series = service.client.get(f"/experiments/{experiment_id}/curve").json()["series"]
    assert {variant: series[variant]["step"] for variant in VARIANTS} == dict.fromkeys(
        VARIANTS, STEPS
    )
    layers = service.client.get(f"/experiments/{experiment_id}/activations").json()["variants"]
    assert all(len(layers[variant]) == 2 for variant in VARIANTS)

    image = (load_splits("mnist", idx_data_dir, False, 200).test.images[0].float() / 255).tolist()
    for variant in VARIANTS:
        answers = {
            mode: service.client.post(
                "/predict",
                params={"experiment_id": experiment_id, "variant": variant, "mode": mode},
                json={"pixels": image},
            ).json()
            for mode in ("population", "batch")
        }
        assert all(a["mode_applies"] is (variant in BATCH_DEPENDENT) for a in answers.values())
        if variant not in BATCH_DEPENDENT:
            assert answers["population"]["probabilities"] == pytest.approx(
                answers["batch"]["probabilities"], abs=1e-5
            )
        download = service.client.get(f"/experiments/{experiment_id}/checkpoints/{variant}")
        assert download.status_code == 200
        path = tmp_path / f"{variant}.safetensors"
        path.write_bytes(download.content)
        stack, meta = load_net(path)
        assert (stack.variant, meta["variant"], stack.arch.groups) == (variant, variant, 4)

    collapse = service.client.post(f"/experiments/{experiment_id}/collapse", params={"n": 30})
    assert collapse.status_code == 200, collapse.text
    every = collapse.json()["variants"]
    assert list(every) == list(VARIANTS)
    for variant, shown in every.items():
        one_class = len(set(shown["one_at_a_time"]["batch"]["predictions"])) == 1
        assert one_class is (variant in BATCH_DEPENDENT), variant
        assert shown["mode_applies"] is (variant in BATCH_DEPENDENT)
    effect = service.client.get(f"/experiments/{experiment_id}/batch-size-effect").json()
    assert list(effect["variants"]) == list(VARIANTS)
