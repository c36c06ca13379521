"""How this project imports Jittor: offline-safe switches, CPU fallback, CUDA 13 compatibility.

Every module of `jittor_impl` takes `jt` from here, so the environment is set before Jittor
reads it. The policy, each part overridable by setting the variable yourself:
- `use_mkl`, `use_nccl`, `use_cutt`, `use_cutlass`, `use_mpi` default to 0. With them on, Jittor
  downloads oneDNN/NCCL/cutt/cutlass at import, which fails offline; GPT-2 needs none of them.
  A user with network who wants one sets it, e.g. `use_mkl=1`. Under `mpirun` (Open MPI's
  OMPI_COMM_WORLD_SIZE set) `use_mpi` defaults to 1: Jittor's data parallel runs on its MPI ops,
  which it compiles with the system's `mpicc` (no download).
- `conv_opt` defaults to 1 so Jittor does not insist on cuDNN (GPT-2 has no convolution).
- `nvcc_path` defaults to "" (CPU only) when the machine has no NVIDIA driver, because a plain
  import would otherwise fail on a machine with nvcc but no GPU. With a driver and a CUDA 13
  toolkit, `cuda_compat` supplies wrapper compilers (set JLA_CUDA13_COMPAT=0 to opt out).
- `log_silent` defaults to 1 (Jittor logs every import); set JLA_JITTOR_VERBOSE=1 to see them.
- `python_config_path` (the running Python's own `python3.X-config`, also in a virtualenv) and
  `cache_name` (`jla-<hash>/cache`) give each compile configuration its own Jittor cache folder and
  Jittor's `python_path` flag is set to `kernel_python()`: see `jittor_cache.py`.
Run `python scripts/jittor_warmup.py` once after installing: it does the first import (Jittor
compiles its core for 1-2 minutes, and may ask for one rerun) and checks a computation.
"""
from __future__ import annotations

import os
import shutil
import signal

from .jittor_cache import cache_environment, kernel_python

OPTIONAL_LIBRARIES = ("use_mkl", "use_nccl", "use_cutt", "use_cutlass", "use_mpi")
_CUDA_NOTE = ""  # why CUDA is or is not available, for error messages


def gpu_present() -> bool:
    """True when an NVIDIA driver is loaded (not merely a CUDA toolkit installed)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")


def find_nvcc():
    for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/bin/nvcc"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def configure_environment(env=None) -> str:
    """Set Jittor's switches in `env` (default os.environ); return a note on CUDA."""
    env = os.environ if env is None else env
    note = _configure_switches(env)
    cache_environment(env)
    return note


def _configure_switches(env) -> str:
    if "OMPI_COMM_WORLD_SIZE" in env:  # jittor.in_mpi: it reads the same variable
        env.setdefault("use_mpi", "1")
    for name in OPTIONAL_LIBRARIES:
        env.setdefault(name, "0")
    env.setdefault("conv_opt", "1")
    if env.get("JLA_JITTOR_VERBOSE", "0") != "1":
        env.setdefault("log_silent", "1")
    if "nvcc_path" in env and not env["nvcc_path"]:
        return "CUDA disabled: nvcc_path is set to an empty string"
    if "nvcc_path" not in env and not gpu_present():
        env["nvcc_path"] = ""
        return "CUDA disabled: no NVIDIA driver on this machine (/dev/nvidiactl missing)"
    nvcc = env.get("nvcc_path") or find_nvcc()
    if not nvcc:
        env.setdefault("nvcc_path", "")
        return "CUDA disabled: NVIDIA driver present but no nvcc found (set nvcc_path)"
    from . import cuda_compat
    if env.get("JLA_CUDA13_COMPAT", "1") != "0" and "cuda13-compat" not in nvcc \
            and cuda_compat.needs_compat(nvcc):
        env.update(cuda_compat.install(nvcc, env.get("cc_path")))
        return f"CUDA via {nvcc} with the CUDA 13 compatibility wrappers ({env['nvcc_path']})"
    env["nvcc_path"] = nvcc
    return f"CUDA via {nvcc}"


def _check_numpy():
    import numpy
    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ImportError(f"jittor 1.3.11 needs numpy<2 (found {numpy.__version__}): with numpy 2 "
                          f"it computes wrong values silently. pip install 'numpy<2'")


# Python's own SIGCHLD and SIGINT handlers as they were before Jittor's import replaced them
# (SIG_IGN for SIGINT when the process was started in the background).
PYTHON_SIGNAL_HANDLERS = {}


def _import_jittor():
    """Import jittor, then give SIGCHLD and SIGINT back to Python: at load, Jittor's C++ core
    installs handlers that end the whole process when any child process dies by a signal (a JVM
    that pycocoevalcap kills, a killed subprocess) and on Ctrl-C, bypassing Python's
    KeyboardInterrupt and the trainer's save-then-stop handling."""
    global _CUDA_NOTE
    _check_numpy()
    _CUDA_NOTE = configure_environment()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGCHLD, signal.SIGINT)}
    PYTHON_SIGNAL_HANDLERS.update(saved)
    try:
        import jittor
    except SystemExit as exc:  # jittor calls sys.exit after rebuilding jit_utils
        raise RuntimeError("Jittor rebuilt its core ('jit_utils updated') and must be imported "
                           "again in a fresh process: rerun the command. Running "
                           "`python scripts/jittor_warmup.py` once after installing avoids this.") \
            from exc
    # every kernel's compile command names it: one name for python, python3 and venvs (no kernel
    # compiles during the import)
    jittor.flags.python_path = kernel_python()
    for sig, handler in saved.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except ValueError:  # imported outside the main thread: Python cannot set handlers
            break
    return jittor


jt = _import_jittor()


def use_device(device: str):
    """Select 'cpu' or 'cuda' for Jittor; a clear error when CUDA is asked for but unusable."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not jt.has_cuda:
        raise RuntimeError(f"--device cuda requested but Jittor has no CUDA: {_CUDA_NOTE}")
    jt.flags.use_cuda = 1 if device == "cuda" else 0


def cuda_note() -> str:
    return _CUDA_NOTE


def self_check() -> str:
    """Compute a + 1, a matrix product and a softmax and compare with numpy, on the CPU and (when
    Jittor has CUDA) on the GPU: catches a broken build (or numpy 2) before real work."""
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 32)).astype(np.float32), rng.normal(size=(32, 16)).astype(np.float32)
    e = np.exp(a - a.max(1, keepdims=True))
    expected = {"a + 1": a + 1, "a @ b": a @ b, "softmax(a)": e / e.sum(1, keepdims=True)}
    devices = ["cpu"] + (["cuda"] if jt.has_cuda else [])
    for device in devices:
        use_device(device)
        got = {"a + 1": (jt.array(a) + 1).numpy(), "a @ b": jt.matmul(jt.array(a), jt.array(b)).numpy(),
               "softmax(a)": jt.nn.softmax(jt.array(a), dim=1).numpy()}
        for name, value in got.items():
            if not np.allclose(value, expected[name], atol=1e-4):
                raise RuntimeError(f"jittor self-check failed on {device}: {name} differs from numpy "
                                   f"by {np.abs(value - expected[name]).max():.3g}")
    use_device("cpu")
    return f"jittor {jt.__version__} ok on {'+'.join(devices)} ({_CUDA_NOTE})"
