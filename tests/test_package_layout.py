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


# --------------------------------------------------------------------------- shared/'s layers
#: shared/'s subpackages by layer: a module may import its own layer and the ones below, never
#: one above (runtime at the bottom, pipeline on top); a new subpackage must be given a layer here.
LAYERS = {"runtime": 0, "model": 1, "text": 1, "metrics": 1, "train": 2, "decode": 2, "tasks": 3,
          "pipeline": 4}


def shared_modules(root):
    """{dotted module name: path} of every module under `root`/shared."""
    modules = {}
    for dirpath, _, files in os.walk(os.path.join(root, "shared")):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, root)[:-len(".py")].split(os.sep)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def shared_imports(module, path, modules):
    """(imported shared module, line) for every import in the file, in functions too; `from
    shared.x import name` counts as an import of shared.x unless shared.x.name is a module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # import shared.x.y -> the module shared.x.y
                target = target.rpartition(".")[0]
            if target.startswith("shared.") or target == "shared":
                yield target, node.lineno


def subpackage(module):
    """shared.train.trainer -> train (shared itself: None)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph(root):
    modules = shared_modules(root)
    return {m: {t for t, _ in shared_imports(m, p, modules) if t != m}
            for m, p in modules.items()}, modules


def upward_imports(root):
    """'FILE:LINE imports MODULE (layer a -> layer b)' for each import of a higher layer."""
    modules = shared_modules(root)
    found = []
    for module, path in modules.items():
        here = subpackage(module)
        for target, line in shared_imports(module, path, modules):
            there = subpackage(target)
            if here and there and LAYERS.get(there, 99) > LAYERS.get(here, 99):
                found.append(f"{os.path.relpath(path, root)}:{line} imports {target} "
                             f"({here} -> {there}, a higher layer)")
    return found


def import_cycles(graph):
    """Each cycle of `graph` ({node: set of nodes}) once, as a list of nodes (Tarjan's SCCs)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_shared_top_level_holds_only_the_subpackages():
    shared = os.path.join(ROOT, "shared")
    entries = sorted(e for e in os.listdir(shared) if e != "__pycache__")
    assert entries == sorted(["__init__.py", *LAYERS])
    for name in LAYERS:
        with open(os.path.join(shared, name, "__init__.py"), encoding="utf-8") as f:
            assert ast.get_docstring(ast.parse(f.read())), f"shared/{name}/__init__.py: no docstring"


def test_shared_imports_no_higher_layer():
    assert upward_imports(ROOT) == []


def test_shared_has_no_import_cycles():
    """Between modules (imports inside functions count: a deferred import is still a loop) and
    between subpackages (two layers-mates must not import each other)."""
    graph, _ = import_graph(ROOT)
    assert import_cycles(graph) == []
    packages = {}
    for module, targets in graph.items():
        for target in targets:
            if subpackage(module) and subpackage(target) and subpackage(module) != subpackage(target):
                packages.setdefault(subpackage(module), set()).add(subpackage(target))
    assert import_cycles(packages) == []


def plant(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    root = plant(tmp_path, {
        "shared/__init__.py": '"""s"""\n', "shared/runtime/__init__.py": '"""r"""\n',
        "shared/pipeline/__init__.py": '"""p"""\n', "shared/pipeline/engine.py": "X = 1\n",
        "shared/runtime/atomic.py": "import os\n\n\ndef f():\n    from shared.pipeline.engine import X\n",
        "shared/runtime/paths.py": "from ..pipeline import engine\n"})
    assert upward_imports(root) == [
        "shared/runtime/atomic.py:5 imports shared.pipeline.engine (runtime -> pipeline, a higher layer)",
        "shared/runtime/paths.py:1 imports shared.pipeline.engine (runtime -> pipeline, a higher layer)"]


def test_the_cycle_check_sees_a_deferred_loop(tmp_path):
    root = plant(tmp_path, {
        "shared/__init__.py": "", "shared/model/__init__.py": "",
        "shared/model/a.py": "from shared.model.b import Y\nX = 1\n",
        "shared/model/b.py": "Y = 2\n\n\ndef f():\n    from shared.model import a\n",
        "shared/model/c.py": "import shared.model.a\n"})
    graph, _ = import_graph(root)
    assert import_cycles(graph) == [["shared.model.a", "shared.model.b"]]
    assert import_cycles({"train": {"decode"}, "decode": {"train"}}) == [["decode", "train"]]
