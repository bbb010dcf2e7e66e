"""Workers on three hosts that share nothing but PostgreSQL, Redis and the object store: a sweep
spreads over them and the API serves what they wrote; a host cut off mid-job loses the job to
another, which finishes it as if nothing happened, and the cut host, back, writes nothing for it.
"""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.faults.conftest import SPEC, assert_complete_curve, checkpoint, experiment_row, finished
from tests.multihost.conftest import Cluster, Network, cut_between_transactions, running_cluster
from tests.service.conftest import SMALL

pytestmark = pytest.mark.service

HOSTS = 3


@pytest.fixture(scope="module")
def cluster(
    network: Network, tmp_path_factory: pytest.TempPathFactory, idx_data_dir: Path
) -> Iterator[Cluster]:
    with running_cluster(network, tmp_path_factory.mktemp("multihost"), idx_data_dir, HOSTS) as c:
        yield c


def stored_curve(cluster: Cluster, experiment_id: int) -> list[tuple]:
    """The experiment's rows of the curve table, as stored: (variant, step, accuracy, loss)."""
    return cluster.sql(
        "SELECT r.variant, c.step, c.val_accuracy, c.train_loss FROM curve_points c"
        " JOIN runs r ON r.id = c.run_id WHERE r.experiment_id = :id ORDER BY 1, 2",
        id=experiment_id,
    )


def test_a_sweep_spreads_over_the_hosts_and_the_api_serves_their_checkpoints(
    cluster: Cluster,
) -> None:
    service = cluster.service
    # Cells with different seeds are separate jobs: six of them for three hosts.
    base = {name: value for name, value in SMALL.items() if name != "seed"}
    posted = service.client.post(
        "/sweeps", json={"grid": {"seed": [0, 1, 2, 3, 4, 5]}, "base": base}
    )
    assert posted.status_code == 202, posted.text
    done = service.poll(f"/sweeps/{posted.json()['id']}", finished, 150)
    cells = [service.client.get(cell["url"]).json() for cell in done["cells"]]
    assert [cell["status"] for cell in cells] == ["succeeded"] * 6, done

    ran_on = {
        cell["id"]: cluster.host_of(experiment_row(service, cell["id"])["worker"]).name
        for cell in cells
    }
    assert set(ran_on.values()) == {host.name for host in cluster.hosts}, ran_on

    # The API host ran no worker, and no host keeps a checkpoint in its own folders: every
    # checkpoint the API serves, another host wrote to the object store.
    assert not list(cluster.folder.rglob("*.safetensors"))
    assert cluster.objects()
    pixels = [0.0] * 392 + [1.0] * 392
    for cell in cells:
        for variant in ("plain", "bn"):
            answer = service.client.post(
                "/predict",
                params={"experiment_id": cell["id"], "variant": variant, "mode": "population"},
                json={"pixels": pixels},
            )
            assert answer.status_code == 200, (ran_on[cell["id"]], answer.text)
            assert 0 <= answer.json()["prediction"] <= 9


def test_a_host_cut_off_mid_job_loses_it_and_writes_nothing_when_back(
    cluster: Cluster, idx_data_dir: Path
) -> None:
    service = cluster.service
    # The same spec twice: one to cut off mid-job, one to run undisturbed on another host.
    cut_id, alone_id = (service.client.post("/experiments", json=SPEC).json()["id"] for _ in "ab")
    service.wait_for(cut_id, lambda e: e["progress"]["step"] >= 100)
    service.wait_for(alone_id, lambda e: e["status"] == "running")
    owner = experiment_row(service, cut_id)["worker"]
    cut = cluster.host_of(owner)

    cut_between_transactions(cluster, cut)
    try:
        service.wait_for(cut_id, lambda e: experiment_row(service, cut_id)["lease_token"] == 2, 60)
        successor = experiment_row(service, cut_id)["worker"]
        assert cluster.host_of(successor) != cut, successor
        assert service.wait_for(cut_id, finished)["status"] == "succeeded"
        resumed_at = re.search(
            rf"experiment {cut_id} resumes at step (\d+)",
            service.log(cluster.host_of(successor).name),
        )
        assert resumed_at and int(resumed_at[1]) >= 100, "the successor started over"
        written = cluster.objects()
        curve = stored_curve(cluster, cut_id)
    finally:
        cut.reconnect()

    # Back on the network, the cut host's job finds its lease taken and stops writing.
    cluster.wait_for_workers(HOSTS)
    lost = f"experiment {cut_id}: lease 1 of {owner} was taken; this worker writes nothing more"
    service.wait_for(cut_id, lambda e: lost in service.log(cut.name), 90)
    now = cluster.objects()
    changed = sorted(key for key in {*written, *now} if written.get(key) != now.get(key))
    # Nothing a row names written, replaced or removed. A sample point's state upload in flight
    # when the link went down completes once it is back (object writes cannot be fenced), but
    # under the lost lease's own folders (its states, its kept states), which nothing reads or
    # serves.
    experiment_folder = f"checkpoints/experiment-{cut_id}"
    lost_lease = (f"{experiment_folder}/lease-1/", f"{experiment_folder}/kept/lease-1/")
    assert all(key.startswith(lost_lease) for key in changed), changed
    named = cluster.sql(
        "SELECT k.path FROM checkpoints k JOIN runs r ON r.id = k.run_id"
        " WHERE r.experiment_id = :id",
        id=cut_id,
    )
    assert len(named) == 2 and all(f"/experiment-{cut_id}/lease-2/" in path for (path,) in named)
    assert experiment_row(service, cut_id)["state_location"] is None
    assert stored_curve(cluster, cut_id) == curve
    steps = [(variant, step) for variant, step, *_ in curve]
    assert len(steps) == len(set(steps)), "a sample point is there twice"
    assert experiment_row(service, cut_id)["lease_token"] == 2
    assert_complete_curve(service, cut_id, SPEC)  # every sample point once

    # The same curve, point for point, and the same weights as the same spec run alone.
    assert service.wait_for(alone_id, finished)["status"] == "succeeded"
    resumed = service.client.get(f"/experiments/{cut_id}/curve").json()["series"]
    alone = service.client.get(f"/experiments/{alone_id}/curve").json()["series"]
    assert resumed == alone
    for variant in ("plain", "bn"):
        ours, theirs = checkpoint(service, cut_id, variant), checkpoint(service, alone_id, variant)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[name], theirs[name]) for name in ours), variant
