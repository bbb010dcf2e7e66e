"""Training steps on a GPU, captured once as a CUDA graph and replayed for every batch.

A training step of the study's small nets is some 150 kernels of a few microseconds each;
launched one by one from Python, the GPU spends most of a step waiting for the next launch.
Captured, a step is one launch. The graph reads its batch through fixed input tensors (the
batch's indices, and a bn_noisy net's noise), so a replay is: copy the inputs in, replay, read the
losses out.

Capturing needs a few steps run beforehand (cuBLAS and autograd allocate on first use). Those
warm-up steps really train, so every parameter and buffer is put back as it was afterwards: the
first replayed step starts from exactly the state an eager step would have started from.
"""

import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

WARMUP_STEPS = 3
# One capture at a time per process: the lanes of a trainer are threads sharing one GPU.
_capturing = threading.Lock()


class GraphedStep:
    """`step(*inputs) -> losses`, which updates `state` in place, captured as a CUDA graph."""

    def __init__(
        self, step: Callable[..., Tensor], state: Sequence[Tensor], inputs: Sequence[Tensor]
    ) -> None:
        device = inputs[0].device
        self.inputs = [tensor.clone() for tensor in inputs]
        with _capturing:
            before = [tensor.detach().clone() for tensor in state]
            side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]  # torch's is untyped
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    step(*self.inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the other lane may launch work on this GPU meanwhile.
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.losses = step(*self.inputs)
        with torch.no_grad():
            for tensor, saved in zip(state, before, strict=True):
                tensor.copy_(saved)

    def replay(self, inputs: Sequence[Tensor]) -> Tensor:
        """One training step on `inputs` (the batch's indices, ...); the losses tensor is
        overwritten by the next replay, so read it before."""
        for tensor, given in zip(self.inputs, inputs, strict=True):
            tensor.copy_(given)
        self.graph.replay()
        return self.losses
