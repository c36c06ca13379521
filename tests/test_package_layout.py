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


def test_scripts_import_the_installed_packages():
    """Scripts find shared/, backends/ ... because the project is installed, not by editing
    sys.path (tests and work.sh put the checkout on PYTHONPATH for child processes instead)."""
    scripts = os.path.join(ROOT, "scripts")
    editing = [name for name in sorted(os.listdir(scripts)) if name.endswith(".py")
               and "sys.path" in open(os.path.join(scripts, name), encoding="utf-8").read()]
    assert editing == []
