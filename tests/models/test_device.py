"""Devices: `cpu` always works; a device this machine lacks is refused with a clear error."""

import pytest
import torch

from bnlab.models.device import DeviceUnavailable, resolve_device


def test_cpu_resolves() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "mps", ""])
def test_unknown_device_is_refused_with_the_choices(name: str) -> None:
    with pytest.raises(DeviceUnavailable, match="use 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(name)


def test_a_gpu_index_beyond_the_machines_is_refused() -> None:
    with pytest.raises(DeviceUnavailable, match="'cuda:64' was asked for"):
        resolve_device("cuda:64")
