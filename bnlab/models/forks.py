"""A fork's start: a training state kept at a sample point (`Trainer.state`), made into the
state of a cell with other variants. The nets of variants the state holds continue as they
were; a new variant's net starts from the state's plain net's weight matrices, with its biases
and normalization (gamma, beta, running statistics) at their initial values, as if the plain
net's weights had been its initial ones."""

from collections.abc import Sequence

from bnlab.models.network import Architecture, stack_class
from bnlab.models.trainer import TrainingState
from bnlab.vocabulary import Variant


def nets_of(state: TrainingState) -> set[str]:
    """The variants whose nets a training state holds."""
    return {key.split("/", 1)[0] for key in state[0]}


def forked_state(
    state: TrainingState, arch: Architecture, variants: Sequence[Variant]
) -> TrainingState:
    """`state` with a net of each of `variants` (and no other), at the same step."""
    tensors, meta = state
    held = nets_of(state)
    new = [variant for variant in variants if variant not in held]
    if new and "plain" not in held:
        raise ValueError(
            f"new variants ({', '.join(new)}) start from the plain net's weights, and this "
            "state has no plain net"
        )
    forked = {key: t for key, t in tensors.items() if key.split("/", 1)[0] in variants}
    if new:
        weights = [tensors[f"plain/weight.{i}"] for i in range(len(arch.weight_shapes()))]
        for variant in new:
            net = stack_class(arch)(arch, variant, [weights]).net_state(0)
            forked.update({f"{variant}/{name}": tensor for name, tensor in net.items()})
    diverged = meta["diverged_at"]
    assert isinstance(diverged, dict)
    still = {variant: at for variant, at in diverged.items() if variant in variants}
    return forked, {**meta, "diverged_at": still}
