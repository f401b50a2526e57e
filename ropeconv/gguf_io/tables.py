"""gguf-py's own tables — its constants (architectures, keys, token types) and the tensor-name map — without its
package __init__, which imports numpy and gguf-py's reader, writer and quantizers (~0.1 s): planning a GGUF
(a dry run's) then needs neither.

The files are the installed gguf-py's constants.py and tensor_mapping.py (which imports only the first), loaded
as a private package over gguf-py's own folder, so nothing is copied and their compiled caches are gguf-py's.
Where gguf is imported already, or that load fails (a gguf-py laid out otherwise), gguf's own modules are used.
Their enums are IntEnums: members of the two loads compare and hash as their numbers, so they mix safely.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

PRIVATE = "ropeconv._gguf_tables"


def constants() -> types.ModuleType:
    """gguf.constants: MODEL_ARCH, MODEL_ARCH_NAMES, Keys, TokenType, …"""
    return _load("constants")


def tensor_mapping() -> types.ModuleType:
    """gguf.tensor_mapping: get_tensor_name_map(arch, n_blocks) → TensorNameMap."""
    return _load("tensor_mapping")


def _load(name: str) -> types.ModuleType:
    if "gguf" not in sys.modules:
        try:
            return importlib.import_module(f"{_private_package()}.{name}")
        except Exception:  # noqa: BLE001 — another layout of gguf-py: its own package, as anyone imports it
            pass
    return importlib.import_module(f"gguf.{name}")


def _private_package() -> str:
    if PRIVATE not in sys.modules:
        spec = importlib.util.find_spec("gguf")  # finds the folder without running its __init__
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("gguf-py is not installed")
        package = types.ModuleType(PRIVATE)
        package.__path__ = list(spec.submodule_search_locations)
        package.__package__ = PRIVATE
        sys.modules[PRIVATE] = package
    return PRIVATE
