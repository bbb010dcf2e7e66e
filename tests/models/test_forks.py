"""A fork's start (`forked_state`): the nets it keeps continue exactly as they were; a new
variant's net starts from the plain net's weight matrices with its biases and normalization
fresh, and trains from there; without a plain net there is nothing to start it from."""

import pytest
import torch

from bnlab.models.data import Splits
from bnlab.models.forks import forked_state
from bnlab.models.network import Architecture, NetStack
from bnlab.models.trainer import Cell, TrainingSpec, TrainingState, build_trainer
from tests.models.conftest import CPU, LONE

ARCH = Architecture(hidden_layers=(32, 32))
SPEC = TrainingSpec(learning_rate=0.5, training_batches=60, batches_per_sample=20)


def state_at(splits: Splits, step: int) -> TrainingState:
    """The study's pair (plain, bn) trained to `step`: its state there, as a worker keeps it."""
    trainer = build_trainer(ARCH, [Cell(LONE, SPEC)], splits, CPU)
    trainer.run(lambda sample: None, lambda: trainer.step == step)
    return trainer.state(LONE)


def nets(state: TrainingState, variant: str) -> dict[str, torch.Tensor]:
    prefix = f"{variant}/"
    return {k.removeprefix(prefix): t for k, t in state[0].items() if k.startswith(prefix)}


def test_a_new_variant_takes_the_plain_weights_and_starts_its_normalization_afresh(
    splits: Splits,
) -> None:
    parent = state_at(splits, 20)

    forked = forked_state(parent, ARCH, ["plain", "layer_norm"])

    assert {key.split("/")[0] for key in forked[0]} == {"plain", "layer_norm"}
    assert forked[1]["step"] == 20
    plain, layer_norm = nets(parent, "plain"), nets(forked, "layer_norm")
    assert all(torch.equal(nets(forked, "plain")[k], t) for k, t in plain.items())
    fresh = NetStack(ARCH, "layer_norm", [[torch.zeros(s) for s in ARCH.weight_shapes()]])
    for name, initial in fresh.net_state(0).items():
        expected = plain[name] if name.startswith("weight.") else initial
        assert torch.equal(layer_norm[name], expected), name
    assert any(not torch.equal(t, torch.zeros_like(t)) for t in plain.values())


def test_a_trainer_of_the_fork_s_variants_continues_from_the_forked_state(
    splits: Splits,
) -> None:
    forked = forked_state(state_at(splits, 20), ARCH, ["plain", "layer_norm"])
    trainer = build_trainer(ARCH, [Cell(LONE, SPEC)], splits, CPU, variants=["plain", "layer_norm"])

    assert trainer.restore({LONE: forked})
    samples = []
    trainer.run(samples.append)

    assert [sample.step for sample in samples] == [40, 60]  # on from the fork's step
    nets_at_end = samples[-1].cells[LONE].nets
    assert set(nets_at_end) == {"plain", "layer_norm"}
    assert all(net.train_loss is not None and net.train_loss < 2.3 for net in nets_at_end.values())


def test_a_new_variant_needs_a_plain_net_to_start_from(splits: Splits) -> None:
    parent = state_at(splits, 20)
    bn_only = forked_state(parent, ARCH, ["bn"])
    assert {key.split("/")[0] for key in bn_only[0]} == {"bn"}

    with pytest.raises(ValueError, match="no plain net"):
        forked_state(bn_only, ARCH, ["bn", "group_norm"])
