"""Checkpoints on an object store (moto's real S3 server), through the real service on both
stacks: the worker writes every checkpoint and training state to the bucket and the API serves
them from there; a job resumes from its state in the bucket; the store restarted mid-job costs
nothing. A store bnlab cannot use stops `bnlab up`, `bnlab api` and `bnlab worker` at start-up
with one line saying what to fix."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import (
    SPEC,
    StartService,
    assert_complete_curve,
    assert_same_weights,
    finished,
    stop_gracefully,
)
from tests.objectstore import CREDENTIALS, ObjectStore, free_port, object_store
from tests.service.conftest import Service

__all__ = ["object_store"]  # a fixture, used by name
pytestmark = pytest.mark.service

PIXELS = {"pixels": [0.5] * 784}


@pytest.fixture
def bucket(object_store: ObjectStore) -> str:
    return object_store.new_bucket()


def start_on_s3(start_service: StartService, bucket: str) -> Service:
    return start_service(checkpoint_dir=f"s3://{bucket}/checkpoints")


def keys(object_store: ObjectStore, bucket: str, experiment_id: int) -> dict[str, bytes]:
    """The experiment's objects in the bucket, by file name."""
    folder = f"checkpoints/experiment-{experiment_id}/"
    objects = object_store.objects(bucket)
    return {
        key.removeprefix(folder): data for key, data in objects.items() if key.startswith(folder)
    }


def kept(experiment: dict, lease: int = 1) -> set[str]:
    """The names of the training states it kept to fork from, as its lease wrote them."""
    return {
        f"kept/lease-{lease}/training-state-{step}.safetensors" for step in experiment["kept_steps"]
    }


def test_checkpoints_are_written_to_the_bucket_and_served_from_it(
    start_service: StartService, object_store: ObjectStore, bucket: str, idx_data_dir: Path
) -> None:
    service = start_on_s3(start_service, bucket)
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]

    stored = keys(object_store, bucket, experiment_id)
    # under its lease's folder; the state went at the end, but for those kept to fork from
    nets = {"lease-1/plain.safetensors", "lease-1/bn.safetensors"}
    assert experiment["kept_steps"] and set(stored) == nets | kept(experiment)
    assert not (Path(service.env["BNLAB_STATE_DIR"]) / "checkpoints").exists()
    for variant in ("plain", "bn"):
        download = service.client.get(f"/experiments/{experiment_id}/checkpoints/{variant}")
        assert download.content == stored[f"lease-1/{variant}.safetensors"]
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)
    predict = f"/predict?experiment_id={experiment_id}&variant=bn&mode=population"
    assert service.client.post(predict, json=PIXELS).status_code == 200

    recalibrated = service.client.post(f"/experiments/{experiment_id}/recalibrate", timeout=120)
    assert recalibrated.status_code == 201, recalibrated.text
    assert recalibrated.json()["version"] == 2
    [new] = set(keys(object_store, bucket, experiment_id)) - set(stored)
    assert new.startswith("lease-1/bn-recalibrated-")  # beside the checkpoint it came from
    answer = service.client.post(f"{predict}&version=2", json=PIXELS)
    assert answer.status_code == 200, answer.text


def test_an_object_changed_or_gone_from_the_bucket_is_refused(
    start_service: StartService, object_store: ObjectStore, bucket: str
) -> None:
    service = start_on_s3(start_service, bucket)
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    assert service.wait_for(experiment_id, finished)["status"] == "succeeded"
    folder = f"{bucket}/checkpoints/experiment-{experiment_id}/lease-1"
    store = object_store.filesystem()
    changed = bytearray(store.cat_file(f"{folder}/bn.safetensors"))
    changed[-1] ^= 0xFF
    store.pipe_file(f"{folder}/bn.safetensors", bytes(changed))
    store.rm_file(f"{folder}/plain.safetensors")

    for variant, said in [("bn", "changed on disk"), ("plain", "missing")]:
        refused = service.client.get(f"/experiments/{experiment_id}/checkpoints/{variant}")
        assert refused.status_code == 409, refused.text
        assert said in refused.json()["detail"]
        assert bucket not in refused.text  # where it is stored is the operator's business
        predict = f"/predict?experiment_id={experiment_id}&variant={variant}"
        assert service.client.post(predict, json=PIXELS).status_code == 409


def test_a_job_resumes_from_its_training_state_in_the_bucket(
    start_service: StartService, object_store: ObjectStore, bucket: str, idx_data_dir: Path
) -> None:
    service = start_on_s3(start_service, bucket)
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)
    stop_gracefully(service.processes["worker-cpu"])
    handed_back = service.client.get(f"/experiments/{experiment_id}").json()
    assert handed_back["status"] == "queued", handed_back
    saved = keys(object_store, bucket, experiment_id)
    assert [name for name in saved if name.startswith("lease-1/training-state-")], saved

    service.start_worker("cpu", name="worker-next")
    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    assert f"resumes at step {handed_back['progress']['step']}" in service.log("worker-next")
    assert_complete_curve(service, experiment_id, SPEC)
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)


def test_the_store_restarted_mid_job_costs_nothing(
    start_service: StartService, object_store: ObjectStore, bucket: str, idx_data_dir: Path
) -> None:
    service = start_on_s3(start_service, bucket)
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)
    object_store.stop()  # moto keeps objects in memory: it comes back empty, bucket made again
    time.sleep(3)
    object_store.start()
    object_store.make_bucket(bucket)

    experiment = service.wait_for(experiment_id, finished)
    assert experiment["status"] == "succeeded", experiment["error"]
    assert_complete_curve(service, experiment_id, SPEC)
    assert_same_weights(service, experiment_id, SPEC, idx_data_dir)
    # the states kept before the store came back empty are gone with it: the last one is there
    stored = set(keys(object_store, bucket, experiment_id))
    nets = {"lease-1/plain.safetensors", "lease-1/bn.safetensors"}
    last = f"kept/lease-1/training-state-{SPEC['training_batches']}.safetensors"
    assert nets | {last} <= stored <= nets | kept(experiment)


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)  # a minute of retrying: once
def test_a_store_gone_for_good_fails_the_job_with_a_reason(
    start_service: StartService, object_store: ObjectStore, bucket: str
) -> None:
    service = start_on_s3(start_service, bucket)
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]
    service.wait_for(experiment_id, lambda e: e["progress"]["step"] >= 100)
    object_store.stop()
    try:
        experiment = service.wait_for(experiment_id, finished, timeout=300)
    finally:
        object_store.start()
    assert experiment["status"] == "failed"
    error = experiment["error"]
    assert error.startswith(f"the checkpoint store failed for 60 s at s3://{bucket}/"), error
    assert "Could not connect to the endpoint URL" in error
    assert "Traceback" not in error and CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in error


# -- start-up ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """An S3 server that knows no key: every request is refused (403)."""
    store = ObjectStore(
        free_port(), tmp_path_factory.mktemp("moto") / "moto.log", refuse_credentials=True
    )
    store.start()
    yield store
    store.stop()


FAULTS = {
    "unknown scheme": ("foo://bucket/checkpoints", "bnlab cannot open foo:// locations"),
    "no bucket": ("s3://bnlab-no-such-bucket/checkpoints", "its bucket does not exist"),
    "refused key": ("s3://bnlab-any/checkpoints", "the store refused bnlab's credentials"),
}


@pytest.mark.parametrize("command", ["up", "api", "worker"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_store_bnlab_cannot_use_stops_it_at_start_up_with_one_line(
    command: str,
    fault: str,
    tmp_path: Path,
    object_store: ObjectStore,
    refusing_store: ObjectStore,
) -> None:
    location, said = FAULTS[fault]
    endpoint = refusing_store if fault == "refused key" else object_store
    env = {
        **os.environ,
        "BNLAB_STATE_DIR": str(tmp_path / "state"),
        "BNLAB_CHECKPOINT_DIR": location,
        "AWS_ENDPOINT_URL": endpoint.endpoint,
    }
    started = subprocess.run(
        [sys.executable, "-m", "bnlab.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 1
    said_all = started.stdout + started.stderr
    assert said_all.strip().splitlines() == [started.stderr.strip()]
    assert said in started.stderr and "BNLAB_CHECKPOINT_DIR" in started.stderr
    assert "Traceback" not in said_all
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in said_all
