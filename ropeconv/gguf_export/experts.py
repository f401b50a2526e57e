"""Mixture-of-experts weights: one HF tensor per expert ─► one stacked GGUF tensor per layer and projection.

HF checkpoints store each expert's projections apart (`…experts.{e}.w1.weight` for Mixtral,
`…experts.{e}.gate_proj.weight` for Qwen2/3-MoE; transformers 5 fuses them in memory and saves them back
apart). llama.cpp reads them stacked: ffn_gate_exps / ffn_up_exps / ffn_down_exps with ne {in, out, n_expert},
i.e. numpy [n_expert, out, in] — expert e's [out, in] matrix is the e-th consecutive slice, so the stack is
written by streaming the experts' converted slices one after another, never holding more than one. Its GGUF
name is gguf-py's own for the stacked HF name (`…experts.w1.weight`, `…experts.gate_proj.weight`), as llama.cpp's
converter stacks them (conversion/llama.py, conversion/qwen.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError

_PER_EXPERT = re.compile(r"^(?P<head>.*\.experts)\.(?P<e>\d+)\.(?P<proj>[A-Za-z0-9_]+)\.weight$")


@dataclass(frozen=True)
class Stack:
    hf_name: str  # the stacked HF name gguf-py's name map knows (…experts.w1.weight)
    members: tuple[TensorEntry, ...]  # expert 0, 1, … in order


def stacks(tensors: Sequence[TensorEntry], n_experts: int) -> dict[str, Stack]:
    """Each stack by the name of its member that comes first in the checkpoint (where the stack is written);
    refuses a stack with an expert missing, doubled or beyond n_experts, or members of different shapes."""
    groups: dict[str, dict[int, TensorEntry]] = {}
    first: dict[str, str] = {}
    for entry in tensors:
        m = _PER_EXPERT.match(entry.name)
        if not m:
            continue
        key = f"{m['head']}.{m['proj']}.weight"
        e = int(m["e"])
        if e >= n_experts:
            raise InputError(f"{entry.name}: expert {e} but the config has {n_experts} experts")
        group = groups.setdefault(key, {})
        if e in group:
            raise InputError(f"{entry.name}: expert {e} appears twice")
        group[e] = entry
        first.setdefault(key, entry.name)
    out: dict[str, Stack] = {}
    for key, group in groups.items():
        missing = [e for e in range(n_experts) if e not in group]
        if missing:
            raise InputError(f"{key.replace('.experts.', f'.experts.{missing[0]}.')} is missing "
                             f"(the config has {n_experts} experts)")
        members = tuple(group[e] for e in range(n_experts))
        if len({(m.dtype, tuple(m.shape)) for m in members}) != 1:
            raise InputError(f"the experts of {key} differ in shape or dtype; llama.cpp stacks them as one tensor")
        out[first[key]] = Stack(key, members)
    return out


def member_names(all_stacks: Iterable[Stack]) -> frozenset[str]:
    return frozenset(m.name for s in all_stacks for m in s.members)


def stacked_shape(stack: Stack) -> tuple[int, ...]:
    """GGUF order (ne): {in, out, n_expert}."""
    return tuple(reversed(stack.members[0].shape)) + (len(stack.members),)


def slices(members: Sequence[TensorEntry], convert: Callable[[TensorEntry], Iterable[object]]) -> Iterator[object]:
    """The stack's bytes: each expert's pieces (convert(expert)), in expert order."""
    for entry in members:
        yield from convert(entry)


def router_shape(gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Routers stay float32 at every outtype, as llama.cpp's converter and quantizer keep them (a rounded router
    picks other experts); the shared expert's [1, hidden] gate is written as the vector llama.cpp's qwen2moe loads
    ({n_embd}) and transformers' GGUF reader expects. The GGUF shape of a router, or None for other tensors."""
    if gguf_name.endswith("ffn_gate_inp_shexp.weight"):
        return tuple(d for d in shape if d != 1) or (1,)
    if gguf_name.endswith("ffn_gate_inp.weight"):
        return shape
    return None
