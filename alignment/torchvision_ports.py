"""Third-party ports for alignment.auto_diff: the models Jittor ships in `jittor.models` against
their torchvision originals, neither written by this project.

torchvision on PyPI is built against CUDA torch; on a CPU-only torch its C extension (detection
operators such as nms) cannot load, and torchvision 0.28's import then fails registering a fake
kernel for an operator that does not exist. `torchvision()` declares the two operator schemas
that import needs and imports again: the classification models never call them, and a call
would fail with torch's "no kernel" error, not compute anything wrong.

A torchvision that fails to import breaks transformers too (it imports torchvision whenever the
package is found), so `scripts/install.sh` keeps it off the path: where `import torchvision`
fails, it installs the pinned release into `private_dir()`, which only `torchvision()` reads.
"""
from __future__ import annotations

import os
import sys

import numpy as np

_MISSING_OPS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIBRARY = []  # keeps the schema library alive

# name -> the jittor.models constructor that takes num_classes (torchvision's has the same name)
PORTS = {"resnet18": "resnet.Resnet18", "mobilenet_v2": "mobilenet.MobileNetV2"}


def private_dir() -> str:
    """Where scripts/install.sh puts torchvision when it cannot be imported from the path:
    $JLA_TORCHVISION_DIR, else ~/.cache/jittor-lora-align/torchvision."""
    return os.environ.get("JLA_TORCHVISION_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "jittor-lora-align", "torchvision")


def torchvision():
    """The torchvision module: from the path, else from `private_dir()`; importable on a
    CPU-only torch (see module doc)."""
    try:
        return _import_torchvision()
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
    folder = private_dir()
    if not os.path.isdir(os.path.join(folder, "torchvision")):
        raise ModuleNotFoundError(
            f"torchvision is not installed, neither on the path nor in {folder}: run "
            f"`bash scripts/install.sh` (or pip install the torchvision built for your torch)",
            name="torchvision")
    if folder not in sys.path:
        sys.path.append(folder)
    return _import_torchvision()


def _import_torchvision():
    try:
        import torchvision as tv
        return tv
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    for schema in _MISSING_OPS:
        library.define(schema)
    _LIBRARY.append(library)
    import torchvision as tv
    return tv


def build(name: str, seed: int = 0, num_classes: int = 10):
    """(torchvision model, Jittor port) of `name`, the torch one seeded (the port receives its
    weights from alignment.assign_weights)."""
    import torch

    from jittor_impl.runtime import jt  # noqa: F401  (Jittor's switches before jittor.models)
    import jittor.models as jittor_models
    if name not in PORTS:
        raise ValueError(f"unknown port {name!r}; choose one of {list(PORTS)}")
    tv = torchvision()
    torch.manual_seed(seed)
    module, constructor = PORTS[name].split(".")
    port = getattr(getattr(jittor_models, module), constructor)
    return getattr(tv.models, name)(num_classes=num_classes), port(num_classes=num_classes)


def images(batch: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    """Standard-normal images [batch, 3, size, size], float32."""
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
