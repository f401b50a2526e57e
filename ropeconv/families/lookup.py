"""The family registry looked up by name: a config.json's model_type → its ArchSpec (how the family's config
names its position parameters), a GGUF's general.architecture → its GgufArchSpec (what llama.cpp's loader of it
reads), each refused in one line when unknown.

The rows live in the family files (ropeconv/families/<model_type>.py, one per transformers `model_type`); this
module is the lookup the readers and writers use (it was ropeconv/archs.py). It is not a family: the registry
skips it. Nothing here is code that differs per model.
"""

from __future__ import annotations

from ropeconv.errors import InputError
from ropeconv.families import ARCHS, GGUF_ARCHS, REFUSED_TYPES
from ropeconv.families.spec import ArchSpec, GgufArchSpec

__all__ = ["ARCHS", "GGUF_ARCHS", "REFUSED_TYPES", "ArchSpec", "GgufArchSpec", "arch_for", "gguf_arch_for"]


def gguf_arch_for(name: str | None) -> GgufArchSpec:
    if not name:
        raise InputError("GGUF has no general.architecture")
    if not isinstance(name, str):
        raise InputError(f"GGUF general.architecture must be a string, got {type(name).__name__}")
    try:
        return GGUF_ARCHS[name]
    except KeyError:
        raise InputError(f"unknown GGUF architecture {name[:40]!r}; supported: {', '.join(sorted(GGUF_ARCHS))}") from None


def arch_for(model_type: str | None) -> ArchSpec:
    if not model_type:
        raise InputError("config.json has no model_type; cannot tell the architecture")
    if not isinstance(model_type, str):
        raise InputError(f"config.json: model_type must be a string, got {type(model_type).__name__}")
    if model_type in REFUSED_TYPES:
        raise InputError(f"model_type {model_type!r}: {REFUSED_TYPES[model_type]}")
    try:
        return ARCHS[model_type]
    except KeyError:
        raise InputError(
            f"unknown architecture {model_type[:40]!r}; supported: {', '.join(sorted(ARCHS))}"
        ) from None
