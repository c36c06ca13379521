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

`cache_environment` sets `python_config_path` to the running Python's own config script (its
base Python's, in a venv), so a venv compiles exactly as its base Python does, and `cache_name`
to `jla-` + a hash of everything else that enters the commands: project processes that compile
alike share one folder, and a process that compiles differently (or a plain `import jittor`,
which keeps Jittor's default name) has a folder of its own. Variables the user sets win.

This module imports nothing of the project or of Jittor (tests load it in other interpreters).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import sysconfig

# Variables Jittor 1.3.11 copies into its compile commands: compiler.py reads the lower-case
# ones; cache_compile.cc adds -D<name>=<value> for the JT_* its sources test with #if/#ifdef.
COMPILE_ENV = ("cc_flags", "nvcc_flags", "kernel_flags", "enable_lto", "cuda_debug", "cuda_arch",
               "use_data_gz", "JT_CHECK_NAN", "JT_SAVE_MEM", "JT_SYNC", "JT_bfs_executor")
# What cache_environment sets: for Jittor's import only (runtime removes them afterwards), since
# a child process of another Python must not take this Python's config script or folder.
IMPORT_ONLY = ("python_config_path", "cache_name")


def python_config():
    """The `python3.X-config` of the Python running this process (in a virtualenv: of the Python
    it was made from), or None when that Python has none."""
    minor = sys.version_info.minor
    folders = (os.path.join(sys.base_prefix, "bin"), sysconfig.get_config_var("BINDIR"),
               os.path.dirname(os.path.realpath(sys.executable)))
    for folder in folders:
        for name in (f"python3.{minor}-config", "python3-config"):
            if folder and os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def cache_key(env) -> dict:
    """What enters Jittor's compile commands besides what its folder is named after."""
    config = env.get("python_config_path")
    cc = env.get("cc_path", shutil.which("clang++" if platform.system() == "Darwin" else "g++"))
    return {
        # without a config script Jittor searches from sys.executable: key on that
        "python_config": os.path.realpath(config) if config else f"searched from {sys.executable}",
        "cc_path": os.path.realpath(cc) if cc else "",
        "nvcc_path": os.path.realpath(env["nvcc_path"]) if env.get("nvcc_path") else "",
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
        env["cache_name"] = "jla-" + digest[:12]
