"""Where training and inference run: `cpu` or `cuda[:N]`, through the same code path."""

import torch


class DeviceUnavailable(Exception):
    """A device was asked for that this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`. CUDA is touched only when asked for."""
    unknown = DeviceUnavailable(f"unknown device {name!r}: use 'cpu', 'cuda' or 'cuda:N'")
    try:
        device = torch.device(name)
    except RuntimeError:  # not a device string at all ('gpu', '')
        raise unknown from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise unknown
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"{name!r} was asked for, but no CUDA GPU is visible on this machine"
        )
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"{name!r} was asked for, but this machine has {torch.cuda.device_count()} GPU(s)"
        )
    # Full float32, as on the CPU: TF32 would round matmul and convolution inputs to 10 bits.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # cuDNN's convolution kernels either add gradients up with atomics, in another order each
    # run, or (in deterministic mode) round far more than float32 should: on an H200, two runs
    # of a conv pair differed by 8e-3 after 100 steps, and the deterministic kernels put the GPU
    # 2e-3 from the CPU after 10. torch's own kernels are exact to float rounding and repeat.
    torch.backends.cudnn.enabled = False
    return torch.device("cuda", index)
