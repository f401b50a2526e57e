"""Candidate runtimes: each loads an artifact from disk in the runtime it is meant for.

A runtime module has NAME and run_passes(artifact, device, ids, passes, progress=None) -> [logits per pass],
each [n_tokens, vocab] float32 on the CPU, with the tokens at the pass's positions (progress: a line per pass).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def runtime_for(artifact: Path) -> ModuleType:
    """The runtime module the artifact's format names (formats.Format.runtime_module)."""
    from importlib import import_module

    from ropeconv.formats import artifact_format

    return import_module(artifact_format(artifact).runtime_module)
