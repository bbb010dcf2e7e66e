"""Checkpoints as safetensors files: tensors plus JSON metadata, never a pickle.

A net checkpoint holds one net: its weights, its BN buffers (running mean, running variance,
batches tracked) and metadata saying what it is (variant, architecture, training spec, step,
dataset, preprocessing, format version). A training-state file holds a whole trainer at a sample
point, so an interrupted job resumes instead of restarting.

A checkpoint is written and read whole, as bytes, at a location that is a local path or an
object-store URL (bnlab/artifacts.py): hashing, verifying and decoding then work on the very
bytes that were read, never on a second read that could differ.
"""

import hashlib
import json
from dataclasses import asdict
from os import PathLike
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from bnlab import artifacts
from bnlab.models.batchnorm import BNImpl
from bnlab.models.network import Architecture, Stack, stack_class
from bnlab.vocabulary import VARIANTS

FORMAT_VERSION = 1
NET_FORMAT = "bnlab-net"
STATE_FORMAT = "bnlab-training-state"
PREPROCESSING = "28x28 grayscale, white on black, uint8 pixels divided by 255"


# A local path or an fsspec URL.
Location = str | PathLike[str]


class CheckpointError(Exception):
    """A file that is not a readable bnlab checkpoint of the expected kind."""


def save_net(
    path: Location, tensors: dict[str, Tensor], *, variant: str, arch: Architecture, **meta: Any
) -> tuple[str, int]:
    """Write one net; returns the file's sha256 and size. `meta`: spec, step, dataset, ..."""
    # Fields left at None (groups) are left out: the study's nets' checkpoints read as before.
    described = {name: value for name, value in asdict(arch).items() if value is not None}
    header = {"variant": variant, "architecture": described, "preprocessing": PREPROCESSING}
    return _write(path, tensors, NET_FORMAT, {**header, **meta})


def load_net(path: Location, bn_impl: BNImpl = "bnlab") -> tuple[Stack, dict[str, Any]]:
    """A stack of one net from its checkpoint, and the checkpoint's metadata."""
    return decode_net(_read(path), str(path), bn_impl)


def decode_net(data: bytes, name: str, bn_impl: BNImpl = "bnlab") -> tuple[Stack, dict[str, Any]]:
    """A stack of one net from a checkpoint's bytes (`name` says which, in errors)."""
    tensors, meta = _decode(data, name, NET_FORMAT)
    try:
        arch_fields = meta["architecture"]
        arch = Architecture(
            activation=arch_fields["activation"],
            hidden_layers=tuple(arch_fields["hidden_layers"]),
            conv_channels=tuple(arch_fields["conv_channels"]),
            groups=arch_fields.get("groups"),  # absent from checkpoints older than group_norm
            rnn_hidden=arch_fields.get("rnn_hidden"),  # absent but for an rnn
            sequence=arch_fields.get("sequence"),
        )
        variant = meta["variant"]
        if variant not in VARIANTS:
            raise CheckpointError(f"{name} holds a net of unknown variant {variant!r}")
        stack = stack_class(arch).from_net_states(arch, variant, [tensors], bn_impl)
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as error:
        raise CheckpointError(f"{name} does not hold a bnlab net that loads: {error!r}") from None
    return stack.eval(), meta


def save_state(path: Location, tensors: dict[str, Tensor], meta: dict[str, Any]) -> tuple[str, int]:
    """Write a trainer's state (`Trainer.state()`)."""
    return _write(path, tensors, STATE_FORMAT, meta)


def load_state(path: Location) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return decode_state(_read(path), str(path))


def decode_state(data: bytes, name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A trainer's state from a training-state file's bytes (`name` says which, in errors)."""
    return _decode(data, name, STATE_FORMAT)


def sha256_of(path: Location) -> str:
    return sha256(artifacts.read(str(path)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(
    path: Location, tensors: dict[str, Tensor], kind: str, meta: dict[str, Any]
) -> tuple[str, int]:
    header = {"format": kind, "format_version": FORMAT_VERSION, **meta}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    data = save(contiguous, metadata={"bnlab": json.dumps(header)})
    artifacts.write(str(path), data)  # whole: a reader (or a resumed job) never sees half
    return sha256(data), len(data)


def _read(path: Location) -> bytes:
    try:
        return artifacts.read(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None


def _decode(data: bytes, name: str, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    try:
        meta = json.loads(_metadata(data)["bnlab"])
        tensors = load(data)
    except (SafetensorError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{name} is not a bnlab checkpoint: {error}") from None
    if not isinstance(meta, dict):  # valid JSON, but not the object bnlab writes
        kind_of = type(meta).__name__
        raise CheckpointError(f"{name} is not a bnlab checkpoint: its metadata is a {kind_of}")
    if meta.get("format") != kind:
        raise CheckpointError(f"{name} holds {meta.get('format')!r}, not a {kind!r} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has format version {meta.get('format_version')}; "
            f"this bnlab reads version {FORMAT_VERSION}"
        )
    return tensors, meta


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata: the format is an 8-byte little-endian header length,
    then the header as JSON (safetensors reads metadata from files only)."""
    length = int.from_bytes(data[:8], "little")
    if len(data) < 8 or length > len(data) - 8:
        raise ValueError("too short for a safetensors file")
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("its header's metadata is not an object")
    return metadata
