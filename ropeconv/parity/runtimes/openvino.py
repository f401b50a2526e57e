"""OpenVINO running an OpenVINO IR folder as its users do: optimum-intel's OVModelForCausalLM (the IR compiled for
the CPU with INFERENCE_PRECISION_HINT f32 and KV_CACHE_PRECISION f32 — the CPU plugin's defaults, bf16/f16 compute
where the CPU has it and a u8 KV cache, would measure OpenVINO's precision, not the position math), each probe pass's
prefill (in chunks) then its decode steps one token per call through the model's stateful KV cache, at the pass's
positions (position_ids is an input of the IR). optimum-intel lives in its own environment (.venv-ov): all passes of
one artifact run in one start of it (openvino_export/ov_runner.py), logits come back as .npy files. RUNTIME is this
engine behind the Runtime interface (base.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ropeconv.errors import ParityError
from ropeconv.parity.runtimes.base import RuntimeBase

NAME = "openvino"


def pass_spec(p: Any) -> dict[str, int]:
    return {"first_position": p.first_position, "n_tokens": p.n_tokens, "decode_steps": p.decode_steps,
            "chunk_tokens": p.chunk_tokens, "lead_tokens": p.lead_tokens}


def run_job(model: Path, ids: list[int], passes: list[dict[str, int]], out: Path) -> dict[str, Any]:
    """One run job for ov_runner.py: the passes' logits written to out-<k>.npy."""
    return {"op": "run", "model": str(Path(model).resolve()), "ids": ids, "passes": passes, "out": str(out)}


def load_logits(result: dict[str, Any]) -> list[Any]:
    """The float32 logits [n, vocab] (torch, CPU) of each pass of a finished run job."""
    import numpy as np
    import torch

    return [torch.from_numpy(np.load(path)) for path in result["files"]]


class Loaded:
    def __init__(self, path: Path) -> None:
        self.path = path


class OpenVinoRuntime(RuntimeBase):
    name = NAME
    supports_decode_steps = True

    def require(self) -> None:
        from ropeconv.openvino_export import env

        env.require("OpenVINO parity")

    def ran_on(self, device, targets) -> str:
        return "cpu"

    def fallback_notes(self, device, artifact, targets):
        if device.type == "cuda":
            return ("OpenVINO ran on the CPU (its CPU plugin; no GPU plugin is used here)",)
        return ()

    def load(self, artifact, device, *, target=None, n_ctx=0, placement=None, scratch=None, progress=lambda _: None):
        self.require()
        return Loaded(Path(artifact))

    def _run(self, artifact: Path, ids: list[int], passes: list[dict[str, int]], scratch: Path | None,
             progress) -> list[Any]:
        from ropeconv.openvino_export import env

        with tempfile.TemporaryDirectory(prefix="ropeconv-ov-logits-", dir=scratch) as tmp:
            [result], _ = env.run_jobs([run_job(artifact, ids, passes, Path(tmp) / "logits")], progress,
                                       failure=ParityError)
            return load_logits(result)

    def logits(self, loaded, input_ids, position_ids, *, decode_steps=0, chunk_tokens=0, lead_tokens=0,
               scratch=None):
        positions = position_ids[0].tolist()
        if positions != list(range(positions[0], positions[0] + len(positions))):
            raise ParityError("OpenVINO runs tokens at consecutive positions only here")
        spec = {"first_position": int(positions[0]), "n_tokens": len(positions), "decode_steps": decode_steps,
                "chunk_tokens": chunk_tokens, "lead_tokens": lead_tokens}
        return self._run(loaded.path, input_ids[0].tolist(), [spec], scratch, lambda _: None)[0]

    def run_passes(self, artifact, device, ids, passes, *, target=None, placement=None, scratch=None, progress=None):
        """Every pass in one start of the OpenVINO environment (one model compile)."""
        self.require()
        return self._run(Path(artifact), ids[0].tolist(), [pass_spec(p) for p in passes], scratch,
                         progress or (lambda _: None))


RUNTIME = OpenVinoRuntime()
