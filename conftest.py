"""Fixtures shared by `tests/` (unit tests) and `alignment/` (backend comparison suite).

Data comes from paths, never from copies in the repository: GPT2_VOCAB_DIR (encoder.json +
vocab.bpe) and E2E_DATA_DIR ({train,valid,test}.txt). CI points them at ../shared/data.
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
# Scripts run as subprocesses import the packages of this checkout, not another installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


def _dir_from_env(name, required_files, fallback):
    path = os.environ.get(name)
    if not path and all(os.path.isfile(os.path.join(fallback, f)) for f in required_files):
        path = fallback  # what scripts/download_data.sh fetched
    if not path:
        pytest.skip(f"{name} is not set and {fallback} is empty (CI sets it to the offline data "
                    f"under ../shared/data; with internet, run scripts/download_data.sh)")
    missing = [f for f in required_files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        pytest.fail(f"{name}={path} lacks {missing}")
    return path


@pytest.fixture(scope="session")
def vocab_dir():
    return _dir_from_env("GPT2_VOCAB_DIR", ["encoder.json", "vocab.bpe"],
                         os.path.join(ROOT, "data", "gpt2"))


@pytest.fixture(scope="session")
def preference_data():
    """The Alpaca-format entries with chosen/rejected responses (PREFERENCE_DATA, else ../shared)."""
    path = os.environ.get("PREFERENCE_DATA") or os.path.join(
        ROOT, "..", "shared", "data", "instruct", "instruction-data-with-preference.json")
    if not os.path.isfile(path):
        pytest.skip("no instruction-data-with-preference.json (set PREFERENCE_DATA)")
    return path


@pytest.fixture(scope="session")
def e2e_dir():
    return _dir_from_env("E2E_DATA_DIR", ["train.txt", "valid.txt", "test.txt"],
                         os.path.join(ROOT, "data", "e2e"))


@pytest.fixture(scope="session")
def encoded(tmp_path_factory, e2e_dir, vocab_dir):
    """The train and valid splits formatted and encoded as gpt2_encode.py --add_bos --add_eos."""
    from shared.text.e2e_data import prepare_e2e
    out = tmp_path_factory.mktemp("e2e_encoded")
    prepare_e2e(e2e_dir, str(out), vocab_dir=vocab_dir, splits=("train", "valid"))
    return out


def load_script(name):
    """scripts/NAME.py as a module (scripts/ is no package), imported once from its file."""
    module = _SCRIPTS.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(f"script_{name}",
                                                      os.path.join(ROOT, "scripts", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return module


_SCRIPTS = {}


@pytest.fixture
def run_in_process(capsys):
    """`run(name, *argv)` calls scripts/NAME.py's main(argv) here and returns (exit status, stdout,
    stderr). For tests whose claim is what a script computes, not how its process ends: a fresh
    interpreter spends seconds importing torch and Jittor. Each entry point keeps real
    subprocess tests elsewhere (users start them so)."""
    def run(name, *argv):
        main = load_script(name).main
        capsys.readouterr()  # what the test printed before
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
        out, err = capsys.readouterr()
        return (0 if status is None else status), out, err
    return run


@pytest.fixture
def nvcc_compiles(tmp_path):
    """`compiles(kernels, launch, inputs, outputs, header="", flags=())` asserts that a jt.code
    CUDA source compiles for sm_90 as Jittor compiles it: `header`, then `kernels` (which may use
    the Var types) at file scope, the `launch` code in a function, the names jt.code defines (inN, inN_p, inN_type, outN_p,
    outN_type) declared for the input and output C types given. nvcc only, no GPU needed; skips
    where nvcc is not on the PATH."""
    import shutil
    import subprocess
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")

    def compiles(kernels, launch, inputs, outputs, header="", flags=()):
        from jittor_impl.runtime import jt
        types = [f"typedef {t} in{i}_type;" for i, t in enumerate(inputs)] + \
                [f"typedef {t} out{i}_type;" for i, t in enumerate(outputs)]
        names = [f"struct {{ long long shape[4]; long long numel() {{ return 8; }} }} in{i}_v = "
                 f"{{{{8, 512, 3072, 1}}}}, *in{i} = &in{i}_v; in{i}_type* in{i}_p = 0;"
                 for i in range(len(inputs))] + [f"out{i}_type* out{i}_p = 0;" for i in range(len(outputs))]
        source = tmp_path / "unit.cu"
        source.write_text(header + "\n" + "\n".join(types) + "\n" + kernels + "\nvoid launch() {\n"
                          + "\n".join(names) + "\n" + launch + "\n}\n")
        include = os.path.join(os.path.dirname(jt.__file__), "src")  # type/fp16_compute.h
        proc = subprocess.run([nvcc, "-arch=sm_90", "-std=c++17", *flags, "-I", include, "-c", str(source),
                               "-o", str(tmp_path / "unit.o")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return compiles


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    from shared.runtime.environment import cuda_available
    for item in items:  # alignment.harness.DEVICES: the "cuda" variant needs a GPU
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda":
            item.add_marker(pytest.mark.gpu)
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
