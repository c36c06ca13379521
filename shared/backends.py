"""Pick a backend by name without importing the other framework."""

BACKENDS = ("torch", "jittor")


def training_backend(name: str):
    """The training backend class (`TorchBackend` or `JittorBackend`) for shared/trainer.py."""
    if name == "torch":
        from torch_impl.train import TorchBackend
        return TorchBackend
    if name == "jittor":
        from jittor_impl.train import JittorBackend
        return JittorBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
