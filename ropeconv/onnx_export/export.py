"""HF checkpoint ─► ONNX decoder with KV cache for onnxruntime, the plan's position math baked in.

onnx_export/plan.py decides everything before a byte is written; OnnxExport then takes the checkpoint's tensors
in file order (the same pass that writes safetensors and GGUF), one tensor in memory at a time. Linear weights are
stored transposed ([in, out], what MatMul reads; GPT-2's Conv1D weights already are); a tied output matrix is the
embedding written a second time, transposed. A learned position table is written resampled to the plan's length (the only tensor
whose values change).

--dtype: fp32 (float32 weights and compute); fp16 (float16 weights, activations and KV cache, as deployed on
GPUs; norms, rotary angles and the logits float32); int4 (every MatMul weight as MatMulNBits blocks of 32,
symmetric, quantized one tensor at a time by onnxruntime's own quantizer — the DefaultWeightOnlyQuantizer its
MatMulNBitsQuantizer runs, so the blocks are byte for byte what that tool writes for the float32 model —
with float32 activations and int8 activation compute on CPU, accuracy_level 4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError
from ropeconv.onnx_export.plan import INT4_ACCURACY_LEVEL, INT4_BLOCK_SIZE, InitSpec, OnnxPlan, plan_onnx
from ropeconv.positions import AbsolutePlan, PositionPlan

IR_VERSION = 9  # onnxruntime ≥ 1.16 reads it; opset 18 needs ≥ 8


class OnnxExport:
    """Writes model.onnx (+ model.onnx.data) as tensors stream past; abort() removes what it wrote."""

    def __init__(self, plan: OnnxPlan, model_path: Path) -> None:
        import onnx
        from onnx import helper

        from ropeconv.onnx_export import OPSET
        from ropeconv.onnx_export.decoder import MS_DOMAIN, Weights, build_decoder
        from ropeconv.onnx_export.writer import OnnxFileWriter

        self.plan = plan
        all_specs = [s for specs in plan.specs.values() for s in specs]
        weights = Weights(frozenset(s.name for s in all_specs), frozenset(s.name for s in all_specs if s.half),
                          tuple((s.name, s.shape[0], s.shape[1]) for s in all_specs if s.quant))  # [K, N]
        graph = build_decoder(plan.layout, plan.dims, plan.plan, weights, plan.compute)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        self.header = helper.make_model(graph, opset_imports=opsets, producer_name="ropeconv", ir_version=IR_VERSION)
        onnx.helper.set_model_props(self.header, plan.metadata)
        self.writer = OnnxFileWriter(Path(model_path), self.header, external=plan.external)
        self.written: set[str] = set()
        self._quantizer = _int4_quantizer() if any(s.quant for s in all_specs) else None

    def write(self, entry: TensorEntry, source) -> None:
        specs = self.plan.specs.get(entry.name)
        if not specs:
            return
        import torch
        from onnx import TensorProto

        tensor = source.load(entry)
        for spec in specs:
            matrix = tensor.t() if spec.transpose else tensor
            if spec.resample:
                plan = self.plan.plan
                assert plan.kind == "absolute"  # only an absolute plan's table is resampled
                matrix = _resampled_table(matrix, plan)
            if spec.quant:
                self._write_quantized(spec, matrix)
                continue
            kind, dtype = (TensorProto.FLOAT16, torch.float16) if spec.half else (TensorProto.FLOAT, torch.float32)
            nbytes = matrix.numel() * (2 if spec.half else 4)
            self.writer.add(spec.name, kind, tuple(matrix.shape), nbytes, _rows(entry.name, matrix, dtype))
            self.written.add(spec.name)

    def _write_quantized(self, spec: InitSpec, matrix) -> None:
        """onnxruntime's block quantizer on the float32 [K, N] matrix: packed [N, blocks, 16] uint8 and scales
        [N, blocks] float32, as MatMulNBitsQuantizer stores them (symmetric: no zero points)."""
        import torch
        from onnx import TensorProto

        from ropeconv.onnx_export.decoder import quantized_names

        weight = np.ascontiguousarray(matrix.to(torch.float32).numpy())
        assert self._quantizer is not None  # made in __init__ when any spec is quantized
        packed, scales, _ = self._quantizer.qbits_block_quant(weight)
        for name, kind, array in zip(quantized_names(spec.name), (TensorProto.UINT8, TensorProto.FLOAT),
                                     (packed, scales)):
            self.writer.add(name, kind, tuple(array.shape), array.nbytes, [array])
        self.written.add(spec.name)

    def close(self, check: bool = True) -> list[Path]:
        missing = sorted(s.name for specs in self.plan.specs.values() for s in specs if s.name not in self.written)
        if missing:
            raise InputError(f"tensors {missing[:3]} were never read from the checkpoint")
        paths = self.writer.close()
        if check:
            self.writer.check(self.header)
        return paths

    @property
    def sha256(self) -> dict[str, str]:
        """File name → sha256 of the files written, computed while writing; once closed."""
        return dict(self.writer.sha256)

    def abort(self) -> None:
        self.writer.abort()


def _int4_quantizer():
    """onnxruntime's weight-only quantizer as MatMulNBitsQuantizer(block_size=32, is_symmetric=True,
    accuracy_level=4) configures it."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            DefaultWeightOnlyQuantizer,
        )
    except ImportError:
        raise InputError("--dtype int4 needs onnxruntime's quantizer: pip install 'ropeconv[onnx]'") from None
    return DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(
        block_size=INT4_BLOCK_SIZE, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL))


CHUNK_BYTES = 4 << 20  # per piece of a transposed or converted matrix


def _resampled_table(table, plan: AbsolutePlan):
    """The position table at the plan's length, from the float64 rows ropeconv.positions computes."""
    import torch

    from ropeconv.positions.absolute import resample_table

    return torch.from_numpy(resample_table(table.double().numpy(), plan))


def _rows(name: str, matrix, dtype):
    """The matrix in row blocks, converted to dtype: a transposed or converted copy of a whole tensor is
    never held."""
    import torch

    from ropeconv.export.half import check_half

    if matrix.dim() < 2:
        yield matrix.to(dtype).contiguous().numpy()
        return
    step = max(1, CHUNK_BYTES // max(1, matrix[0].numel() * 4))
    for start in range(0, matrix.shape[0], step):
        block = matrix[start : start + step]
        converted = block.to(dtype).contiguous()
        if dtype == torch.float16:
            check_half(name, block, converted, instead="--dtype fp32")
        yield converted.numpy()


def export_file(base: Path, plan: PositionPlan, dtype: str, dst: Path, lora=None, fused_attention: bool = True) -> Path:
    """A whole export of `base` to one path (the float32 twin that proves a float16 or int4 export strictly)."""
    from dataclasses import replace

    from ropeconv.checkpoint import load_checkpoint

    ckpt = replace(load_checkpoint(base), lora=lora)
    export = OnnxExport(plan_onnx(ckpt, plan, dtype, {}, fused_attention), dst)
    source = ckpt.open_source()
    try:
        for entry in ckpt.tensors:
            export.write(entry, source)
        export.close(check=False)
    except BaseException:
        export.abort()
        raise
    finally:
        source.close()
    return dst
