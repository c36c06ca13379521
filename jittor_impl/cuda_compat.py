"""Make an unmodified Jittor 1.3.11 build its CUDA code with a CUDA 13 toolkit.

Why: Jittor compiles its core with `-std=c++14` (and rewrites nvcc's `-std=c++17` back to
`-std=c++14 -Xcompiler -std:c++14`), but CUDA 13's CCCL needs C++17; its vendored
`helper_cuda.h` reads `cudaDeviceProp::computeMode/clockRate`, removed in CUDA 13; its softmax
uses `cub::Max()`, removed in CCCL 3. Nothing in site-packages is edited. Instead we hand Jittor
(through its `nvcc_path`/`cc_path` environment variables) two wrapper executables that
- rewrite `-std=c++14` to `-std=c++17` and drop `-Xcompiler -std:c++14`,
- force-include small headers: for nvcc, one aliasing `cub::Max/Min/Sum` to the CCCL 3
  functors; for both, one mapping the two removed device-property fields to harmless ones.
Jittor locates CUDA headers and libraries relative to the nvcc it runs (`../include`,
`../lib64`), so the nvcc wrapper lives in a folder whose siblings link to the real toolkit's.
Users on CUDA 11/12 never reach this code: it is used only when nvcc reports 13 or newer.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess

FIELDS_HEADER = r"""// Written by jittor_impl/cuda_compat.py: CUDA 13 shim for Jittor 1.3.11 (host and device).
#pragma once
// cudaDeviceProp lost computeMode and clockRate in CUDA 13; helper_cuda.h only uses them to
// skip prohibited devices and to rank devices by speed. `major` keeps both uses harmless.
#define computeMode major
#define clockRate major
"""

CUB_HEADER = r"""// Written by jittor_impl/cuda_compat.py: CCCL 3 shims for Jittor 1.3.11 (nvcc only).
#pragma once
#include "jla_cuda13_fields.h"
#if defined(__CUDACC__) && defined(__cplusplus)
#include <cuda/functional>
#include <cuda/std/functional>
namespace cub {
using Max = ::cuda::maximum<>;
using Min = ::cuda::minimum<>;
using Sum = ::cuda::std::plus<>;
}  // namespace cub
#endif
"""

_WRAPPER = r"""#!/usr/bin/env bash
# Written by jittor_impl/cuda_compat.py: runs {real} for Jittor 1.3.11 with CUDA 13 fixes.
args=()
drop_next=0
for a in "$@"; do
  if [ "$drop_next" = 1 ]; then drop_next=0; [ "$a" = "-std:c++14" ] && continue; args+=("-Xcompiler"); fi
  case "$a" in
    -std=c++14) args+=("-std=c++17") ;;
    -Xcompiler) drop_next=1 ;;
    *) args+=("$a") ;;
  esac
done
[ "$drop_next" = 1 ] && args+=("-Xcompiler")
case " ${{args[*]}} " in
  # version queries, and nvcc's own host pass over already-preprocessed files, get no -include
  *" --version "*|*" -v "*|*" -dumpversion "*|*" -dumpfullversion "*|*.ii" "*|*.i" "*|*cudafe1*)
    exec "{real}" "${{args[@]}}" ;;
esac
exec "{real}" {include} "${{args[@]}}"
"""


def nvcc_version(nvcc: str):
    """(major, minor) of an nvcc executable, or None if it does not run."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def needs_compat(nvcc: str) -> bool:
    version = nvcc_version(nvcc)
    return version is not None and version >= (13, 0)


def _write_if_changed(path, text, executable=False):
    if not os.path.exists(path) or open(path).read() != text:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    if executable:
        os.chmod(path, 0o755)


def install(nvcc: str, cc: str | None = None, root: str | None = None) -> dict:
    """Create the wrapper toolkit folder; return the environment variables for Jittor."""
    nvcc = os.path.realpath(nvcc)
    cc = os.path.realpath(cc or shutil.which("g++") or "/usr/bin/g++")
    cuda_home = os.path.dirname(os.path.dirname(nvcc))
    key = hashlib.sha1(f"{nvcc}|{cc}|{FIELDS_HEADER}|{CUB_HEADER}|{_WRAPPER}".encode()).hexdigest()[:12]
    root = root or os.path.join(os.path.expanduser("~"), ".cache", "jittor_lora_align",
                                f"cuda13-compat-{key}")
    bin_dir = os.path.join(root, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    fields, cub = os.path.join(root, "jla_cuda13_fields.h"), os.path.join(root, "jla_cuda13_cub.h")
    _write_if_changed(fields, FIELDS_HEADER)
    _write_if_changed(cub, CUB_HEADER)
    # nvcc gets both shims; the host compiler only the field mapping: CCCL headers refuse to be
    # compiled by g++ alone ("CUDA compiler and CUDA toolkit headers are incompatible")
    _write_if_changed(os.path.join(bin_dir, "nvcc"),
                      _WRAPPER.format(real=nvcc, include=f'-include "{cub}"'), executable=True)
    _write_if_changed(os.path.join(bin_dir, "g++"),
                      _WRAPPER.format(real=cc, include=f'-include "{fields}"'), executable=True)
    for sub in ("include", "lib64", "targets", "nvvm", "lib"):
        link, target = os.path.join(root, sub), os.path.join(cuda_home, sub)
        if os.path.exists(target) and not os.path.lexists(link):
            os.symlink(target, link)
    return {"nvcc_path": os.path.join(bin_dir, "nvcc"), "cc_path": os.path.join(bin_dir, "g++")}
