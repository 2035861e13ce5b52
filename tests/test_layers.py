"""The package's layer rule (see `loraflow/__init__.py`), checked on the source: no import cycle
between loraflow modules, and no module imports from a layer above its own. Function-local imports
count as much as top-level ones: a local import that dodges a cycle still is one."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loraflow

SRC = Path(loraflow.__file__).parent

# Lowest first. A module may import from its own group or from any lower layer; groups that share
# a layer are independent of each other. `*.cli` modules (command shells) and `loraflow.api` (the
# Python API) sit at the top.
LAYERS: list[list[tuple[str, ...]]] = [
    [("loraflow", "loraflow.errors", "loraflow.atomic", "loraflow.config", "loraflow.images", "loraflow.quiet",
      "loraflow.plots", "loraflow.progress")],
    [("loraflow.models",)],
    [("loraflow.plan",)],
    [("loraflow.generate",)],
    [("loraflow.score",)],
    [("loraflow.data",), ("loraflow.generate.storyboard", "loraflow.generate.story_scoring",
                                  "loraflow.generate.character_sheet")],
    [("loraflow.train",)],
    [("loraflow.serve",), ("loraflow.demo",)],
    [("loraflow.__main__", "loraflow.cli", "*.cli", "loraflow.api")],
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("").as_posix()
    return rel.replace("/", ".").removesuffix(".__init__")


def imported(tree: ast.AST, name: str, is_pkg: bool) -> set[str]:
    """Every loraflow module or name a module imports, anywhere in it (as structure_check.py reads them)."""
    pkg = name if is_pkg else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("loraflow"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("loraflow"))
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        graph[name] = imported(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py")
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module are the cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def place(module: str) -> tuple[int, tuple[str, ...]]:
    """(layer number, group) of a module: the longest matching prefix wins."""
    best: tuple[int, int, tuple[str, ...]] | None = None
    for number, layer in enumerate(LAYERS):
        for group in layer:
            for prefix in group:
                if prefix == "*.cli":
                    hit = module.endswith(".cli")
                    length = 10**6  # a package's cli module is always a shell
                else:
                    hit = module == prefix or (prefix != "loraflow" and module.startswith(prefix + "."))
                    length = len(prefix)
                if hit and (best is None or length > best[0]):
                    best = (length, number, group)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS (and to the rule in loraflow/__init__.py)")
    return best[1], best[2]


def test_strongly_connected_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_place_uses_the_longest_prefix():
    assert place("loraflow.generate.session")[0] == place("loraflow.models.loading")[0] + 2
    assert place("loraflow.generate.storyboard")[0] == place("loraflow.data.recipe")[0]
    assert place("loraflow.generate.storyboard")[1] != place("loraflow.data.recipe")[1]
    assert place("loraflow.generate.cli")[0] == len(LAYERS) - 1
    assert place("loraflow")[0] == place("loraflow.errors")[0] == 0


def test_no_import_cycles():
    graph = import_graph()
    # A package and its own submodule importing each other (`__init__` re-exports) is not a cycle.
    cycles = [c for c in strongly_connected(graph) if not (len(c) == 2 and c[1].startswith(c[0] + "."))]
    assert not cycles, "import cycles (function-local imports included):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_from_a_higher_layer():
    wrong = []
    for module, deps in sorted(import_graph().items()):
        layer, group = place(module)
        for dep in sorted(deps):
            dep_layer, dep_group = place(dep)
            if dep_layer > layer or (dep_layer == layer and dep_group != group):
                wrong.append(f"{module} (layer {layer}) imports {dep} (layer {dep_layer})")
    assert not wrong, "imports against the layer rule:\n" + "\n".join(wrong)


@pytest.mark.parametrize("group", [g for layer in LAYERS for g in layer])
def test_every_layer_entry_names_real_modules(group):
    """A renamed package must not leave a prefix that silently matches nothing."""
    modules = import_graph()
    for prefix in group:
        if prefix != "*.cli":
            assert any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix
