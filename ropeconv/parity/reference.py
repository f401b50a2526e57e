"""The reference: base weights in transformers, position math computed from our plan.

RoPE: each rotary module is replaced by one that evaluates the plan. ALiBi: every block's bias is
divided by the plan's scale. Absolute: the position table is replaced by the plan's resampled one.
All of it from ropeconv.positions, so the reference does not depend on how any config declares the
method: parity then proves that the artifact's own declaration makes its runtime compute the plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ropeconv.positions import AbsolutePlan, AlibiPlan, PositionPlan, RopePlan, attention_factor_at, inv_freq_at

if TYPE_CHECKING:
    from ropeconv.device.placement import Placement


class PlanRotaryEmbedding(nn.Module):
    """Drop-in for transformers' *RotaryEmbedding: forward(x, position_ids) -> (cos, sin)."""

    def __init__(self, plan: RopePlan, own: nn.Module | None = None, keep: frozenset[str] = frozenset()):
        super().__init__()
        self.plan = plan
        # per-layer-type rope (gemma3): layer types the method leaves alone keep the base model's own rotation
        self.own, self.keep = own, keep

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args, **kwargs):
        layer_type = args[0] if args else kwargs.get("layer_type")
        if layer_type in self.keep:
            assert self.own is not None  # keep is given only with the base's own rotation
            return self.own(x, position_ids, layer_type)
        # a placed model (accelerate) may hand the ids on another device than its hidden states
        position_ids = position_ids.to(x.device)
        seq_len = int(position_ids.max()) + 1
        inv_freq = torch.tensor(inv_freq_at(self.plan, seq_len), dtype=torch.float32, device=x.device)
        scale = attention_factor_at(self.plan, seq_len)
        # float32, as transformers computes the angles; the plan's values are its correctly rounded inputs
        freqs = position_ids[:, :, None].to(torch.float32) * inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)


def install_plan_rotary(model: nn.Module, plan: RopePlan) -> int:
    """Replace every rotary module; returns how many were replaced. Installing again (another plan on the same
    model, as search does per candidate) swaps the plan: a PlanRotaryEmbedding is never wrapped, nor is the base
    rotation it keeps (gemma3's sliding layers), which wrapping anew would nest once per call."""
    targets = [
        (parent, name)
        for parent in model.modules()
        if not isinstance(parent, PlanRotaryEmbedding)
        for name, child in parent.named_children()
        if type(child).__name__.endswith("RotaryEmbedding")
    ]
    keep = _kept_layer_types(model)
    for parent, name in targets:
        own = getattr(parent, name)
        if isinstance(own, PlanRotaryEmbedding):
            own = own.own
        setattr(parent, name, PlanRotaryEmbedding(plan, own if keep else None, keep))
    return len(targets)


def _kept_layer_types(model: nn.Module) -> frozenset[str]:
    """The layer types the family's method does not scale (archs.ArchSpec.scaled_layer_type)."""
    from ropeconv.families.lookup import ARCHS

    config = getattr(model, "config", None)
    arch = ARCHS.get(getattr(config, "model_type", ""))
    if arch is None or not arch.scaled_layer_type:
        return frozenset()
    return frozenset(t for t in (getattr(config, "layer_types", None) or ()) if t != arch.scaled_layer_type)


def install_plan_alibi(model: nn.Module, plan: AlibiPlan) -> int:
    from ropeconv.alibi_patch import install_alibi_scaling
    from ropeconv.positions.alibi import alibi_scale_at

    config: Any = model.config  # transformers' PretrainedConfig
    if hasattr(config, "max_seq_len"):  # MPT builds its bias max_seq_len long
        config.max_seq_len = max(config.max_seq_len, plan.target_ctx)
    return install_alibi_scaling(model, lambda kv_len: alibi_scale_at(plan, kv_len))


def install_plan_table(model: nn.Module, plan: AbsolutePlan) -> int:
    from ropeconv.positions.absolute import resample_table

    suffix = plan.table.split(".")[-2]  # "wpe" / "embed_positions"
    table = next((m for name, m in model.named_modules() if name.split(".")[-1] == suffix), None)
    if table is None:
        raise RuntimeError(f"{type(model).__name__} has no position table {suffix}")
    if table.weight.is_meta:
        from ropeconv.errors import InputError

        raise InputError(f"the position table {plan.table} was offloaded under --max-memory; give the first device "
                         "room for the embeddings")
    rows = torch.from_numpy(resample_table(table.weight.detach().double().cpu().numpy(), plan))
    table.weight = nn.Parameter(rows.to(table.weight.device, table.weight.dtype), requires_grad=False)
    table.num_embeddings = rows.shape[0]
    return 1


def merge_into(model: nn.Module, lora) -> int:
    """The LoRA merge exporters stream, applied to the loaded reference's weights: same code, and rounded to the
    checkpoint's own dtype as the exporters store it."""
    from ropeconv.checkpoint.sources import torch_dtypes
    from ropeconv.device.placement import offloaded_names

    state = model.state_dict()
    names = [n for n in state if lora.touches(n)]
    away = offloaded_names(model).intersection(names)
    if away:
        from ropeconv.errors import InputError

        raise InputError(f"merging a LoRA into weights offloaded under --max-memory is not supported ({len(away)} "
                         "of them, e.g. " + sorted(away)[0] + "); give the reference room for the whole model")
    with torch.no_grad():
        for name in names:
            stored = state[name].to(torch_dtypes()[lora.dtypes[name]])  # exact: the float32 was cast from it
            state[name].copy_(lora.apply(name, stored))
    return len(names)


def load_reference(base: Path, plan: PositionPlan, device: torch.device, lora=None, weights=None,
                   placement: Placement | None = None, scratch: Path | None = None,
                   progress=lambda _: None) -> nn.Module:
    """`base` is a HF directory or a GGUF file, which transformers dequantizes to float32. The model is placed by
    ropeconv.device.placement (GPUs, then CPU, then disk under the placement's caps; disk offload in `scratch`).
    weights: (name, tensor, also the output matrix) to put in place of the base's (a quantized output's own,
    parity.dequantized)."""
    from ropeconv.device.placement import load_placed

    model = load_placed(Path(base), device, placement, scratch, progress)
    if lora is not None:
        merge_into(model, lora)
    if weights is not None:
        from ropeconv.parity.dequantized import install

        install(model, weights)
    if plan.kind == "alibi":
        install_plan_alibi(model, plan)
    elif plan.kind == "absolute":
        install_plan_table(model, plan)
    elif install_plan_rotary(model, plan) == 0:
        raise RuntimeError(f"{type(model).__name__} has no *RotaryEmbedding module to replace")
    return model.eval()
