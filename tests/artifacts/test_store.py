"""bnlab/artifacts.py on a local folder and on a real S3 server: whole objects written and read
back, never seen half-written, checkpoints verified by the sha256 of what was read, writes that
wait for a store coming back, and start-up checks whose message says what to fix."""

import threading
import time
from pathlib import Path

import pytest
import torch

from bnlab import artifacts
from bnlab.models.checkpoint import load_net, load_state, save_net, save_state, sha256_of
from bnlab.models.network import Architecture, NetStack, initial_weights
from tests.objectstore import CREDENTIALS, ObjectStore

ARCH = Architecture(activation="relu", hidden_layers=(8, 8))
SECRET = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]


def test_an_object_is_written_read_back_whole_and_deleted(base: str) -> None:
    location = artifacts.locate(base, "experiment-1", "bn.safetensors")
    assert not artifacts.exists(location)
    artifacts.write(location, b"first")
    artifacts.write(location, b"second, longer")
    assert artifacts.read(location) == b"second, longer"
    assert artifacts.exists(location)
    artifacts.delete(location)
    artifacts.delete(location)  # gone already: nothing to do
    assert not artifacts.exists(location)
    with pytest.raises(FileNotFoundError):
        artifacts.read(location)


def test_a_location_is_an_absolute_path_or_a_url(tmp_path: Path) -> None:
    assert artifacts.locate("relative/folder", "a.bin") == str(
        Path("relative/folder/a.bin").absolute()
    )
    assert artifacts.locate(str(tmp_path), "x", "a.bin") == str(tmp_path / "x" / "a.bin")
    assert artifacts.locate("s3://bucket/prefix/", "x", "a.bin") == "s3://bucket/prefix/x/a.bin"


def test_a_reader_never_sees_half_an_object(base: str) -> None:
    location = artifacts.locate(base, "state.safetensors")
    versions = [bytes([1]) * 3_000_000, bytes([2]) * 5_000_000]
    artifacts.write(location, versions[0])
    writing = threading.Event()

    def rewrite() -> None:
        for turn in range(8):
            artifacts.write(location, versions[turn % 2])
        writing.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not writing.is_set():
        assert artifacts.read(location) in versions
        reads += 1
    writer.join()
    assert reads > 0
    if not base.startswith("s3://"):  # nothing written beside is left behind
        assert [p.name for p in Path(base).iterdir()] == ["state.safetensors"]


def test_checkpoints_round_trip_with_the_sha256_of_their_bytes(base: str) -> None:
    stack = NetStack(ARCH, "bn", [initial_weights(ARCH, 0.3, seed=3)])
    location = artifacts.locate(base, "experiment-1", "bn.safetensors")
    sha256, size = save_net(location, stack.net_state(0), variant="bn", arch=ARCH, step=7)
    assert sha256 == sha256_of(location)
    assert size == len(artifacts.read(location))
    loaded, meta = load_net(location)
    assert meta["step"] == 7
    for name, tensor in stack.net_state(0).items():
        assert torch.equal(loaded.net_state(0)[name], tensor), name

    state = artifacts.locate(base, "experiment-1", "training-state.safetensors")
    save_state(state, {"step": torch.tensor(7)}, {"cells": ["1"]})
    tensors, meta = load_state(state)
    assert tensors["step"].item() == 7 and meta["cells"] == ["1"]


def test_the_start_up_check_passes_and_leaves_nothing_behind(
    base: str, object_store: ObjectStore
) -> None:
    artifacts.check(base)
    if base.startswith("s3://"):
        assert object_store.objects(base.removeprefix("s3://").split("/")[0]) == {}
    else:
        assert list(Path(base).iterdir()) == []


@pytest.mark.parametrize(
    ("location", "said"),
    [
        ("foo://bucket/prefix", "bnlab cannot open foo:// locations; use a local folder or s3://"),
        ("gs://bucket/prefix", "gcsfs"),  # a scheme fsspec knows, whose package is not installed
        ("s3://bnlab-no-such-bucket/prefix", "its bucket does not exist; create it"),
    ],
)
def test_the_start_up_check_says_what_to_fix(
    location: str, said: str, object_store: ObjectStore
) -> None:
    with pytest.raises(artifacts.StoreError) as raised:
        artifacts.check(location)
    message = str(raised.value)
    assert message.startswith(f"BNLAB_CHECKPOINT_DIR={location}")
    assert said in message
    assert SECRET not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_write_waits_for_a_store_that_comes_back(object_store: ObjectStore) -> None:
    bucket = object_store.new_bucket()
    location = f"s3://{bucket}/experiment-1/training-state.safetensors"
    object_store.stop()

    def come_back() -> None:  # as a restarted store would, with its bucket
        time.sleep(2)
        object_store.start()
        object_store.make_bucket(bucket)

    restarting = threading.Thread(target=come_back)
    restarting.start()
    try:
        artifacts.write(location, b"saved while the store restarted", retry_seconds=60)
    finally:
        restarting.join()
    assert artifacts.read(location) == b"saved while the store restarted"


def test_a_store_that_stays_down_fails_the_write_saying_where(object_store: ObjectStore) -> None:
    location = f"s3://{object_store.new_bucket()}/experiment-1/bn.safetensors"
    object_store.stop()
    try:
        started = time.monotonic()
        with pytest.raises(artifacts.StoreError) as raised:
            artifacts.write(location, b"never stored", retry_seconds=2)
        assert time.monotonic() - started < 30
    finally:
        object_store.start()
    message = str(raised.value)
    assert message.startswith(f"the checkpoint store failed for 2 s at {location}: ")
    assert SECRET not in message and CREDENTIALS["AWS_ACCESS_KEY_ID"] not in message


def test_a_url_is_shown_without_its_password() -> None:
    assert artifacts.shown("s3://key:secret@bucket/prefix") == "s3://bucket/prefix"
    assert artifacts.shown("s3://bucket/prefix") == "s3://bucket/prefix"
    assert artifacts.shown("/srv/checkpoints") == "/srv/checkpoints"
