"""Which compile-cache folder Jittor uses, so that no process rebuilds one that others are using.

What Jittor 1.3.11 does (jittor_utils/__init__.py, jittor/compiler.py, src/utils/cache_compile.cc):
- The folder is `$HOME/.cache/jittor/` + Jittor's version, the compiler's type and version, the
  Python version, the OS and host name, the CPU, a hash of where Jittor is installed, and
  `cache_name` (the environment variable; else the git branch of a repository around Jittor's
  install, e.g. pyenv's "master"; else "default"), + `cu<version>` when it compiles CUDA.
  (`JITTOR_HOME` replaces $HOME, and Jittor saves it in ~/.cache/jittor/config.json for every
  later process: the project never sets it.)
- Each compiled file is rebuilt, in place, when the command that made it (kept in `<file>.key`)
  differs. The commands also hold things the folder name does not: the Python headers
  (`python3.X-config --includes`), the compiler's and nvcc's paths, and COMPILE_ENV.
- It looks for `python3.X-config` next to `sys.executable`, then in /usr/bin and /usr/local/bin.
  A virtualenv has none, so in a venv of a pyenv/conda/uv Python Jittor takes /usr/bin's (another
  Python's headers): the same Python in and outside a venv then rebuild the folder they share,
  each under the other's running processes ("jit_utils updated, please rerun", crashes).

- On Linux every kernel's command starts with `python_path` (Jittor runs utils/asm_tuner.py with
  it): sys.executable, or sys.executable + ".X" where that exists, so `python`, `python3` and
  each venv give every kernel another command, and processes of each rebuild the others' kernels.

`cache_environment` sets `python_config_path` to the running Python's own config script (its
base Python's, in a venv), so a venv compiles exactly as its base Python does, and `cache_name`
to `jla-<hash>/cache`, the hash of everything else that enters the commands (the folder's lock,
`jla-<hash>/jittor.lock`, is then its own too): project processes that compile
alike share one folder, and a process that compiles differently (or a plain `import jittor`,
which keeps Jittor's default name) has a folder of its own. Variables already set win (a child
process inherits them). runtime then sets Jittor's `python_path` flag to `kernel_python()`,
before any kernel compiles, so that `python`, `python3` and a venv share kernels too.

This module imports nothing of the project or of Jittor (tests load it in other interpreters).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig

# Variables Jittor 1.3.11 copies into its compile commands: compiler.py reads the lower-case
# ones; cache_compile.cc adds -D<name>=<value> for the JT_* its sources test with #if/#ifdef.
COMPILE_ENV = ("cc_flags", "nvcc_flags", "kernel_flags", "enable_lto", "cuda_debug", "cuda_arch",
               "use_data_gz", "JT_CHECK_NAN", "JT_SAVE_MEM", "JT_SYNC", "JT_bfs_executor")


def python_config():
    """The `python3.X-config` of the Python running this process (in a virtualenv: of the Python
    it was made from), or None when that Python has none."""
    name = f"python3.{sys.version_info.minor}-config"  # not python3-config: maybe another 3.X
    folders = (os.path.join(sys.base_prefix, "bin"), sysconfig.get_config_var("BINDIR"),
               os.path.dirname(os.path.realpath(sys.executable)))
    for folder in folders:
        if folder and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


@functools.lru_cache(maxsize=None)
def kernel_python() -> str:
    """The interpreter for Jittor's kernel commands: this Python's real binary (in a venv, the base
    Python's, where that can import Jittor, as with --system-site-packages), else Jittor's own
    choice. It only runs Jittor's asm_tuner.py, which needs `jittor_utils`."""
    real = os.path.realpath(sys.executable)
    if sys.prefix == sys.base_prefix or real == sys.executable:
        return real
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('jittor_utils') is None)"
    if subprocess.run([real, "-c", check], capture_output=True).returncode == 0:
        return real
    own = f"{sys.executable}.{sys.version_info.minor}"  # jittor/compiler.py: python_path
    return own if os.path.isfile(own) else sys.executable


def cache_key(env) -> dict:
    """What enters Jittor's compile commands besides what its folder is named after."""
    config = env.get("python_config_path")
    cc = env.get("cc_path", shutil.which("clang++" if platform.system() == "Darwin" else "g++"))
    return {
        # without a config script Jittor searches from sys.executable: key on that
        "python_config": os.path.realpath(config) if config else f"searched from {sys.executable}",
        "cc_path": cc or "",  # the commands name them as given: /usr/bin/c++ is not g++ there
        "nvcc_path": env.get("nvcc_path", ""),
        "python_path": kernel_python(),
        **{name: env[name] for name in COMPILE_ENV if name in env},
    }


def cache_environment(env) -> None:
    """Set `python_config_path` and `cache_name` in `env` (a dict or os.environ) unless set."""
    if not env.get("python_config_path"):
        config = python_config()
        if config:
            env["python_config_path"] = config
    if not env.get("cache_name"):
        digest = hashlib.sha256(json.dumps(cache_key(env), sort_keys=True).encode()).hexdigest()
        # two levels: Jittor locks `<folder>/../jittor.lock` while it compiles, so each config
        # gets a lock of its own (no waiting on another folder's or plain Jittor's compile)
        env["cache_name"] = f"jla-{digest[:12]}/cache"
