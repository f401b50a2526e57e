"""Merging LoRA adapters into base tensors, one tensor at a time:

    W' = cast( W + Σ_k s_k · B_k A_k )      computed in float32, cast back to W's dtype once
    (fan_in_fan_out / embeddings: the delta is (B_k A_k)ᵀ),   s_k = α_k / r_k  (or α_k / √r_k, rsLoRA)

A module listed in an adapter's modules_to_save is replaced by the adapter's saved weight (and nothing
else may then adapt it: the two would not compose); a saved base_layer weight replaces W under the LoRA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError
from ropeconv.lora.adapter import Adapter, LoraModule

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LoraMerge:
    adapters: tuple[Adapter, ...]
    deltas: Mapping[str, tuple[tuple[Adapter, LoraModule], ...]]  # base tensor name → the factors adding to it
    replacements: Mapping[str, tuple[Adapter, str]]  # base tensor name → (adapter, key of its saved weight)
    dtypes: Mapping[str, str]  # base tensor name → its stored safetensors dtype (what the merge is cast to)

    def touches(self, name: str) -> bool:
        return name in self.deltas or name in self.replacements

    def apply(self, name: str, base: torch.Tensor) -> torch.Tensor:
        """The merged tensor, in base's dtype; base is returned as is when nothing touches it."""
        from safetensors import safe_open

        if name in self.replacements:
            adapter, key = self.replacements[name]
            with safe_open(adapter.path / "adapter_model.safetensors", "pt") as f:
                base = f.get_tensor(key).to(base.dtype)
        if name not in self.deltas:
            return base
        merged = base.float()
        for adapter, module in self.deltas[name]:
            with safe_open(adapter.path / "adapter_model.safetensors", "pt") as f:
                a, b = f.get_tensor(module.a_key).float(), f.get_tensor(module.b_key).float()
            delta = b @ a
            if module.fan_in_fan_out or module.embedding:
                delta = delta.T
            merged = merged + module.scale * delta  # a new tensor: base's own buffer is never written
        return merged.to(base.dtype)

    def to_json(self) -> list[dict]:
        return [{"path": str(a.path.resolve()), "sha256": a.sha256, "r": a.config.get("r"),
                 "lora_alpha": a.config.get("lora_alpha"), "use_rslora": bool(a.config.get("use_rslora")),
                 "modules": len(a.modules), "modules_to_save": sorted(a.replaced)} for a in self.adapters]


def plan_merge(adapters: Sequence[Adapter], tensors: Sequence[TensorEntry]) -> LoraMerge:
    """Check every adapter against the base's tensor index (names, shapes, ranks); nothing is read."""
    index = {t.name: t for t in tensors}
    deltas: dict[str, list[tuple[Adapter, LoraModule]]] = {}
    replacements: dict[str, tuple[Adapter, str]] = {}
    for adapter in adapters:
        for module in adapter.modules:
            base = index.get(module.weight)
            if base is None:
                raise InputError(f"--lora {adapter.path}: adapts {module.module}, which the base has no weight for "
                                 "(an adapter for another model?)")
            _check_shapes(adapter, module, base)
            deltas.setdefault(module.weight, []).append((adapter, module))
        for name, key in adapter.replaced.items():
            base = index.get(name)
            if base is None:
                raise InputError(f"--lora {adapter.path}: saves {name}, which the base does not have")
            saved = adapter.tensors[key]
            if tuple(saved.shape) != tuple(base.shape):
                raise InputError(f"--lora {adapter.path}: saved {name} is {list(saved.shape)}, the base's is "
                                 f"{list(base.shape)} (an adapter for another model?)")
            if name in replacements:
                raise InputError(f"--lora {adapter.path}: {name} is also saved whole by {replacements[name][0].path}")
            replacements[name] = (adapter, key)
    both = sorted(n for n in set(deltas) & set(replacements) if not replacements[n][1].endswith(".base_layer.weight"))
    if both:
        raise InputError(f"--lora: {both[0]} is replaced whole by one adapter and adapted by another; they do "
                         "not compose")
    floats = ("F32", "F16", "BF16", "F64")
    for name in list(deltas) + list(replacements):
        if index[name].dtype not in floats:
            raise InputError(f"--lora: base tensor {name} is {index[name].dtype}; LoRA merges into float weights")
    return LoraMerge(tuple(adapters), {k: tuple(v) for k, v in deltas.items()}, replacements,
                     {name: index[name].dtype for name in list(deltas) + list(replacements)})


def _check_shapes(adapter: Adapter, module: LoraModule, base: TensorEntry) -> None:
    a, b = adapter.tensors[module.a_key].shape, adapter.tensors[module.b_key].shape
    where = f"--lora {adapter.path}: {module.module}"
    if len(a) != 2 or len(b) != 2 or len(base.shape) != 2:
        raise InputError(f"{where}: LoRA factors and the base weight must be matrices")
    if a[0] != module.rank or b[1] != module.rank:
        raise InputError(f"{where}: factors have rank {a[0]}×{b[1]}, adapter_config.json says r = {module.rank}")
    out_dim, in_dim = (base.shape[1], base.shape[0]) if module.fan_in_fan_out or module.embedding else base.shape
    if (b[0], a[1]) != (out_dim, in_dim):
        hint = " (fan_in_fan_out?)" if (b[0], a[1]) == (in_dim, out_dim) else " (an adapter for another model?)"
        raise InputError(f"{where}: B·A is {b[0]}×{a[1]}, the base weight needs {out_dim}×{in_dim}{hint}")
