"""The package's import graph: no cycle, and imports run one way, bottom up through the layers below.

Every import counts, module-level or inside a function (a function-local import only postpones a cycle to
the first call that takes that path), and so does one under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ropeconv

ROOT = Path(ropeconv.__file__).parent

# Bottom up. A module belongs to the layer of the longest prefix that names it (the package itself, "ropeconv",
# names only its __init__); a module may import its own layer and the layers below, never one above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("ropeconv", "ropeconv.errors", "ropeconv.jsontext", "ropeconv.files", "ropeconv.inputfile",
              "ropeconv.interrupts", "ropeconv.sizes", "ropeconv.progress", "ropeconv.llamacpp_log", "ropeconv.manifest",
              "ropeconv.side_env",
              "ropeconv.optionfields", "ropeconv.formats")),
    ("positions", ("ropeconv.positions",)),
    # alibi_patch: the transformers-side ALiBi scaling a loaded model applies (positions only); runtime: its public
    # name, a re-export
    # families: one record per architecture family (data, and pure functions of config.json values), and lookup.py
    ("archs/methods", ("ropeconv.families", "ropeconv.methods", "ropeconv.alibi_patch", "ropeconv.runtime")),
    # lora's adapters and merge feed the checkpoint's tensor source; lora.gguf_base is an exporter's concern
    # hashing: the writers' hash-while-written (it copies ranges through checkpoint.sources)
    # hub: the Hugging Face Hub (push.py: an output's files, from its manifest, and its recorded plan uploaded;
    # and base.py: a base given as a Hub id, fetched into huggingface_hub's cache; the exporters name a snapshot by it)
    ("checkpoint/gguf_io/provenance", ("ropeconv.checkpoint", "ropeconv.gguf_io", "ropeconv.provenance",
                                       "ropeconv.lora", "ropeconv.hashing", "ropeconv.hub")),
    ("exporters", ("ropeconv.export", "ropeconv.gguf_export", "ropeconv.onnx_export", "ropeconv.mlx_export", "ropeconv.openvino_export",
                   "ropeconv.lora.gguf_base")),
    # device: where models run (the device, accelerate's placement under --max-memory, freeing memory), for
    # parity, eval, search, extend and the CLI alike
    ("device", ("ropeconv.device",)),
    ("parity", ("ropeconv.parity", "ropeconv.eval")),
    ("extend flows", ("ropeconv.extend",)),
    ("verify/recipe", ("ropeconv.verify", "ropeconv.verify_mlx", "ropeconv.recipe", "ropeconv.search", "ropeconv.finetune",
                       "ropeconv.capabilities", "ropeconv.fixtures")),
    ("cli", ("ropeconv.cli",)),
)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    return {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(root.rglob("*.py"))}


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module → {imported package module: first line}, for every import of a module of the package."""
    graph: dict[str, dict[str, int]] = {m: {} for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].setdefault(target, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, dict[str, int]], files: dict[str, Path]) -> str:
    members = set(component)
    edges = [f"    {a} -> {b}  ({files[a].relative_to(ROOT.parent)}:{line})"
             for a in component for b, line in sorted(graph[a].items()) if b in members]
    return " <-> ".join(component) + "\n" + "\n".join(edges)


def layer_of(module: str) -> int | None:
    best, layer = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "ropeconv"
            if (module == prefix or inside) and len(prefix) > best:
                best, layer = len(prefix), i
    return layer


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for a, targets in sorted(graph.items()):
        for b, line in sorted(targets.items()):
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb > la:
                out.append(f"{a} ({LAYERS[la][0]}) imports {b} ({LAYERS[lb][0]}), line {line}")
    return out


@pytest.fixture(scope="module")
def package():
    files = module_files()
    return files, import_graph(files)


def test_no_import_cycle(package):
    files, graph = package
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph, files) for c in found)


def test_every_module_has_a_layer(package):
    files, _ = package
    unplaced = [m for m in files if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_imports_run_bottom_up(package):
    _, graph = package
    upward = upward_imports(graph)
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_a_back_edge_is_caught(package):
    """The checks can fail: one import from the bottom of the package to the top makes a cycle through
    every layer between, and an upward import."""
    files, graph = package
    broken = {m: dict(t) for m, t in graph.items()}
    broken["ropeconv.positions.plan"]["ropeconv.extend.from_hf"] = 1  # (cli.main imports its commands lazily)
    found = cycles(broken)
    assert len(found) == 1 and {"ropeconv.positions.plan", "ropeconv.extend.from_hf"} <= set(found[0])
    assert any(line.startswith("ropeconv.positions.plan (positions) imports ropeconv.extend.from_hf (extend flows)")
               for line in upward_imports(broken))


def test_function_local_imports_are_seen(tmp_path):
    """An import inside a function, a relative one and a `from package import module` each make an edge."""
    pkg = tmp_path / "ropeconv"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from ropeconv.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    files = module_files(pkg)
    graph = import_graph(files)
    assert graph["ropeconv.a"] == {"ropeconv.sub.b": 2}
    assert graph["ropeconv.sub.b"] == {"ropeconv.a": 1}
    assert cycles(graph) == [["ropeconv.a", "ropeconv.sub.b"]]
