"""Nets ready to serve, kept in memory: /predict loads a checkpoint once, not per request.

An entry is made only for a succeeded experiment, whose checkpoints never change again; so a hit
needs no database round trip. Entries are keyed by (experiment id, variant, version asked for),
None standing for the latest, with the version actually loaded kept beside it. A later version
appears only through recalibration (study/routes.py), which drops that net's "latest" entry from
this process's cache; other API processes look "latest" up again every `LATEST_SECONDS`.
Loading reads the checkpoint once, whole, from wherever it lives (a local file or an object
store, bnlab/artifacts.py) and verifies those bytes' sha256 against the one recorded when it was
written (`verified_bytes`, which the download route uses too): an object changed since is
refused, not served.
"""

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bnlab import artifacts
from bnlab.api.core.domain_errors import Conflict, NotFound, Unavailable
from bnlab.models.checkpoint import CheckpointError, decode_net, sha256
from bnlab.models.inference import ServedNet
from bnlab.models.network import Stack
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.tables import Checkpoint
from bnlab.vocabulary import Variant

log = logging.getLogger(__name__)
# "Latest" is looked up again after this long: a version another API process made (a
# recalibration) is served from then on. A given version never changes, so it is kept.
LATEST_SECONDS = 5.0
# A request waits this long for a store that does not answer, then gets a 503.
READ_RETRY_SECONDS = 5.0
Key = tuple[int, Variant, int | None]  # (experiment id, variant, checkpoint version; None: latest)
Loader = Callable[[int, Variant, int | None], "LoadedNet"]


@dataclass(frozen=True)
class LoadedNet:
    net: ServedNet
    checkpoint_version: int


class ServedNets:
    """A bounded LRU of loaded nets, safe to use from the event loop and from threads."""

    def __init__(self, capacity: int, load: Loader, latest_seconds: float = LATEST_SECONDS) -> None:
        self._capacity = capacity
        self._load = load
        self._latest_seconds = latest_seconds
        self._entries: OrderedDict[Key, LoadedNet] = OrderedDict()
        # When each "latest" entry must be looked up again (monotonic clock).
        self._latest_until: dict[Key, float] = {}
        self._lock = threading.Lock()
        # One load at a time: a burst of requests for a cold net loads it once, not per request.
        self._loading = threading.Lock()
        # For /metrics: lookups answered from memory, and loads from a checkpoint (a load that
        # fails counts too). Plain integers, bumped under locks the paths take anyway.
        self.hits = 0
        self.misses = 0

    def get(
        self, experiment_id: int, variant: Variant, version: int | None = None
    ) -> ServedNet | None:
        """The hot path: a dict lookup under a lock, no I/O (`_entry` inlined: a call less)."""
        key = (experiment_id, variant, version)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (version is None and self._latest_until[key] < time.monotonic()):
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry.net

    def _entry(self, key: Key) -> LoadedNet | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._latest_until.get(key, math.inf) < time.monotonic():
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry

    def load(self, experiment_id: int, variant: Variant, version: int | None = None) -> ServedNet:
        """Load (blocking: database, file hash, tensors) unless another caller just did."""
        return self.loaded(experiment_id, variant, version).net

    def loaded(self, experiment_id: int, variant: Variant, version: int | None = None) -> LoadedNet:
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
                if version is None:
                    self._latest_until[key] = time.monotonic() + self._latest_seconds
                while len(self._entries) > self._capacity:
                    dropped, _ = self._entries.popitem(last=False)
                    self._latest_until.pop(dropped, None)
            return entry

    def forget_latest(self, experiment_id: int, variant: Variant) -> None:
        """A new checkpoint version was made: "latest" must be looked up again."""
        with self._lock:
            self._entries.pop((experiment_id, variant, None), None)
            self._latest_until.pop((experiment_id, variant, None), None)

    def __len__(self) -> int:
        return len(self._entries)


def checkpoint_loader(settings: Settings, sessions: sessionmaker[Session]) -> Loader:
    def load(experiment_id: int, variant: Variant, version: int | None) -> LoadedNet:
        with sessions() as session:
            experiment = queries.get_experiment(session, experiment_id)
            if experiment is None:
                raise NotFound(f"no experiment with id {experiment_id}")
            if experiment.status != "succeeded":
                raise Conflict(
                    f"experiment {experiment_id} is {experiment.status}: predictions are served "
                    "once it has succeeded"
                )
            checkpoint = queries.checkpoint_of(session, experiment_id, variant, version)
            diverged_at = checkpoint.run.diverged_at_step if checkpoint is not None else None
        if diverged_at is not None:
            # its weights are not finite: every answer would be NaN, which JSON cannot carry
            raise Conflict(
                f"the {variant} net of experiment {experiment_id} diverged at step {diverged_at} "
                "(its training loss turned non-finite): it has no predictions; ask another variant"
            )
        if checkpoint is None and version is not None:
            raise NotFound(
                f"experiment {experiment_id} has no {variant} checkpoint version {version}"
            )
        if checkpoint is None:
            raise Conflict(f"experiment {experiment_id} has no {variant} checkpoint")
        stack, _meta = open_checkpoint(checkpoint, experiment_id, variant, settings)
        return LoadedNet(ServedNet(stack), checkpoint.version)

    return load


def verified_bytes(checkpoint: Checkpoint, experiment_id: int, variant: Variant) -> bytes:
    """The checkpoint's bytes, checked against the sha256 recorded when it was written: what
    download, /predict, the demos and recalibration all read.

    A file missing or changed since it was written is a `Conflict` (409) wherever it is asked
    for, not a 404: the checkpoint exists (it is recorded, and the URL or query that named it is
    right), but the server's copy of it cannot be served in its present state. A 404 would send
    the user to check an id that is correct; the 409's message says what is wrong with the file,
    which is the operator's to restore. A store that cannot be reached is a 503: retry later.
    """
    what = _describe(checkpoint, experiment_id, variant)
    try:
        data = artifacts.read(checkpoint.path, READ_RETRY_SECONDS)
    except FileNotFoundError:
        raise Conflict(f"{what} is recorded but its file is missing on disk") from None
    except artifacts.StoreError as error:
        # The operator reads where and why in the log; the client, only what it can act on.
        log.warning("%s: %s", what, error)
        raise Unavailable(f"{what} cannot be read now: its store is unreachable") from None
    if sha256(data) != checkpoint.sha256:
        raise Conflict(
            f"{what} changed on disk since it was written (sha256 mismatch); it is not served"
        )
    return data


def open_checkpoint(
    checkpoint: Checkpoint, experiment_id: int, variant: Variant, settings: Settings
) -> tuple[Stack, dict[str, Any]]:
    """The checkpoint's net and metadata from its verified bytes; a `Conflict` that says what is
    wrong otherwise."""
    data = verified_bytes(checkpoint, experiment_id, variant)
    what = _describe(checkpoint, experiment_id, variant)
    try:
        # Named by its file name: its folder or bucket on the server is no business of a client.
        stack, meta = decode_net(data, checkpoint.path.rsplit("/", 1)[-1], settings.bn_impl)
    except CheckpointError as error:
        raise Conflict(f"{what} does not load: {error}") from None
    if stack.variant != variant:
        raise Conflict(f"{what} holds a {stack.variant} net; it is not served")
    return stack, meta


def _describe(checkpoint: Checkpoint, experiment_id: int, variant: Variant) -> str:
    what = f"the {variant} checkpoint of experiment {experiment_id}"
    if checkpoint.version > 1:
        what += f" (version {checkpoint.version})"
    return what
