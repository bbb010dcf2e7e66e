"""What trained an experiment, as a reviewer asks it: bnlab's version (and git commit when it runs
from a checkout), Python, torch and CUDA, the device, the CPU and the kernels torch picked on it,
BN's implementation, the dataset and the sha256 of its files, the seed. The worker records it
when a job starts training (bnlab/worker/job.py); bundles carry it (bnlab/bundle.py). A job
resumed elsewhere keeps the first machine's and adds its own under `resumed_on` (`trained_by`):
every machine that trained the run is named.

`cpu_kind` is what `bnlab reproduce` compares: on the same kind the same spec gives the same
curve bit for bit; elsewhere MKL and ATen may pick other kernels, which round differently.
"""

import hashlib
import os
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import torch

from bnlab.bundle import bnlab_version
from bnlab.models.data import LOADERS
from bnlab.settings import Settings
from bnlab.spec import ExperimentSpec
from bnlab.vocabulary import Dataset

# The environment variables that change which kernels MKL and ATen run (the CI forces them).
KERNEL_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def provenance_of(spec: ExperimentSpec, device: torch.device, settings: Settings) -> dict[str, Any]:
    """The provenance of `spec` trained on `device` by this process, as JSON."""
    return {
        **_software(),
        "device": _device(device),
        "cpu": cpu_kind(),
        "bn_impl": settings.bn_impl,
        "dataset": {"name": spec.dataset, "files": dataset_files(spec.dataset, settings.data_dir)},
        "seed": spec.seed,
    }


def trained_by(
    recorded: dict[str, Any] | None, current: dict[str, Any], step: int
) -> dict[str, Any]:
    """`recorded` (what trained it to `step`) with `current`, the provenance of the job that
    goes on from there: the same when nothing was trained yet or it is a machine named already,
    else `recorded` with `current` and `step` added under `resumed_on`."""
    if recorded is None or step == 0:
        return current
    resumed_on = list(recorded.get("resumed_on", []))
    named = [{k: v for k, v in recorded.items() if k != "resumed_on"}]
    named += [{k: v for k, v in entry.items() if k != "step"} for entry in resumed_on]
    if current in named:
        return recorded
    return {**recorded, "resumed_on": [*resumed_on, {"step": step, **current}]}


@cache
def _software() -> dict[str, Any]:
    return {
        "bnlab": {"version": bnlab_version(), "git_commit": _git_commit()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # None for a CPU-only build of torch
    }


def _git_commit() -> str | None:
    """The checkout's commit when bnlab runs from one; None for an installed package."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hangs
        return None
    return answer.stdout.strip() or None if answer.returncode == 0 else None


def _device(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device)}
    return {"type": device.type, "name": None}


@cache
def cpu_kind() -> dict[str, Any]:
    """The CPU model, its architecture, the kernel level ATen dispatches to, and any variable
    forcing MKL's or ATen's choice."""
    return {
        "model": _cpu_model(),
        "machine": platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "kernels": {name: os.environ.get(name) for name in KERNEL_VARIABLES},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def dataset_files(dataset: Dataset, data_dir: Path) -> dict[str, str]:
    """The sha256 of each of the dataset's raw files the worker read, by name."""
    return dict(_hashed(dataset, str(Path(data_dir).absolute())))


@cache
def _hashed(dataset: Dataset, data_dir: str) -> tuple[tuple[str, str], ...]:
    # Hashed once per process: the files are tens of MB and never change under a worker.
    raw = Path(data_dir) / LOADERS[dataset].__name__ / "raw"
    names = [os.path.basename(url).removesuffix(".gz") for url, _ in LOADERS[dataset].resources]
    return tuple((name, _sha256(raw / name)) for name in names if (raw / name).exists())


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
