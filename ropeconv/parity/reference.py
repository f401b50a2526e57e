"""The reference: base weights in transformers, rotary embedding computed from our RopePlan.

Each model's rotary module is replaced by one that evaluates the plan (ropeconv.positions), so the
reference does not depend on how any config declares the method: parity then proves that the
artifact's own declaration makes its runtime compute exactly the plan.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ropeconv.positions import RopePlan, attention_factor_at, inv_freq_at


class PlanRotaryEmbedding(nn.Module):
    """Drop-in for transformers' *RotaryEmbedding: forward(x, position_ids) -> (cos, sin)."""

    def __init__(self, plan: RopePlan):
        super().__init__()
        self.plan = plan

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args, **kwargs):
        seq_len = int(position_ids.max()) + 1
        inv_freq = torch.tensor(inv_freq_at(self.plan, seq_len), dtype=torch.float32, device=x.device)
        scale = attention_factor_at(self.plan, seq_len)
        # float32, as transformers computes the angles; the plan's values are its correctly rounded inputs
        freqs = position_ids[:, :, None].to(torch.float32) * inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)


def install_plan_rotary(model: nn.Module, plan: RopePlan) -> int:
    """Replace every rotary module; returns how many were replaced."""
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child).__name__.endswith("RotaryEmbedding")
    ]
    for parent, name in targets:
        setattr(parent, name, PlanRotaryEmbedding(plan))
    return len(targets)


def load_reference(base: Path, plan: RopePlan, device: torch.device) -> nn.Module:
    """`base` is a HF directory or a GGUF file, which transformers dequantizes to float32."""
    from transformers import AutoModelForCausalLM

    base = Path(base)
    if base.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(base.parent, gguf_file=base.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if install_plan_rotary(model, plan) == 0:
        raise RuntimeError(f"{type(model).__name__} has no *RotaryEmbedding module to replace")
    return model.to(device).eval()
