"""Checkpoints as safetensors files: tensors plus JSON metadata, never a pickle.

A net checkpoint holds one net: its weights, its BN buffers (running mean, running variance,
batches tracked) and metadata saying what it is (variant, architecture, training spec, step,
dataset, preprocessing, format version). A training-state file holds a whole trainer at a sample
point, so an interrupted job resumes instead of restarting.
"""

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from bnlab.models.batchnorm import BNImpl
from bnlab.models.network import Architecture, NetStack
from bnlab.vocabulary import VARIANTS

FORMAT_VERSION = 1
NET_FORMAT = "bnlab-net"
STATE_FORMAT = "bnlab-training-state"
PREPROCESSING = "28x28 grayscale, white on black, uint8 pixels divided by 255"


class CheckpointError(Exception):
    """A file that is not a readable bnlab checkpoint of the expected kind."""


def save_net(
    path: Path, tensors: dict[str, Tensor], *, variant: str, arch: Architecture, **meta: Any
) -> tuple[str, int]:
    """Write one net; returns the file's sha256 and size. `meta`: spec, step, dataset, ..."""
    # Fields left at None (groups) are left out: the study's nets' checkpoints read as before.
    described = {name: value for name, value in asdict(arch).items() if value is not None}
    header = {"variant": variant, "architecture": described, "preprocessing": PREPROCESSING}
    return _write(path, tensors, NET_FORMAT, {**header, **meta})


def load_net(path: Path, bn_impl: BNImpl = "bnlab") -> tuple[NetStack, dict[str, Any]]:
    """A stack of one net from its checkpoint, and the checkpoint's metadata."""
    tensors, meta = _read(path, NET_FORMAT)
    try:
        arch_fields = meta["architecture"]
        arch = Architecture(
            activation=arch_fields["activation"],
            hidden_layers=tuple(arch_fields["hidden_layers"]),
            conv_channels=tuple(arch_fields["conv_channels"]),
            groups=arch_fields.get("groups"),  # absent from checkpoints older than group_norm
        )
        variant = meta["variant"]
        if variant not in VARIANTS:
            raise CheckpointError(f"{path} holds a net of unknown variant {variant!r}")
        stack = NetStack.from_net_states(arch, variant, [tensors], bn_impl)
    except (KeyError, TypeError, RuntimeError, AssertionError) as error:
        raise CheckpointError(f"{path} does not hold a bnlab net that loads: {error!r}") from None
    return stack.eval(), meta


def save_state(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> tuple[str, int]:
    """Write a trainer's state (`Trainer.state()`)."""
    return _write(path, tensors, STATE_FORMAT, meta)


def load_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return _read(path, STATE_FORMAT)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _write(
    path: Path, tensors: dict[str, Tensor], kind: str, meta: dict[str, Any]
) -> tuple[str, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": kind, "format_version": FORMAT_VERSION, **meta}
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    # Write beside, then rename: a reader (or a resumed job) never sees half a file.
    partial = path.with_name(path.name + ".partial")
    save_file(contiguous, partial, metadata={"bnlab": json.dumps(header)})
    os.replace(partial, path)
    return sha256_of(path), path.stat().st_size


def _read(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    try:
        with safe_open(path, framework="pt") as file:
            meta = json.loads((file.metadata() or {})["bnlab"])
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (SafetensorError, KeyError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is not a bnlab checkpoint: {error}") from None
    if not isinstance(meta, dict):  # valid JSON, but not the object bnlab writes
        kind_of = type(meta).__name__
        raise CheckpointError(f"{path} is not a bnlab checkpoint: its metadata is a {kind_of}")
    if meta.get("format") != kind:
        raise CheckpointError(f"{path} holds {meta.get('format')!r}, not a {kind!r} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta.get('format_version')}; "
            f"this bnlab reads version {FORMAT_VERSION}"
        )
    return tensors, meta
