"""Nets ready to serve, kept in memory: /predict loads a checkpoint once, not per request.

An entry is made only for a succeeded experiment, whose checkpoints never change again; so a hit
needs no database round trip. Entries are keyed by (experiment id, variant, version asked for),
None standing for the latest, with the version actually loaded kept beside it. A later version
appears only through recalibration (routes/study.py), which drops that net's "latest" entry from
this process's cache. Loading verifies the file's sha256 against the one recorded when it was
written: a file changed on disk is refused, not served.
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
from bnlab.models.network import NetStack
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Checkpoint

Key = tuple[int, str, int | None]  # (experiment id, variant, checkpoint version; None: latest)
Loader = Callable[[int, str, int | None], "LoadedNet"]


@dataclass(frozen=True)
class LoadedNet:
    net: ServedNet
    checkpoint_version: int


class ServedNets:
    """A bounded LRU of loaded nets, safe to use from the event loop and from threads."""

    def __init__(self, capacity: int, load: Loader) -> None:
        self._capacity = capacity
        self._load = load
        self._entries: OrderedDict[Key, LoadedNet] = OrderedDict()
        self._lock = threading.Lock()
        # One load at a time: a burst of requests for a cold net loads it once, not per request.
        self._loading = threading.Lock()
        # For /metrics: lookups answered from memory, and loads from a checkpoint (a load that
        # fails counts too). Plain integers, bumped under locks the paths take anyway.
        self.hits = 0
        self.misses = 0

    def get(self, experiment_id: int, variant: str, version: int | None = None) -> ServedNet | None:
        """The hot path: a dict lookup under a lock, no I/O (`_entry` inlined: a call less)."""
        key = (experiment_id, variant, version)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry.net

    def _entry(self, key: Key) -> LoadedNet | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry

    def load(self, experiment_id: int, variant: str, version: int | None = None) -> ServedNet:
        """Load (blocking: database, file hash, tensors) unless another caller just did."""
        return self.loaded(experiment_id, variant, version).net

    def loaded(self, experiment_id: int, variant: str, version: int | None = None) -> LoadedNet:
        """The net and the checkpoint version it came from, loaded if need be (blocking)."""
        key = (experiment_id, variant, version)
        with self._loading:
            entry = self._entry(key)
            if entry is not None:
                return entry
            self.misses += 1
            entry = self._load(experiment_id, variant, version)
            with self._lock:
                self._entries[key] = entry
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            return entry

    def forget_latest(self, experiment_id: int, variant: str) -> None:
        """A new checkpoint version was made: "latest" must be looked up again."""
        with self._lock:
            self._entries.pop((experiment_id, variant, None), None)

    def __len__(self) -> int:
        return len(self._entries)


def checkpoint_loader(settings: Settings, sessions: sessionmaker[Session]) -> Loader:
    def load(experiment_id: int, variant: str, version: int | None) -> LoadedNet:
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
            checkpoint = queries.checkpoint_of(session, experiment_id, variant, version)
        if checkpoint is None and version is not None:
            raise HTTPException(
                404, f"experiment {experiment_id} has no {variant} checkpoint version {version}"
            )
        if checkpoint is None:
            raise HTTPException(409, f"experiment {experiment_id} has no {variant} checkpoint")
        stack, _meta = open_checkpoint(checkpoint, experiment_id, variant, settings)
        return LoadedNet(ServedNet(stack), checkpoint.version)

    return load


def open_checkpoint(
    checkpoint: Checkpoint, experiment_id: int, variant: str, settings: Settings
) -> tuple[NetStack, dict]:
    """The checkpoint's net and metadata, its file checked against the recorded sha256; a 409
    that says what is wrong otherwise."""
    path = Path(checkpoint.path)
    what = f"the {variant} checkpoint of experiment {experiment_id}"
    if checkpoint.version > 1:
        what += f" (version {checkpoint.version})"
    try:
        if sha256_of(path) != checkpoint.sha256:
            raise HTTPException(
                409,
                f"{what} changed on disk since it was written (sha256 mismatch); it is not served",
            )
        stack, meta = load_net(path, settings.bn_impl)
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
    return stack, meta
