"""Candidate runtimes: each loads an artifact from disk in the runtime it is meant for.

A runtime module has NAME and run_passes(artifact, device, ids, passes, progress=None) -> [logits per pass],
each [n_tokens, vocab] float32 on the CPU, with the tokens at the pass's positions (progress: a line per pass).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def runtime_for(artifact: Path) -> ModuleType:
    if Path(artifact).suffix == ".gguf":
        from ropeconv.parity.runtimes import llamacpp

        return llamacpp
    if Path(artifact).suffix == ".onnx":
        from ropeconv.parity.runtimes import ort

        return ort
    from ropeconv.parity.runtimes import hf

    return hf
