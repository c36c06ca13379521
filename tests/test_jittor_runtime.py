"""How the project sets Jittor up: offline switches, CPU fallback, signal handling, CUDA 13 shims.

The CUDA 13 wrappers are exercised here with a stand-in "compiler" that prints its arguments,
so the flag rewriting is checked on any machine; the real build is checked on a GPU machine.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from jittor_impl import cuda_compat, runtime


def test_offline_switches_default_off_and_user_choices_win():
    env = {}
    note = runtime.configure_environment(env)
    for name in runtime.OPTIONAL_LIBRARIES:
        assert env[name] == "0"
    assert env["conv_opt"] == "1"
    if not runtime.gpu_present():
        assert env["nvcc_path"] == "" and "no NVIDIA driver" in note
    mine = {"use_mkl": "1", "nvcc_path": "", "log_silent": "0"}
    runtime.configure_environment(mine)
    assert mine["use_mkl"] == "1" and mine["log_silent"] == "0"


def test_cuda_request_without_cuda_is_a_clear_error():
    if runtime.jt.has_cuda:
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="--device cuda requested but Jittor has no CUDA"):
        runtime.use_device("cuda")
    runtime.use_device("cpu")


def test_self_check_computes_correct_values():
    assert " ok on cpu" in runtime.self_check()


def test_a_child_killed_by_a_signal_does_not_end_this_process():
    """Jittor's core exits the whole process on such a SIGCHLD; runtime gives it back."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    child.kill()
    assert child.wait() == -signal.SIGKILL
    # Python's handler is back (None would mean one installed from C, i.e. Jittor's); it is
    # default_int_handler in a foreground process, SIG_IGN in one started in the background
    handler = signal.getsignal(signal.SIGINT)
    assert handler is not None and handler is runtime.PYTHON_SIGNAL_HANDLERS[signal.SIGINT]


@pytest.fixture
def fake_toolkit(tmp_path):
    """A folder laid out like a CUDA toolkit whose nvcc and g++ print their arguments."""
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "include").mkdir()
    (cuda / "lib64").mkdir()
    echo = "#!/usr/bin/env bash\nfor a in \"$@\"; do echo \"$a\"; done\n"
    for name in ("nvcc", "g++"):
        path = cuda / "bin" / name
        path.write_text(echo)
        path.chmod(0o755)
    return cuda


def run_wrapper(path, *args):
    out = subprocess.run([path, *args], capture_output=True, text=True, check=True).stdout
    return out.split("\n")[:-1]


def test_cuda13_wrappers_rewrite_jittor_flags(tmp_path, fake_toolkit):
    env = cuda_compat.install(str(fake_toolkit / "bin" / "nvcc"), str(fake_toolkit / "bin" / "g++"),
                              root=str(tmp_path / "compat"))
    nvcc_args = run_wrapper(env["nvcc_path"], "a.cu", "-std=c++14", "-Xcompiler", "-std:c++14",
                            "-Xcompiler", "-fPIC", "-O2")
    assert nvcc_args[:2] == ["-include", str(tmp_path / "compat" / "jla_cuda13_cub.h")]
    assert nvcc_args[2:] == ["a.cu", "-std=c++17", "-Xcompiler", "-fPIC", "-O2"]
    gxx_args = run_wrapper(env["cc_path"], "x.cc", "-std=c++14", "-c")
    assert gxx_args == ["-include", str(tmp_path / "compat" / "jla_cuda13_fields.h"), "x.cc",
                        "-std=c++17", "-c"]
    # nvcc's own host pass over preprocessed files and version queries get no -include
    assert run_wrapper(env["cc_path"], "k.cudafe1.cpp", "-c") == ["k.cudafe1.cpp", "-c"]
    assert run_wrapper(env["cc_path"], "--version") == ["--version"]
    # Jittor finds headers and libraries next to the nvcc it runs
    root = tmp_path / "compat"
    assert os.path.realpath(root / "include") == os.path.realpath(fake_toolkit / "include")
    assert os.path.realpath(root / "lib64") == os.path.realpath(fake_toolkit / "lib64")
    assert os.path.basename(env["nvcc_path"]) == "nvcc" and "g++" in os.path.basename(env["cc_path"])


def test_compat_is_only_for_cuda_13_and_newer(tmp_path):
    def fake_nvcc(release):
        path = tmp_path / f"nvcc{release}"
        path.write_text(textwrap.dedent(f"""\
            #!/usr/bin/env bash
            echo "Cuda compilation tools, release {release}, V{release}.1"
            """))
        path.chmod(0o755)
        return str(path)
    assert cuda_compat.needs_compat(fake_nvcc("13.0"))
    assert not cuda_compat.needs_compat(fake_nvcc("12.4"))
    assert not cuda_compat.needs_compat(str(tmp_path / "missing"))
