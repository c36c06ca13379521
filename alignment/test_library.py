"""alignment/ is a library apart from its tests: its modules import without pytest, and they
import one another without a loop (test files and conftest.py are the suite, not the library)."""
import ast
import os
import subprocess
import sys

import pytest

from alignment.harness import DEVICES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "alignment")


def library_modules() -> list:
    """alignment's modules other than test_*.py and conftest.py, as dotted names."""
    names = sorted(f[:-3] for f in os.listdir(FOLDER) if f.endswith(".py")
                   and not f.startswith("test_") and f != "conftest.py")
    return ["alignment" if n == "__init__" else f"alignment.{n}" for n in names]


def alignment_imports(module: str) -> set:
    """The alignment modules `module` imports, anywhere in the file (functions included)."""
    path = os.path.join(FOLDER, "__init__.py" if module == "alignment"
                        else module.split(".", 1)[1] + ".py")
    package = "alignment"
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from . import x
                base = package + ("." + base if base else "")
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in set(library_modules()) and m != module and m != "alignment"}


def import_cycle(graph: dict):
    """One cycle of `graph` ({module: imported modules}) as a list, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_import_cycle_finder_sees_a_loop():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_loop_among_alignment_modules():
    graph = {m: alignment_imports(m) for m in library_modules()}
    assert graph["alignment.report_sections"] >= {"alignment.layer_report"}  # the parser sees arrows
    assert import_cycle(graph) is None, f"import loop: {' -> '.join(import_cycle(graph))}"


def test_library_modules_import_without_pytest():
    modules = library_modules()
    code = ("import importlib, sys\n"
            "sys.modules['pytest'] = None  # `import pytest` now raises ImportError\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "from alignment.planted_bugs import MODEL_BUGS, Patches\n"
            "import alignment.planted_bugs as pb\n"
            "p = Patches(); before = pb.gelu_exact\n"
            "p.setattr('alignment.planted_bugs.gelu_exact', None); p.setattr(pb, 'math', None)\n"
            "assert pb.gelu_exact is None and pb.math is None\n"
            "p.undo(); assert pb.gelu_exact is before and pb.math is not None\n"
            "print('imported', len(sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout


def test_no_library_module_imports_pytest_even_inside_a_function():
    """Importing is not enough: an `import pytest` inside a function runs only when called."""
    offenders = []
    for module in library_modules():
        path = os.path.join(FOLDER, "__init__.py" if module == "alignment"
                            else module.split(".", 1)[1] + ".py")
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module}:{node.lineno}" for n in names if n.split(".")[0] == "pytest"]
    assert not offenders, f"pytest imported by library modules: {offenders}"


def test_the_subprocess_really_blocks_pytest():
    done = subprocess.run([sys.executable, "-c",
                           "import sys; sys.modules['pytest'] = None; import pytest"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "import of pytest halted" in done.stderr


@pytest.mark.parametrize("device", DEVICES)
def test_the_cuda_variant_of_harness_devices_is_marked_gpu(request, device):
    """The root conftest marks every test parametrised with device "cuda" as gpu, so it is
    skipped without a GPU (this one is, on the CPU; on a GPU machine it runs and checks)."""
    assert ("gpu" in request.node.keywords) == (device == "cuda")
