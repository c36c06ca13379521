"""Jittor's compile cache under concurrent processes of differing configuration (jittor_cache.py).

A virtualenv's Python must compile exactly as its base Python does, so that the two share one
cache folder and neither rebuilds it under the other; a process that compiles differently gets
a folder of its own. The probes ask Jittor's own `jittor_utils` which folder and Python headers
it uses (no compile); the process tests import Jittor for real, from a venv and from its base
Python at once, and check that neither rebuilt the compiled core nor compiled kernels again. The
fresh-cache variant compiles Jittor's core twice (minutes on 2 cores), so it runs only with
JLA_TEST_FRESH_JITTOR_CACHE=1.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from jittor_impl import jittor_cache, runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loads jittor_cache.py by path: the jittor_impl package imports (and may compile) Jittor.
PROBE = textwrap.dedent("""\
    import importlib.util, json, os, sys
    root, pin = sys.argv[1], sys.argv[2] == "pin"
    if pin:
        spec = importlib.util.spec_from_file_location(
            "jittor_cache", os.path.join(root, "jittor_impl", "jittor_cache.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.cache_environment(os.environ)
    import jittor_utils
    print(json.dumps({"executable": sys.executable, "cache_path": jittor_utils.cache_path,
                      "includes": jittor_utils.get_py3_include_path(),
                      "kernel_python": module.kernel_python() if pin else None}))
    """)

# A project process: imports Jittor through runtime, notes its compiled core as loaded, computes.
CHILD = textwrap.dedent("""\
    import glob, json, os, sys
    from jittor_impl import runtime
    import jittor_utils
    dirs = sorted({jittor_utils.cache_path, runtime.jt.compiler.cache_path})
    core = {f: [os.stat(f).st_ino, os.stat(f).st_mtime_ns]
            for d in dirs for f in glob.glob(os.path.join(d, "jit*_core*"))}
    print(json.dumps({"check": runtime.self_check(), "cache_path": jittor_utils.cache_path,
                      "core_dirs": dirs, "core": core,
                      "python_path": runtime.jt.flags.python_path}))
    """)


def base_env(**extra):
    """This process's environment minus what runtime set for this Python (children find theirs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("python_config_path", "cache_name")}
    env.update(extra)
    return env


def run_json(cmd, env, timeout=120):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe(python, pin=True, **extra):
    return run_json([python, "-c", PROBE, ROOT, "pin" if pin else "plain"], base_env(**extra))


def core_files(dirs):
    """[inode, mtime] of the compiled core and its cache keys: they change only on a rebuild."""
    paths = [os.path.join(d, n) for d in dirs for n in os.listdir(d)
             if re.match(r"jit(_utils|tor)_core", n)]
    assert len(paths) >= 4, f"no compiled Jittor core in {dirs}: {paths}"
    return {p: [os.stat(p).st_ino, os.stat(p).st_mtime_ns] for p in sorted(paths)}


def start_children(pythons, env_of):
    return [subprocess.Popen([python, "-c", CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env_of(i), cwd=ROOT)
            for i, python in enumerate(pythons)]


def finish(children, timeout):
    reports = []
    for child in children:
        out, err = child.communicate(timeout=timeout)
        assert child.returncode == 0, f"exit {child.returncode}:\n{out}\n{err[-3000:]}"
        report = json.loads(out.strip().splitlines()[-1])
        report["compiled"] = "Compiling" in out + err  # Jittor's progress line while compiling
        reports.append(report)
    for report in reports:
        assert " ok on cpu" in report["check"], report
        assert report["python_path"] == os.path.realpath(sys.executable)
    return reports


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    """A venv of this Python that sees its packages, as users make them (no python3.X-config)."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(path)], check=True, timeout=120)
    python = str(path / "bin" / "python")
    assert not os.path.exists(path / "bin" / f"python3.{sys.version_info.minor}-config")
    return python


def test_a_venv_compiles_like_its_base_python(venv_python):
    plain, in_venv = probe(sys.executable), probe(venv_python)
    assert in_venv["executable"] != plain["executable"]
    assert in_venv["includes"] == plain["includes"]
    assert in_venv["cache_path"] == plain["cache_path"]
    assert in_venv["kernel_python"] == plain["kernel_python"] == os.path.realpath(sys.executable)
    assert re.search(r"/jla-[0-9a-f]{12}/cache$", plain["cache_path"])
    base_include = f"-I{os.path.realpath(sysconfig.get_paths()['include'])}"
    assert base_include in [f"-I{os.path.realpath(p[2:])}" for p in plain["includes"].split()]


def test_without_the_pin_jittor_takes_another_pythons_headers_in_a_venv(venv_python):
    """What the pin prevents, where this machine has another Python's config in /usr/bin."""
    plain, in_venv = probe(sys.executable, pin=False), probe(venv_python, pin=False)
    if in_venv["includes"] == plain["includes"]:
        pytest.skip("here Jittor finds this Python's own config script even from a venv")
    assert in_venv["cache_path"] == plain["cache_path"]  # one folder, two sets of commands


def test_a_different_compile_configuration_gets_its_own_folder():
    env = base_env()
    names = {}
    for label, extra in [("this", {}), ("cc_flags", {"cc_flags": "-DJLA_OTHER"}),
                         ("JT_SYNC", {"JT_SYNC": "1"}), ("compiler", {"cc_path": "/usr/bin/c++"}),
                         ("other python", {"python_config_path": "/nonexistent/python3-config"})]:
        case = {**env, **extra}
        jittor_cache.cache_environment(case)
        names[label] = case["cache_name"]
    assert len(set(names.values())) == len(names), names
    again = base_env()
    jittor_cache.cache_environment(again)
    assert again["cache_name"] == names["this"]
    mine = base_env(cache_name="my-folder", python_config_path="/x/python3-config")
    jittor_cache.cache_environment(mine)
    assert mine["cache_name"] == "my-folder" and mine["python_config_path"] == "/x/python3-config"


def test_compile_env_lists_every_jt_macro_jittor_takes_from_the_environment():
    """cache_compile.cc adds -D<name> for each `#if JT...`/`#ifdef JT...` whose variable is set."""
    src = os.path.join(os.path.dirname(importlib.util.find_spec("jittor").origin), "src")
    found = set()
    for folder, _, files in os.walk(src):
        for name in files:
            with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                found.update(re.findall(r"^\s*#(?:ifdef|if) (JT\w*)", f.read(), re.M))
    assert found == {n for n in jittor_cache.COMPILE_ENV if n.startswith("JT")}


def test_a_venv_process_and_a_plain_one_at_once_share_the_warm_cache(venv_python):
    """Both import Jittor at once on this machine's cache and compute; the core is not rebuilt."""
    plain, in_venv = probe(sys.executable), probe(venv_python)
    # checked before importing: a venv that compiled differently would rebuild the shared cache
    assert (in_venv["cache_path"], in_venv["includes"]) == (plain["cache_path"], plain["includes"])
    import jittor_utils
    assert jittor_utils.cache_path == plain["cache_path"]  # this process's folder
    runtime.self_check()  # its kernels are compiled now, not by the two children at once
    dirs = sorted({jittor_utils.cache_path, runtime.jt.compiler.cache_path})
    before = core_files(dirs)
    reports = finish(start_children([sys.executable, venv_python], lambda i: base_env()), 600)
    assert [r["cache_path"] for r in reports] == [plain["cache_path"]] * 2
    assert core_files(dirs) == before
    assert [r["compiled"] for r in reports] == [False, False]  # kernels are shared too


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("JLA_TEST_FRESH_JITTOR_CACHE") != "1",
                    reason="compiles Jittor's core twice (minutes); JLA_TEST_FRESH_JITTOR_CACHE=1")
def test_fresh_caches_venv_plain_and_other_config_at_once(tmp_path, venv_python):
    """Three processes start at once on an empty cache: a venv one and a plain one (one folder:
    one compiles under Jittor's lock, the other reuses it) and one that compiles differently
    (its own folder). All compute correctly; no core file changed after a process had loaded it."""
    home = str(tmp_path / "home")
    os.makedirs(home)
    extra = [{}, {}, {"cc_flags": "-DJLA_OTHER_CONFIG"}]
    children = start_children([sys.executable, venv_python, sys.executable],
                              lambda i: base_env(HOME=home, **extra[i]))
    reports = finish(children, 3000)
    assert reports[0]["cache_path"] == reports[1]["cache_path"] != reports[2]["cache_path"]
    for report in reports:
        assert report["cache_path"].startswith(home)
        assert core_files(report["core_dirs"]) == report["core"]
