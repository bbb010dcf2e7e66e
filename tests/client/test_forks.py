"""`Experiment.fork` as a notebook user calls it, against a real running service: the fork's
handle, its lineage, the parent's forks and kept steps, and a step not kept refused with the
server's message."""

import pytest

from bnlab import Client
from bnlab.client import ApiError
from tests.service.conftest import SMALL

pytestmark = pytest.mark.service


def test_fork_returns_the_fork_s_handle_and_both_show_the_lineage(client: Client) -> None:
    parent = client.run(**SMALL, keep_states_every=3).wait(progress=False)
    assert parent.kept_steps == [0, 150, 300]
    assert parent.parent is None

    fork = parent.fork(150, learning_rate=0.1, training_batches=400).wait(progress=False)

    assert fork.status == "succeeded"
    assert fork.parent == {
        "id": parent.id,
        "step": 150,
        "changes": {
            "learning_rate": {"parent": 0.5, "fork": 0.1},
            "training_batches": {"parent": 300, "fork": 400},
        },
    }
    assert fork.curve()["step"].min() == 150
    assert [forked.id for forked in parent.forks] == [fork.id]


def test_a_step_not_kept_raises_with_the_server_s_message(client: Client) -> None:
    parent = client.run(**SMALL, keep_states_every=3).wait(progress=False)
    with pytest.raises(ApiError, match="nearest kept steps are 0, 150, 300"):
        parent.fork(100)
    with pytest.raises(ApiError, match="a fork cannot change seed"):
        parent.fork(150, seed=4)
