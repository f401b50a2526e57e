"""Outside a format's own modules, no code compares a format's name or suffix: what differs per format is read from
its record (formats.Format), so a format added as one module is found everywhere else without an edit there."""

from __future__ import annotations

import ast
from pathlib import Path

import ropeconv
from ropeconv.formats import FORMATS

ROOT = Path(ropeconv.__file__).parent

# a format's own modules: its record, and the packages and modules that implement the hooks its record names
OWN = ("formats/", "gguf_export/", "gguf_io/", "onnx_export/", "export/safetensors_", "parity/runtimes/",
       "provenance/gguf.py", "lora/gguf_base.py", "extend/from_gguf.py")


def _words() -> set[str]:
    names = set(FORMATS)
    suffixes = {f.suffix for f in FORMATS.values() if f.suffix} | {".safetensors"}
    return names | suffixes | {s.lstrip(".") for s in suffixes}


def _literals(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def comparisons(path: Path, words: set[str], root: Path = ROOT.parent) -> list[str]:
    """Comparisons (==, !=, in, not in) with a format's name or suffix as a literal, and lookups of a literal
    table keyed by suffixes ({".gguf": …}.get(path.suffix))."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            hits = [w for side in sides for w in _literals(side) if w in words]
            if hits:
                found.append(f"{path.relative_to(root)}:{node.lineno}: compares {hits[0]!r}")
        elif isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value.startswith(".")
                and k.value in words for k in node.keys):
            found.append(f"{path.relative_to(root)}:{node.lineno}: a table keyed by suffixes")
    return found


def test_no_code_outside_a_formats_modules_compares_its_name_or_suffix():
    words = _words()
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if not relative.startswith(OWN):
            found += comparisons(path, words)
    assert found == []


def test_the_check_finds_a_comparison(tmp_path):
    """The scan above is able to fail: each kind of comparison it looks for is found in a sample."""
    sample = tmp_path / "sample.py"
    sample.write_text('def f(fmt, path, chosen):\n    a = fmt == "gguf"\n    b = "onnx" not in chosen\n'
                      '    c = path.suffix in (".gguf", ".bin")\n    d = {".onnx": 1}.get(path.suffix)\n'
                      '    e = fmt == "onnxruntime"\n')
    assert len(comparisons(sample, _words(), tmp_path)) == 4
