"""Adding a family is one file: a file dropped into ropeconv/families registers the family everywhere (config
reader, shape check, both exporters' layouts, the capability matrix and its per-family cells), and a family file
missing a part is refused with a message that names the file and the part."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ropeconv
from ropeconv.families import FAMILIES, FamilyError, build_views, discover
from tests.conftest import TINY

SRC = Path(ropeconv.__file__).parent

# llama's family file under another model_type: the part a new family writes; it names llama's GGUF architecture,
# which the llama family owns, so it defines no GgufArchSpec of its own (mistral's way)
CLONE = (SRC / "families" / "llama.py").read_text().replace('"llama"', '"llama_clone"').replace(
    'gguf=GgufLayout("llama_clone", "llama_clone"', 'gguf=GgufLayout("llama_clone", "llama"').replace(
    '    gguf_arch=GgufArchSpec("llama_clone", reads_rope_freqs=True, longrope="typed"),\n', '')


def test_every_family_is_complete():
    """Each registered family has its parts (the registry checks them; this states the count the matrix shows)."""
    assert list(FAMILIES) == ["llama", "mistral", "qwen2", "qwen3", "olmo2", "smollm3", "mixtral", "qwen3_moe",
                              "qwen2_moe", "gemma", "gemma2", "gemma3_text", "phi3", "gpt_neox", "bloom", "mpt", "gpt2",
                              "opt"]
    assert set(TINY) == set(FAMILIES)  # the tests' tiny configs come from the family files


def test_every_named_hook_of_a_family_resolves():
    """A family names code of a layer above it by "module:function" (transformers_fixup): each name imports."""
    import importlib

    named = {f.gguf_arch.name: f.gguf_arch.transformers_fixup for f in FAMILIES.values()
             if f.gguf_arch is not None and f.gguf_arch.transformers_fixup}
    assert "gemma3" in named  # transformers' gemma3 GGUF reader leaves out the sliding layers' keys
    for target in named.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.fixture(scope="module")
def with_clone(tmp_path_factory) -> Path:
    """A copy of the package with one file added, ropeconv/families/llama_clone.py, and nothing else changed."""
    root = tmp_path_factory.mktemp("src")
    shutil.copytree(SRC, root / "ropeconv", ignore=shutil.ignore_patterns("__pycache__"))
    assert "llama_clone" in CLONE and "GgufArchSpec(" not in CLONE.split("FAMILY = ")[1]
    (root / "ropeconv" / "families" / "llama_clone.py").write_text(CLONE)
    return root


# an editable install maps `ropeconv` to its checkout with a finder ahead of PYTHONPATH: drop it in the child
_OWN_COPY = ("import sys\n"
             "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n")


def _run(root: Path, code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _OWN_COPY + code], capture_output=True, text=True, timeout=120, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_dropped_in_family_file_registers_the_family_everywhere(with_clone, tiny_llama, tmp_path):
    base = Path(shutil.copytree(tiny_llama, tmp_path / "clone-base"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(dict(config, model_type="llama_clone")))
    seen = _run(with_clone, textwrap.dedent(f"""
        import contextlib, io, json
        import ropeconv
        from ropeconv.families.lookup import ARCHS, arch_for
        from ropeconv.checkpoint import load_checkpoint
        from ropeconv.checkpoint.shapes import SHAPES
        from ropeconv.gguf_export.layouts import LAYOUTS as GGUF, layout_for
        from ropeconv.onnx_export.layouts import LAYOUTS as ONNX
        from ropeconv.capabilities import family_cells, matrix
        from ropeconv.cli.main import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["inspect", {str(base)!r}, "--json"])
        print(json.dumps({{
            "package": ropeconv.__file__,
            "archs": "llama_clone" in ARCHS, "shapes": "llama_clone" in SHAPES, "gguf": "llama_clone" in GGUF,
            "onnx": "llama_clone" in ONNX, "gguf_arch": layout_for("llama_clone").arch,
            "matrix": [r["method"] for r in matrix() if "llama_clone" in r["architectures"]],
            "gguf_cells": sorted(m for f, m in family_cells("gguf") if f == "llama_clone"),
            "llama_gguf_cells": sorted(m for f, m in family_cells("gguf") if f == "llama"),
            "inspect_rc": rc, "inspected": json.loads(out.getvalue())["architecture"],
            "checkpoint": load_checkpoint({str(base)!r}).arch.model_type,
        }}))
    """))
    assert seen["package"].startswith(str(with_clone))  # the copy ran, not the installed package
    assert seen["archs"] and seen["shapes"] and seen["gguf"] and seen["onnx"] and seen["gguf_arch"] == "llama"
    assert seen["matrix"] == ["linear", "ntk", "dynamic", "yarn", "longrope", "llama3", "freqs", "none"]
    assert seen["gguf_cells"] == seen["llama_gguf_cells"]  # llama's GGUF architecture, llama's carriers
    assert seen["inspect_rc"] == 0 and seen["inspected"] == "llama_clone" and seen["checkpoint"] == "llama_clone"


def test_without_the_file_the_family_is_unknown(tiny_llama, tmp_path):
    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.errors import InputError

    base = Path(shutil.copytree(tiny_llama, tmp_path / "clone-base"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(dict(config, model_type="llama_clone")))
    with pytest.raises(InputError, match="unknown architecture 'llama_clone'"):
        load_checkpoint(base)


# ------------------------------------------------------------------------------------ incomplete families

_HEAD = "from ropeconv.families.spec import *\nfrom ropeconv.families.parts import *\n"
_FULL = dict(
    arch='ArchSpec("{name}")', shapes='FamilyShapes("{name}", LLAMA_DIMS, LLAMA_TENSORS, GQA)', tiny="TINY_LLAMA",
    gguf='GgufLayout("{name}", "llama", COMMON + RMS, ("silu",))',
    gguf_arch='GgufArchSpec("llama", reads_rope_freqs=True)',
    onnx='OnnxLayout("{name}", **LLAMA_ONNX)',
)
_counter = iter(range(10**6))


def _discover(tmp_path: Path, files: dict[str, str]) -> dict:
    package = f"famtest{next(_counter)}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        return build_views(discover([str(tmp_path / package)], package))
    finally:
        sys.path.remove(str(tmp_path))


def _family(name: str, **changes: str | None) -> str:
    parts = {k: v for k, v in dict(_FULL, **changes).items() if v is not None}
    return _HEAD + "FAMILY = Family(" + ", ".join(f"{k}={v.format(name=name)}" for k, v in parts.items()) + ")\n"


def test_a_complete_minimal_family_file_is_accepted(tmp_path):
    views = _discover(tmp_path, {"newfam": _family("newfam")})
    assert list(views["ARCHS"]) == ["newfam"] and views["GGUF_LAYOUTS"]["newfam"].arch == "llama"
    assert views["GENAI_TYPES"] == {}  # none named: no genai_config.json for it


@pytest.mark.parametrize("case,files,words", [
    ("no FAMILY", {"newfam": "X = 1\n"}, ("newfam.py", "defines no FAMILY")),
    ("no tiny config", {"newfam": _family("newfam", tiny=None)}, ("newfam.py", "tiny")),
    ("no shapes", {"newfam": _family("newfam", shapes=None)}, ("newfam.py", "shapes")),
    ("neither gguf nor no_gguf", {"newfam": _family("newfam", gguf=None)}, ("newfam.py", "gguf=", "no_gguf=")),
    ("both onnx and no_onnx", {"newfam": _family("newfam", no_onnx='"why"')}, ("newfam.py", "onnx=", "no_onnx=")),
    ("named for another model_type", {"newfam": _family("other")}, ("newfam.py", "'newfam'", "'other'")),
    ("a GGUF architecture no family defines", {"newfam": _family("newfam", gguf_arch=None)},
     ("newfam.py", "'llama'", "gguf_arch=GgufArchSpec")),
    ("a GGUF architecture defined twice", {"a": _family("a"), "b": _family("b")}, ("b.py", "'llama'", "twice")),
    ("a refused model type that is a family", {"newfam": _family("newfam", refused_types='{{"newfam": "why"}}')},
     ("newfam.py", "'newfam'", "a family")),
    ("parts that disagree", {"newfam": _family("newfam", onnx='OnnxLayout("llama", **LLAMA_ONNX)')},
     ("newfam.py", "OnnxLayout", "'llama'")),
])
def test_an_incomplete_family_file_fails_with_a_clear_message(tmp_path, case, files, words):
    with pytest.raises(FamilyError) as exc:
        _discover(tmp_path, files)
    message = str(exc.value)
    print(f"{case}: {message}")
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
