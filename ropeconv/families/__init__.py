"""Family registry: every module in this package that defines FAMILY is an architecture family.

Adding a family is one file here, ropeconv/families/<model_type>.py with `FAMILY = Family(...)` (see
spec.Family and docs/developing.md's "Adding a family"): the config reader, the shape check, both exporters, the
capability matrix and the tests' matrices read the views below, built from the files found (pkgutil over this
package, sorted by name). spec.py (the record's types), parts.py (parts several families share) and lookup.py
(the registry looked up by model_type or GGUF architecture) are not families.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ropeconv.families.spec import ArchSpec, Family, FamilyShapes, GgufArchSpec, GgufLayout, OnnxLayout

_SKIP = {"spec", "parts", "lookup"}

# The order the capability matrix lists families in (the order they were added); a family not named here comes
# after these, by name, so that dropping a file in is enough. Name it here only to place it.
ORDER = ("llama", "mistral", "qwen2", "qwen3", "olmo2", "smollm3", "mixtral", "qwen3_moe", "qwen2_moe", "gemma",
         "gemma2", "gemma3_text", "phi3", "gpt_neox", "bloom", "mpt", "gpt2", "opt")
# The orders the GGUF and ONNX notes under the matrix list each exporter's families in (the order it learned
# them, kept so that the matrix text did not change when the tables became files); same rule for a family not
# named. One order for all three would do as well: it changes only the order of names in two notes.
GGUF_ORDER = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt_neox", "olmo2", "smollm3", "mixtral", "qwen3_moe",
              "qwen2_moe", "gemma", "gemma2", "gemma3_text", "bloom", "mpt", "gpt2", "opt")
ONNX_ORDER = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gpt_neox", "bloom", "mpt", "gpt2", "opt", "olmo2",
              "smollm3", "mixtral", "qwen3_moe", "qwen2_moe", "gemma", "gemma2", "gemma3_text")


class FamilyError(Exception):
    """A family file that is not a complete family record (a developer's error, shown with its file)."""


def _where(module: ModuleType | str) -> str:
    name = module if isinstance(module, str) else module.__name__
    return f"ropeconv/families/{name.rpartition('.')[2]}.py"


def check_family(family: object, where: str, expected_name: str | None = None) -> Family:
    """A clear message for each way a family record can be incomplete or inconsistent."""
    if not isinstance(family, Family):
        raise FamilyError(f"{where}: FAMILY must be a ropeconv.families.spec.Family, got {type(family).__name__}")
    if not isinstance(family.arch, ArchSpec):
        raise FamilyError(f"{where}: Family.arch must be an ArchSpec (how config.json declares positions)")
    mt = family.model_type
    if expected_name is not None and mt != expected_name:
        raise FamilyError(f"{where}: the file is named for {expected_name!r} but its ArchSpec is {mt!r}; "
                          "a family file is named for its transformers model_type")
    if not isinstance(family.shapes, FamilyShapes):
        raise FamilyError(f"{where}: {mt} has no shapes (FamilyShapes: the tensors its config implies)")
    if not isinstance(family.tiny, dict) or not family.tiny:
        raise FamilyError(f"{where}: {mt} has no tiny test config (Family.tiny: the tiny random model the tests build)")
    for part, value, kind in (("gguf", family.gguf, GgufLayout), ("onnx", family.onnx, OnnxLayout)):
        reason = getattr(family, f"no_{part}")
        if (value is None) == (reason is None):
            raise FamilyError(f"{where}: {mt} needs exactly one of {part}= (its {part.upper()} layout) or "
                              f"no_{part}= (why there is none, and what to use instead)")
        if value is not None and not isinstance(value, kind):
            raise FamilyError(f"{where}: {mt}'s {part} must be a {kind.__name__}")
    for layout in (family.shapes, family.gguf, family.onnx):
        if layout is not None and layout.model_type != mt:
            raise FamilyError(f"{where}: {type(layout).__name__} names {layout.model_type!r}, the family is {mt!r}")
    if family.gguf_arch is not None and not isinstance(family.gguf_arch, GgufArchSpec):
        raise FamilyError(f"{where}: {mt}'s gguf_arch must be a GgufArchSpec")
    typed = {v.key for v in family.values} | {k for _, dim in family.shapes.dims for k in dim.keys}
    untyped = sorted({k for k, _ in family.config_defaults} - typed - {"tie_word_embeddings"})
    if untyped:
        raise FamilyError(f"{where}: {mt} states a default for {untyped[0]!r} but no Value for it: add "
                          f"values=(..., Value({untyped[0]!r}, kind, ...)) (its type and range)")
    return family


def discover(package_path=None, package: str = __name__) -> dict[str, Family]:
    """model_type → Family for every family module of the package (another package's path: for tests)."""
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(package_path or __path__), key=lambda i: i.name):
        if info.name in _SKIP or info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except TypeError as exc:  # Family(...) without one of its required parts
            raise FamilyError(f"{_where(info.name)}: {exc}") from exc
        if not hasattr(module, "FAMILY"):
            raise FamilyError(f"{_where(module)} defines no FAMILY = Family(...); a module in ropeconv/families is a "
                              "family (shared parts belong in parts.py)")
        family = check_family(module.FAMILY, _where(module), info.name)
        found[family.model_type] = family
    return found


def _ordered(found: dict[str, Family], order: tuple[str, ...]) -> list[Family]:
    return [found[n] for n in order if n in found] + [f for n, f in sorted(found.items()) if n not in order]


def build_views(found: dict[str, Family]) -> dict[str, dict]:
    """The tables the rest of the package reads, each in its own order (see ORDER, GGUF_ORDER, ONNX_ORDER)."""
    families = _ordered(found, ORDER)
    gguf = _ordered(found, GGUF_ORDER)
    onnx = _ordered(found, ONNX_ORDER)
    gguf_archs: dict[str, GgufArchSpec] = {}
    for f in gguf:
        spec = f.gguf_arch
        if spec is None:
            continue
        if spec.name in gguf_archs:
            raise FamilyError(f"{_where(f.model_type)}: GGUF architecture {spec.name!r} is defined twice; one family "
                              "owns it (the others name it in their GgufLayout only)")
        gguf_archs[spec.name] = spec
    for f in gguf:
        if f.gguf is not None and f.gguf.arch not in gguf_archs:
            raise FamilyError(f"{_where(f.model_type)}: its GgufLayout writes GGUF architecture {f.gguf.arch!r}, "
                              "which no family defines: add gguf_arch=GgufArchSpec(...) (what llama.cpp's loader "
                              "of it reads)")
    refused: dict[str, str] = {}
    for f in families:
        for name, reason in f.refused_types.items():
            if name in found or name in refused:
                raise FamilyError(f"{_where(f.model_type)}: refused model type {name!r} is "
                                  f"{'a family' if name in found else 'refused twice'}; a refused type names no family")
            refused[name] = reason
    return {
        "FAMILIES": {f.model_type: f for f in families},
        "ARCHS": {f.model_type: f.arch for f in families},
        "SHAPES": {f.model_type: f.shapes for f in families},
        "GGUF_ARCHS": gguf_archs,
        "GGUF_LAYOUTS": {f.model_type: f.gguf for f in gguf if f.gguf is not None},
        "NO_GGUF": {f.model_type: f.no_gguf for f in gguf if f.no_gguf is not None},
        "GGUF_CHECKS": {f.model_type: f.gguf_checks for f in gguf if f.gguf_checks},
        "ONNX_LAYOUTS": {f.model_type: f.onnx for f in onnx if f.onnx is not None},
        "NO_ONNX": {f.model_type: f.no_onnx for f in onnx if f.no_onnx is not None},
        "ONNX_CHECKS": {f.model_type: f.onnx_checks for f in onnx if f.onnx_checks},
        "GENAI_TYPES": {f.model_type: f.genai_type for f in onnx if f.genai_type and f.onnx is not None},
        "REFUSED_TYPES": refused,
    }


_views = build_views(discover())
FAMILIES: dict[str, Family] = _views["FAMILIES"]
ARCHS: dict[str, ArchSpec] = _views["ARCHS"]
SHAPES: dict[str, FamilyShapes] = _views["SHAPES"]
GGUF_ARCHS: dict[str, GgufArchSpec] = _views["GGUF_ARCHS"]
GGUF_LAYOUTS: dict[str, GgufLayout] = _views["GGUF_LAYOUTS"]
NO_GGUF: dict[str, str] = _views["NO_GGUF"]
GGUF_CHECKS: dict = _views["GGUF_CHECKS"]
ONNX_LAYOUTS: dict[str, OnnxLayout] = _views["ONNX_LAYOUTS"]
NO_ONNX: dict[str, str] = _views["NO_ONNX"]
ONNX_CHECKS: dict = _views["ONNX_CHECKS"]
GENAI_TYPES: dict[str, str] = _views["GENAI_TYPES"]  # onnxruntime-genai model types (it has none for gpt_neox …)
# model types that name a family in another form → what to pass instead (Family.refused_types)
REFUSED_TYPES: dict[str, str] = _views["REFUSED_TYPES"]
