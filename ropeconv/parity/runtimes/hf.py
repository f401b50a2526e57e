"""transformers reloading a safetensors output directory through its own config.json."""

from __future__ import annotations

from pathlib import Path

import torch

NAME = "transformers"


def load(artifact: Path, device: torch.device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32).to(device).eval()


@torch.no_grad()
def logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), position_ids=position_ids.to(device), use_cache=False)
    return out.logits[0].float().cpu()


def run_passes(artifact: Path, device: torch.device, ids: torch.Tensor, passes) -> list[torch.Tensor]:
    from ropeconv.parity import free

    model = load(artifact, device)
    try:
        return [logits(model, ids[:, : p.n_tokens], p.position_ids()) for p in passes]
    finally:
        free(model)
