"""The one probe of the machine a run uses: its device, and the versions of what it runs on.

Reports (work.sh's report.json, the benchmark, the alignment report) and the device defaults of
the scripts all ask here. Jittor's version is read from the installed package's metadata, so
probing never imports Jittor (its first import compiles for minutes and configures the process).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (False where torch is missing)."""
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def device_problems(device) -> list:
    """`--device cuda` needs a CUDA GPU (the one torch sees; Jittor uses the same driver)."""
    if device == "cuda" and default_device() != "cuda":
        return ["--device cuda: no CUDA GPU is available on this machine (use --device cpu)"]
    return []


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unavailable"


def gpu_name():
    """The first CUDA GPU's name, or None."""
    if not cuda_available():
        return None
    import torch
    return torch.cuda.get_device_name(0)


def nvcc_version():
    """The last line of `nvcc --version` (the release), or None without a CUDA toolkit."""
    try:
        lines = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return lines.splitlines()[-1] if lines else None


def versions(packages=("torch", "numpy", "tiktoken", "jittor")) -> dict:
    out = {"python": platform.python_version()}
    out.update({name: package_version(name) for name in packages})
    return out


def devices(device: str) -> dict:
    """The host and the device a run used (`device` is "cpu" or "cuda")."""
    info = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "device": device}
    gpu = gpu_name()
    if gpu:
        info["gpu"] = gpu
    return info
