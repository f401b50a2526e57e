"""extend: a base and a method in, an extended model out, proven in the runtimes it is meant for.

- job.py: the job and its result, and what both flows check and gate the same way (formats, target,
  placement, parity gate).
- from_hf.py: a HuggingFace folder ─► safetensors, GGUF and ONNX in one streamed pass.
- from_gguf.py: a GGUF file ─► the same GGUF with rewritten rope metadata (tensor bytes copied).
- dispatch.py: run(job) takes the output's lock and hands the job to the flow for its base.

As a library: `from ropeconv.extend import ExtendJob, run`. They load on first use, so a command that only
needs the job (recipe check) loads neither flow.
"""

from __future__ import annotations

__all__ = ["ExtendJob", "ExtendResult", "run"]


def __getattr__(name: str):
    if name == "run":
        from ropeconv.extend.dispatch import run

        return run
    if name in ("ExtendJob", "ExtendResult"):
        from ropeconv.extend import job

        return getattr(job, name)
    raise AttributeError(f"module 'ropeconv.extend' has no attribute {name!r}")
