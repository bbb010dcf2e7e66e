"""Nets ready to serve, kept in memory: /predict loads a checkpoint once, not per request.

An entry is made only for a succeeded experiment, whose latest checkpoint never changes again;
so a hit needs no database round trip, and the entry is keyed by (experiment id, variant) with
the checkpoint version it was loaded from kept beside it. Loading verifies the file's sha256
against the one recorded when it was written: a file changed on disk is refused, not served.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException
from sqlalchemy.orm import Session, sessionmaker

from bnlab.models.checkpoint import CheckpointError, load_net, sha256_of
from bnlab.models.inference import ServedNet
from bnlab.settings import Settings
from bnlab.store import queries

Key = tuple[int, str]  # (experiment id, variant)


@dataclass(frozen=True)
class LoadedNet:
    net: ServedNet
    checkpoint_version: int


class ServedNets:
    """A bounded LRU of loaded nets, safe to use from the event loop and from threads."""

    def __init__(self, capacity: int, load: Callable[[int, str], LoadedNet]) -> None:
        self._capacity = capacity
        self._load = load
        self._entries: OrderedDict[Key, LoadedNet] = OrderedDict()
        self._lock = threading.Lock()
        # One load at a time: a burst of requests for a cold net loads it once, not per request.
        self._loading = threading.Lock()

    def get(self, experiment_id: int, variant: str) -> ServedNet | None:
        """The hot path: a dict lookup under a lock, no I/O."""
        key = (experiment_id, variant)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.net

    def load(self, experiment_id: int, variant: str) -> ServedNet:
        """Load (blocking: database, file hash, tensors) unless another caller just did."""
        with self._loading:
            net = self.get(experiment_id, variant)
            if net is not None:
                return net
            entry = self._load(experiment_id, variant)
            with self._lock:
                self._entries[(experiment_id, variant)] = entry
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            return entry.net

    def __len__(self) -> int:
        return len(self._entries)


def checkpoint_loader(
    settings: Settings, sessions: sessionmaker[Session]
) -> Callable[[int, str], LoadedNet]:
    def load(experiment_id: int, variant: str) -> LoadedNet:
        with sessions() as session:
            experiment = queries.get_experiment(session, experiment_id)
            if experiment is None:
                raise HTTPException(404, f"no experiment with id {experiment_id}")
            if experiment.status != "succeeded":
                raise HTTPException(
                    409,
                    f"experiment {experiment_id} is {experiment.status}: predictions are served "
                    "once it has succeeded",
                )
            checkpoint = queries.latest_checkpoint(session, experiment_id, variant)
        if checkpoint is None:
            raise HTTPException(409, f"experiment {experiment_id} has no {variant} checkpoint")
        path = Path(checkpoint.path)
        what = f"the {variant} checkpoint of experiment {experiment_id}"
        try:
            if sha256_of(path) != checkpoint.sha256:
                raise HTTPException(
                    409,
                    f"{what} changed on disk since it was written (sha256 mismatch); it is not "
                    "served",
                )
            stack, _meta = load_net(path, settings.bn_impl)
        except FileNotFoundError:
            raise HTTPException(409, f"{what} is missing on disk") from None
        except OSError as error:
            raise HTTPException(409, f"{what} cannot be read: {error.strerror}") from None
        except CheckpointError as error:
            # The message names the file; its folder on the server is no business of a client.
            message = str(error).replace(str(path), path.name)
            raise HTTPException(409, f"{what} does not load: {message}") from None
        if stack.variant != variant:
            raise HTTPException(409, f"{what} holds a {stack.variant} net; it is not served")
        return LoadedNet(ServedNet(stack), checkpoint.version)

    return load
