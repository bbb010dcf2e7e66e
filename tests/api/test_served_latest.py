"""/predict's net cache and new checkpoint versions: "latest" is looked up again after
`latest_seconds` (a version another API process made is then served), a given version is kept."""

import time

from bnlab.api.predict.serving import LoadedNet, Loader, ServedNets
from bnlab.vocabulary import Variant


def counting_loader(loads: list[tuple[int, Variant, int | None]]) -> Loader:
    def load(experiment_id: int, variant: Variant, version: int | None) -> LoadedNet:
        loads.append((experiment_id, variant, version))
        return LoadedNet(net=object(), checkpoint_version=len(loads))  # type: ignore[arg-type]

    return load


def test_latest_is_looked_up_again_after_a_while_and_a_version_is_kept() -> None:
    loads: list[tuple[int, Variant, int | None]] = []
    nets = ServedNets(8, counting_loader(loads), latest_seconds=0.2)
    latest = nets.load(1, "bn")
    pinned = nets.load(1, "bn", 1)
    assert nets.get(1, "bn") is latest and nets.get(1, "bn", 1) is pinned
    time.sleep(0.3)
    assert nets.get(1, "bn") is None  # the hot path no longer answers from memory
    assert nets.get(1, "bn", 1) is pinned
    assert nets.loaded(1, "bn").checkpoint_version == 3
    assert loads == [(1, "bn", None), (1, "bn", 1), (1, "bn", None)]
