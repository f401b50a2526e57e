"""transformers reloading a safetensors output directory through its own config.json."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

NAME = "transformers"


def load(artifact: Path, device: torch.device):
    from transformers import AutoModelForCausalLM

    import ropeconv.runtime

    model = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32)
    ropeconv.runtime.apply(model)  # ALiBi scaling recorded under ropeconv_alibi_scaling, as a user would load it
    return model.to(device).eval()


@torch.no_grad()
def logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor, decode_steps: int = 0) -> torch.Tensor:
    """[n, vocab]: a prefill of all but the last decode_steps tokens, then one token per call through
    transformers' KV cache."""
    device = next(model.parameters()).device
    ids, positions = input_ids.to(device), position_ids.to(device)
    prefill = ids.shape[1] - decode_steps
    # ALiBi models take no position ids: their bias depends on distances only
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    pos = (lambda a, b: {"position_ids": positions[:, a:b]}) if takes_positions else (lambda a, b: {})
    out = model(input_ids=ids[:, :prefill], use_cache=decode_steps > 0, **pos(0, prefill))
    chunks = [out.logits[0].float().cpu()]
    for i in range(prefill, ids.shape[1]):
        out = model(input_ids=ids[:, i : i + 1], use_cache=True, **pos(i, i + 1), **cache_from(model, out))
        chunks.append(out.logits[0].float().cpu())
    return torch.cat(chunks)


def cache_from(model, out) -> dict:
    """The keyword that hands `out`'s KV cache to the next call: transformers 5.24 renamed past_key_values
    to cache (the old name warns); 4.x knows only the old one."""
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {keyword: getattr(out, "cache", None) or out.past_key_values}


def run_passes(artifact: Path, device: torch.device, ids: torch.Tensor, passes, progress=None) -> list[torch.Tensor]:
    from ropeconv.parity import free
    from ropeconv.parity.probe import run_each

    model = load(artifact, device)
    try:
        return run_each(passes, lambda p: logits(model, ids[:, : p.n_tokens], p.position_ids(), p.decode_steps),
                        progress)
    finally:
        free(model)
