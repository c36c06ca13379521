"""The package layering: shared/ imports no backend (backends/ is where both twins are chosen)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWINS = ("torch_impl", "jittor_impl", "backends")


def imported_packages(path):
    """Top-level package names that a Python file imports (absolute imports only)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def backend_imports(folder):
    found = []
    for dirpath, _, files in os.walk(folder):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            found += [f"{os.path.relpath(path, ROOT)}:{line} imports {package}"
                      for package, line in imported_packages(path) if package in TWINS]
    return found


def test_shared_imports_no_backend():
    assert backend_imports(os.path.join(ROOT, "shared")) == []


def test_the_check_sees_a_backend_import(tmp_path):
    (tmp_path / "bad.py").write_text("import os\n\ndef f():\n    from torch_impl.model import GPT2LMModel\n")
    assert backend_imports(str(tmp_path)) == [f"{os.path.relpath(str(tmp_path / 'bad.py'), ROOT)}:4 imports torch_impl"]


def module_level_path_edits(path):
    """Line numbers of top-level statements (outside any function) of a file that touch sys.path:
    the preamble that put the checkout on the path before the project was installed."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source, path)
    return [node.lineno for node in tree.body
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and "sys.path" in (ast.get_source_segment(source, node) or "")]


def test_scripts_import_the_installed_packages():
    """Scripts find shared/, backends/ ... because the project is installed, not by editing
    sys.path (tests and work.sh put the checkout on PYTHONPATH for child processes instead).
    A function may still put a foreign checkout the user names on the path (benchmark_peers.py
    imports microsoft/LoRA's sources from --reference_src)."""
    scripts = os.path.join(ROOT, "scripts")
    editing = [f"{name}:{line}" for name in sorted(os.listdir(scripts)) if name.endswith(".py")
               for line in module_level_path_edits(os.path.join(scripts, name))]
    assert editing == []


def test_the_path_check_sees_a_preamble(tmp_path):
    (tmp_path / "s.py").write_text("import os\nimport sys\n\nsys.path.insert(0, os.path.dirname("
                                   "__file__))\n\ndef f(src):\n    sys.path[:0] = [src]\n")
    assert module_level_path_edits(str(tmp_path / "s.py")) == [4]
