"""Candidate runtimes: each loads an artifact from disk in the engine it is meant for.

Every runtime follows one interface, base.Runtime (load an artifact; logits for token ids at given positions
through the KV cache; what it ran on; a note when it fell back), with base.RuntimeBase's defaults for the
optional parts. A runtime module (hf.py, llamacpp.py, ort.py) defines RUNTIME; the format registry names the
module (formats.Format.runtime_module).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ropeconv.formats import Format
    from ropeconv.parity.runtimes.base import Runtime


def runtime_of(fmt: Format) -> Runtime:
    """The runtime a format's artifacts run in (its module is imported here, with its engine's imports)."""
    from importlib import import_module

    return import_module(fmt.runtime_module).RUNTIME


def runtime_for(artifact: Path) -> Runtime:
    """The runtime the artifact's format names."""
    from ropeconv.formats import artifact_format

    return runtime_of(artifact_format(artifact))
