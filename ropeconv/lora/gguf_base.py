"""LoRA merged into a GGUF base while it is rewritten: adapter modules (HF names) found through gguf-py's
own name map, float tensors (F32/F16/BF16) merged one at a time, quantized ones refused.

llama.cpp's llama architecture stores q/k rows permuted within each head (interleaved rope pairs), so
such a tensor is un-permuted, merged in transformers' layout, and permuted back (both exact reorders).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from gguf import get_tensor_name_map

from ropeconv.checkpoint.finite import refuse_non_finite
from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.gguf_export.layouts import LAYOUTS, arch_by_name
from ropeconv.gguf_export.row_order import permute_pairs, unpermute_pairs
from ropeconv.gguf_io.reader import GgufFile, GgufTensor
from ropeconv.gguf_io.types import GGMLQuantizationType
from ropeconv.lora.adapter import Adapter
from ropeconv.lora.merge import LoraMerge, plan_merge

G = GGMLQuantizationType
FLOAT_TYPES = {G.F32: "F32", G.F16: "F16", G.BF16: "BF16"}
# GGUF architectures whose q/k rows llama.cpp's converter permutes (llama), whose fused qkv it regroups (gptneox)
PERMUTED_QK = frozenset(layout.arch for layout in LAYOUTS.values() if layout.permute_qk)
REGROUPED_QKV = frozenset(layout.arch for layout in LAYOUTS.values() if layout.qkv_per_head)


@dataclass(frozen=True)
class GgufLora:
    merge: LoraMerge  # keyed by transformers' names, as the reference model knows them
    targets: Mapping[str, str]  # GGUF tensor name → transformers weight name
    heads: Mapping[str, int]  # GGUF tensor name → heads of its row permutation (llama q/k)

    def transforms(self) -> dict[str, Callable[[GgufTensor], np.ndarray]]:
        return {name: self._merged for name in self.targets}

    def _merged(self, t: GgufTensor) -> np.ndarray:
        import os

        import torch

        dtype = {G.F32: torch.float32, G.F16: torch.float16, G.BF16: torch.bfloat16}[t.ggml_type]
        fd = os.open(t.file, os.O_RDONLY)
        try:
            raw = bytearray(os.pread(fd, t.nbytes, t.offset))
        finally:
            os.close(fd)
        w = torch.frombuffer(raw, dtype=dtype).reshape(t.torch_shape)
        heads = self.heads.get(t.name)
        if heads:
            w = unpermute_pairs(w, heads)
        merged = self.merge.apply(self.targets[t.name], w)
        if heads:
            merged = permute_pairs(merged, heads)
        data = merged.contiguous().view(torch.uint8).numpy()
        refuse_non_finite(data.reshape(-1), FLOAT_TYPES[t.ggml_type], tuple(merged.shape),
                          f"{t.file}: tensor {t.name!r} (with the LoRA merged)")
        return data


def plan_gguf_lora(src: GgufFile, adapters: Sequence[Adapter]) -> GgufLora:
    a = src.arch
    arch = arch_by_name(a) if isinstance(a, str) else None
    blocks = src.value(f"{a}.block_count")
    if arch is None or not isinstance(blocks, int):
        raise InputError(f"{src.path}: cannot map LoRA modules onto a {a} GGUF (no architecture or block_count)")
    names = get_tensor_name_map(arch, blocks)
    heads_q = src.value(f"{a}.attention.head_count")
    heads_kv = src.value(f"{a}.attention.head_count_kv") or heads_q
    targets: dict[str, str] = {}
    entries: list[TensorEntry] = []
    heads: dict[str, int] = {}
    wanted = {m.weight for ad in adapters for m in ad.modules} | {n for ad in adapters for n in ad.replaced}
    for hf_name in sorted(wanted):
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        t = src.tensor(gguf_name) if gguf_name else None
        if t is None:
            raise InputError(f"--lora: {hf_name} has no tensor in this {a} GGUF (an adapter for another model?)")
        if t.ggml_type not in FLOAT_TYPES:
            raise UnsupportedError(f"--lora: {t.name} is {t.ggml_type.name}; LoRA merges into F32/F16/BF16 GGUF "
                                   "tensors only (a quantized base cannot take an exact merge): use an unquantized "
                                   "GGUF or the HF checkpoint")
        if ".attn_qkv." in t.name and a in REGROUPED_QKV:
            raise UnsupportedError(f"--lora: {t.name} is stored regrouped by llama.cpp's {a} converter; merge "
                                   "into the HF checkpoint instead")
        if a in PERMUTED_QK and (".attn_q." in t.name or ".attn_k." in t.name):
            heads[t.name] = heads_q if ".attn_q." in t.name else heads_kv
        targets[t.name] = hf_name
        entries.append(TensorEntry(hf_name, FLOAT_TYPES[t.ggml_type], t.torch_shape, t.file, t.offset, t.nbytes))
    return GgufLora(plan_merge(adapters, entries), targets, heads)
