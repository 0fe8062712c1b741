"""Package layering: each package of paa_tf imports only the ones below it (`LAYERS`), no
import cycles between modules, the README's layout block lists the tree in that order, and the
light paths stay light.

The import graph is read from the source with `ast` (imports at module level and inside
functions alike): an edge m -> n for every `import paa_tf.n` / `from paa_tf... import ...`
in m, plus the packages on the way (importing `paa_tf.data.pipeline` runs
`paa_tf/data/__init__.py`) unless m lives inside that package (then it has already run).
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# The packages (and top-level modules) of paa_tf, lowest first: each may import only the ones
# before it. The one statement of the order; the README's layout block shows it.
LAYERS = ("config", "ops", "data", "run_folder", "assign", "modeling", "inference", "serving",
          "evaluation", "visualization", "convert", "training", "experiments", "cli")


def _module_name(path, root):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root, package="paa_tf"):
    """{module: set of package modules it imports}, for every .py file under root/package."""
    files = {_module_name(path, root): path for path in (root / package).rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                # `from a import b` imports a.b when b is a module, else a name of a.
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules
                           else module for alias in node.names]
            for target in targets:
                parts = target.split(".")
                edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        # The packages holding `name` are always imported before it runs: not an edge.
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {m for m in edges if m in modules and m != name and m not in ancestors}
    return graph


def import_cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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


def test_cycle_finder_sees_a_cycle_through_a_function_local_import(tmp_path):
    # The oracle for the test below: a two-module cycle closed by an import inside a function
    # is found, a chain is not.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import thing\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"}  # pkg itself is imported before pkg.c runs
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]
    (package / "b.py").write_text("def f():\n    return 1\n")
    assert import_cycles(import_graph(tmp_path, "pkg")) == []


def test_no_module_imports_a_module_that_imports_it_back():
    cycles = import_cycles(import_graph(REPO))
    assert not cycles, f"import cycles between paa_tf modules: {cycles}"


def layer_of(module):
    """The entry of `LAYERS` a module of paa_tf belongs to ('paa_tf.data.coco' -> 'data')."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(graph, layers=LAYERS):
    """Sorted (importer, imported) pairs where a module imports one of a higher layer, and
    the modules whose layer is not in `layers` (as (module, None))."""
    rank = {name: index for index, name in enumerate(layers)}
    found = []
    for module, targets in graph.items():
        layer = layer_of(module)
        if layer is None:
            continue  # the package paa_tf itself
        if layer not in rank:
            found.append((module, None))
            continue
        found += [(module, target) for target in targets
                  if layer_of(target) is not None and rank.get(layer_of(target), len(rank))
                  > rank[layer]]
    return sorted(found, key=str)


def test_layer_checker_sees_an_upward_import_and_an_unlisted_package(tmp_path):
    # The oracle for the test below, on a constructed package: low -> high is refused (also
    # inside a function), high -> low and imports within one package are fine.
    package = tmp_path / "pkg"
    for folder in ("low", "high", "stray"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("from pkg.low import b\n")
    (package / "low" / "b.py").write_text("def f():\n    from pkg.high import c  # why\n")
    (package / "high" / "c.py").write_text("from pkg.low import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert upward_imports(graph, ("low", "high", "stray")) == [
        ("pkg.low.b", "pkg.high"), ("pkg.low.b", "pkg.high.c")]
    assert ("pkg.stray", None) in upward_imports(graph, ("low", "high"))
    (package / "low" / "b.py").write_text("def f():\n    return 1\n")
    assert upward_imports(import_graph(tmp_path, "pkg"), ("low", "high", "stray")) == []


def test_every_package_imports_only_the_ones_below_it():
    found = upward_imports(import_graph(REPO))
    assert not found, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + \
        "\n".join(f"{a} -> {b or '(package not in LAYERS)'}" for a, b in found)


def readme_layout():
    """The names of the README's layout block in order ('paa_tf/data/' -> 'data')."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [line.split()[0].removeprefix("paa_tf/").removesuffix("/").removesuffix(".py")
            for line in block.splitlines() if line.startswith("paa_tf/")]


def test_readme_layout_lists_the_tree_in_layer_order():
    tree = sorted(path.stem if path.is_file() else path.name
                  for path in (REPO / "paa_tf").iterdir()
                  if (path.suffix == ".py" and path.name != "__init__.py")
                  or (path.is_dir() and (path / "__init__.py").is_file()))
    assert sorted(LAYERS) == tree, "LAYERS and the packages of paa_tf/ differ"
    assert readme_layout() == list(LAYERS), "README's layout block is not LAYERS in order"


def unexplained_local_imports(path, root=REPO):
    """Lines of imports inside functions of `path` with no comment saying why: none on the
    import line, nor on the line above the block of imports it belongs to."""
    lines = path.read_text().splitlines()
    found = []
    for function in ast.walk(ast.parse("\n".join(lines), str(path))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            row = node.lineno - 1
            if "#" in lines[row]:
                continue
            above = row - 1
            while above >= 0 and (not lines[above].strip() or lines[above].strip().startswith(
                    ("import ", "from "))) and "#" not in lines[above]:
                above -= 1
            if above < 0 or "#" not in lines[above]:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {lines[row].strip()}")
    return sorted(set(found))


def test_imports_inside_functions_say_why():
    # An import belongs at the top of its module; one inside a function must say why (it
    # keeps TensorFlow, matplotlib or an optional package out of a light path).
    found = [line for path in sorted((REPO / "paa_tf").rglob("*.py"))
             for line in unexplained_local_imports(path)]
    assert not found, "imports inside functions without a reason:\n" + "\n".join(found)


def test_an_unexplained_local_import_is_found(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    import json\n\n\ndef g():\n"
                      "    # why\n    import io\n    import os\n")
    assert unexplained_local_imports(module, tmp_path) == ["probe.py:2: import json"]


@pytest.mark.parametrize("module", ["paa_tf.evaluation.coco_scoring", "paa_tf.config",
                                    "paa_tf.run_folder", "paa_tf.data.image_files"])
def test_light_modules_do_not_import_tensorflow(module):
    # A fresh interpreter: scoring a results file or reading a config needs no TensorFlow.
    code = (f"import sys, {module}\n"
            "heavy = sorted(k for k in sys.modules if k.split('.')[0] in "
            "('tensorflow', 'tf_keras', 'keras'))\n"
            "print('heavy', heavy[:5])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heavy []" in out.stdout, out.stdout
