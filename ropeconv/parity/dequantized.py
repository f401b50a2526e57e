"""The weights a quantized output actually holds, as tensors of the HF base it was converted from.

A quantized file differs from its base twice: by its weights' rounding (which the quantizer chose, e.g. ~10%
rms per weight for 4-bit blocks — on a 135M model a KL of 0.1–0.7 against the unquantized base) and by how its
runtime computes with them (llama.cpp and onnxruntime round activations to 8 bits for quantized matmuls). The
first is the format's; the second, with the position math, is what a parity check of the file can judge. So the
quantized rows of a report compare the file with transformers running these very weights — decoded from the
file, mapped back to the base's names and layouts — under the plan: what remains is the runtime's rounding
(the quantized gate's limits were measured that way) or a wrong position declaration.

- GGUF converted by ropeconv: every tensor the file holds in another type than F32 is dequantized by gguf-py
  and undone through the conversion's own ops (q/k rows un-permuted, GPT-NeoX's qkv regrouped back, Conv1D
  transposed back); a tied output matrix is the token embedding, as llama.cpp reads it.
- mixtures of experts: a stacked ffn_*_exps tensor is sliced back into its experts; each expert's matrix goes
  into transformers 5's fused expert parameters (gate_up_proj as [gate | up], down_proj) in place.
- ONNX --dtype int4: every MatMulNBits weight is decoded ((q − 8) · scale per block of 32, the symmetric
  layout onnxruntime's quantizer writes) and transposed back; the tied output matrix is untied, since the
  graph quantizes it while the embedding stays float32.
A retrofitted GGUF needs none of this: its reference already loads the base GGUF dequantized.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ropeconv.gguf_export.row_order import unpermute_pairs, unqkv_blocks
from ropeconv.positions import PositionPlan


def tensors_of(artifact: Path, base: Path, plan: PositionPlan) -> Iterator[tuple[str, object, bool]] | None:
    """(base tensor name, float32 torch tensor, also the output matrix) for every quantized tensor of the
    artifact; None when the artifact has no quantized weights of its own to decode."""
    artifact, base = Path(artifact), Path(base)
    if not base.is_dir():
        return None  # a GGUF base: the reference already runs its dequantized weights
    from ropeconv.formats import artifact_format

    return artifact_format(artifact).dequantized(artifact, base, plan)  # gguf_tensors, onnx_int4 below


def gguf_tensors(artifact: Path, base: Path, plan: PositionPlan):
    """The GGUF format's quantized tensors decoded (formats.Format.dequantized)."""
    import os

    import torch

    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.gguf_export.convert import plan_gguf
    from ropeconv.gguf_io.reader import read_gguf
    from ropeconv.gguf_io.types import GGMLQuantizationType
    from ropeconv.parity.f32_twin import _to_f32

    gplan = plan_gguf(load_checkpoint(base), plan, "f32")  # the name map and ops (the outtype plays no part)
    src = read_gguf(artifact)
    held = {t.name: t for t in src.tensors}
    tied_output = "output.weight" not in held
    fd = os.open(artifact, os.O_RDONLY)
    try:
        for tp in gplan.tensors:
            t = held.get(tp.info.name)
            if t is None or t.ggml_type == GGMLQuantizationType.F32 or len(t.shape) < 2:
                continue
            raw = np.frombuffer(os.pread(fd, t.nbytes, t.offset), dtype=np.uint8)
            stored = torch.from_numpy(np.array(_to_f32(raw, t.ggml_type, t.torch_shape)))
            if tp.op == "stack":  # [n_expert, out, in]: each expert under its own checkpoint name
                yield from ((member.name, stored[e], False) for e, member in enumerate(tp.members))
                continue
            yield tp.entry.name, _undo(tp.op, stored, gplan), tied_output and tp.info.name == "token_embd.weight"
    finally:
        os.close(fd)


def _undo(op: str | None, w, gplan):
    """The inverse of convert.GgufConversion._convert's ops."""
    if op == "transpose":
        return w.T.contiguous()
    if op in ("permute_q", "permute_k"):
        return unpermute_pairs(w, gplan.heads if op == "permute_q" else gplan.heads_kv).contiguous()
    if op == "qkv_blocks":
        return unqkv_blocks(w, gplan.heads).contiguous()
    return w


def decode_int4(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """MatMulNBits' symmetric 4-bit blocks → the float32 [K, N] matrix they stand for: packed [N, blocks, 16]
    uint8 (low nibble first), scales [N, blocks], value (q − 8) · scale."""
    q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], packed.shape[1], -1)
    values = (q.astype(np.float32) - 8.0) * scales.reshape(packed.shape[0], packed.shape[1], 1)
    return np.ascontiguousarray(values.reshape(packed.shape[0], -1)[:, :k].T)


def onnx_int4_tensors(artifact: Path, base: Path, plan: PositionPlan):
    """The int4 weights decoded as MatMulNBits reads them (onnx_int4), for an int4 model only."""
    from ropeconv.onnx_export.metadata import read_dtype

    return onnx_int4(artifact, base, plan) if read_dtype(artifact) == "int4" else None


def onnx_int4(artifact: Path, base: Path, plan: PositionPlan):
    import onnx
    import torch
    from onnx import numpy_helper

    from ropeconv.checkpoint import load_checkpoint
    from ropeconv.onnx_export.decoder import quantized_names
    from ropeconv.onnx_export.plan import plan_onnx

    oplan = plan_onnx(load_checkpoint(base), plan, "int4", {})
    inits = {i.name: i for i in onnx.load(artifact).graph.initializer}
    for specs in oplan.specs.values():
        for spec in specs:
            if not spec.quant:
                continue
            packed, scales = (numpy_helper.to_array(inits[n]) for n in quantized_names(spec.name))
            matrix = torch.from_numpy(decode_int4(packed, scales, spec.shape[0]))  # stored [in, out]
            hf = matrix.T.contiguous() if spec.transpose else matrix
            yield spec.name, hf, spec.name == oplan.layout.lm_head


def install(model, tensors) -> int:
    """Put each tensor into the reference model as a fresh parameter (untying what the file does not tie)."""
    import torch
    from torch import nn

    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    prefix = getattr(model, "base_model_prefix", "")
    count = 0
    for name, tensor, output_too in tensors:
        full = name if name in names else f"{prefix}.{name}"
        if full not in names and _install_expert(model, names, name, tensor):
            count += 1
            continue
        if full not in names:
            raise KeyError(f"{name}: no such parameter in {type(model).__name__}")
        module_name, _, attr = full.rpartition(".")
        param = nn.Parameter(tensor.to(torch.float32), requires_grad=False)
        setattr(model.get_submodule(module_name), attr, param)
        if output_too:
            model.get_output_embeddings().weight = param
        count += 1
    return count


# a checkpoint's per-expert projection → (transformers 5's fused parameter, which half of gate_up_proj: 0 gate, 1 up,
# None for down_proj); transformers 5 concatenates [gate | up] per expert (conversion_mapping.py)
_EXPERT = re.compile(r"^(?P<layer>.*)\.(?:block_sparse_moe|mlp)\.experts\.(?P<e>\d+)\."
                     r"(?P<proj>w1|w3|w2|gate_proj|up_proj|down_proj)\.weight$")
_FUSED = {"w1": ("gate_up_proj", 0), "gate_proj": ("gate_up_proj", 0), "w3": ("gate_up_proj", 1),
          "up_proj": ("gate_up_proj", 1), "w2": ("down_proj", None), "down_proj": ("down_proj", None)}


def _install_expert(model, names: set[str], name: str, tensor) -> bool:
    """One expert's matrix written into transformers 5's stacked expert parameter, in place (the reference model
    is this check's own copy); False when the name is no expert's or the model keeps experts apart."""
    import torch

    m = _EXPERT.match(name)
    if not m:
        return False
    fused, half = _FUSED[m["proj"]]
    full = f"{m['layer']}.mlp.experts.{fused}"
    if full not in names:
        return False
    param = model.get_parameter(full)
    rows = param.shape[1] // 2 if half is not None else param.shape[1]
    target = param.data[int(m["e"])]
    if half is not None:
        target = target[half * rows:(half + 1) * rows]
    if tuple(target.shape) != tuple(tensor.shape):
        raise KeyError(f"{name}: {list(tensor.shape)} does not fit {full} ({list(target.shape)} per expert)")
    with torch.no_grad():
        target.copy_(tensor.to(torch.float32))
    return True
