"""vLLM in the model card: the serve command of a safetensors output vLLM proved (`extend --verify-in vllm` records
the proof in the manifest's parity under "vllm", VllmReport.card_summary, with its figure), which the card's "Long
context" section gives. Light: no vLLM, no torch (parity/vllm.py runs the engine)."""

from __future__ import annotations

from ropeconv.formats.base import Serve


def serve(out: str, plan) -> Serve:
    return Serve("vLLM", f"vllm serve {out} --max-model-len {plan.target_ctx}", "shell",
                 "vLLM reads the scaling from `config.json` (`rope_scaling`): no `--hf-overrides` or `--rope-scaling` "
                 f"is needed; `--max-model-len {plan.target_ctx}` opens the extended context.")
