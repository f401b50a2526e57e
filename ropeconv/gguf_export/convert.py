"""HF checkpoint ─► GGUF for llama.cpp, one tensor in memory at a time.

plan_gguf() (plan.py) decides everything from headers (names, shapes, types, byte counts, metadata)
before a byte is written, so the GGUF header is complete up front and tensors stream in the checkpoint's
own order — the same pass that writes the safetensors. A tensor that needs no rewrite and keeps its
dtype is a kernel byte copy; one that is cast or reordered is made in the writer's staging buffer and
appended from there by a kernel copy too (hashing.HashedWriter.stage).

f32, f16, bf16 and q8_0 are written here; every other outtype (q4_k_m, q6_k, iq4_nl, …) is this float
conversion staged beside the output — in the checkpoint's own float type when all its matrices share F16 or
BF16, F32 otherwise, so nothing is rounded twice — and then quantized by llama.cpp itself (quantize.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import RopeconvError
from ropeconv.export.half import check_half
from ropeconv.gguf_export import experts
from ropeconv.gguf_export.plan import (  # noqa: F401  (importers of the converter take the plan's names here too)
    ALL_OUTTYPES,
    FILE_TYPES,
    ITEM_BYTES,
    OUTTYPES,
    SAME_BYTES,
    G,
    GgufPlan,
    TensorPlan,
    gguf_file_name,
    plan_gguf,
)
from ropeconv.gguf_export.row_order import permute_pairs, qkv_blocks, row_blocks
from ropeconv.gguf_io.reader import DEFAULT_ALIGNMENT
from ropeconv.gguf_io.writer import ByteRange, GgufWriter, Staged
from ropeconv.positions import PositionPlan

CAST_CHUNK_BYTES = 1 << 20  # per piece of a streamed dtype conversion: stays in L2/L3
READ_CHUNK_BYTES = 4 << 20  # per read of the numpy path: large sequential reads and writes, few handoffs
ROW_OPS = (None, "permute_q", "permute_k", "qkv_blocks")  # pure row reorders (or none): the numpy path's


def _chunks(blocks: list[tuple[int, int, bool]], max_rows: int):
    """Consecutive groups of blocks of at most max_rows rows (a block of pairs is never split; a longer plain
    block is split into pieces)."""
    group: list[tuple[int, int, bool]] = []
    size = 0
    for start, n, pairs in blocks:
        pieces = [(start, n, True)] if pairs else [(s, min(max_rows, start + n - s), False)
                                                   for s in range(start, start + n, max_rows)]
        for piece in pieces:
            if group and size + piece[1] > max_rows:
                yield group
                group, size = [], 0
            group.append(piece)
            size += piece[1]
    if group:
        yield group


def write_f32_twin(base: Path, plan: PositionPlan, dst: Path, lora=None) -> Path:
    """The same conversion in float32 (LoRA merged alike): what a non-f32 GGUF of `base` is judged against."""
    from ropeconv.checkpoint import load_checkpoint

    ckpt = replace(load_checkpoint(base), lora=lora)
    conversion = GgufConversion(plan_gguf(ckpt, plan, "f32"), dst)
    source = ckpt.open_source()
    try:
        for entry in ckpt.tensors:
            conversion.write(entry, source)
        conversion.close()
    except BaseException:
        conversion.abort()
        raise
    finally:
        source.close()
    return dst


class GgufConversion:
    """write(entry, source) for every checkpoint tensor in order (skipped ones are ignored), then close()."""

    def __init__(self, gplan: GgufPlan, path: Path) -> None:
        if not gplan.tokens:
            raise RopeconvError("internal: a GGUF planned without its vocabulary (a dry run's) cannot be written")
        self.plan = gplan
        self.path = Path(path)
        self._by_name = {t.entry.name: t for t in gplan.tensors}
        self._writer = GgufWriter(self.path, list(gplan.fields), gplan.infos, DEFAULT_ALIGNMENT, hash_data=True)

    @property
    def sha256(self) -> str | None:
        """Of the whole file, once closed."""
        return self._writer.sha256

    def write(self, entry: TensorEntry, source) -> int:
        """Bytes written for this tensor (0 when the GGUF does not hold it)."""
        t = self._by_name.get(entry.name)
        if t is None:
            return 0
        if t.op == "stack":  # each expert as a tensor of its own would be (experts are neither permuted nor +1)
            slice_plan = replace(t, op=None, members=())
            self._writer.write_tensor_chunks(t.info.name, experts.slices(
                t.members, lambda member: self._member_chunks(replace(slice_plan, entry=member), source)))
            return t.info.nbytes
        raw = self._raw(entry, source)
        elementwise = raw and t.op is None and not t.plus_one
        if elementwise and (entry.dtype, t.info.ggml_type) in SAME_BYTES:
            self._writer.write_tensor(t.info.name, ByteRange(entry.file, entry.offset, entry.nbytes))
        elif raw and self._numpy_path(t, source):
            self._writer.write_tensor_chunks(t.info.name, self._numpy_chunks(t, source))
        elif elementwise and t.info.ggml_type in (G.F32, G.F16, G.BF16):
            self._writer.write_tensor_chunks(t.info.name, self._cast_chunks(t, source))
        else:
            self._writer.write_tensor(t.info.name, self._convert(t, source.load(entry)))
        return t.info.nbytes

    def _raw(self, entry: TensorEntry, source) -> bool:
        # raw(): a LoRA-merged tensor is not the byte range its entry points at
        return self.plan.raw_copy_ok and source.raw(entry) and entry.nbytes > 0

    @staticmethod
    def _numpy_path(t: TensorPlan, source) -> bool:
        """numpy on the file's bytes: no torch import, and its casts are the fast ones (numpy_cast)."""
        same = (t.entry.dtype, t.info.ggml_type) in SAME_BYTES
        return t.op in ROW_OPS and hasattr(source, "read_into") and \
            (same and not t.plus_one or t.info.ggml_type in (G.F32, G.F16))

    def _member_chunks(self, t: TensorPlan, source):
        """One expert of a stack, by the numpy path where a tensor of its own would take it, else converted."""
        if self._raw(t.entry, source) and self._numpy_path(t, source):
            yield from self._numpy_chunks(t, source)
        else:
            yield self._convert(t, source.load(t.entry))

    def close(self) -> None:
        for name, values in self.plan.carriers:
            self._writer.write_tensor(name, np.asarray(values, dtype=np.float32))
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()

    def _numpy_chunks(self, t: TensorPlan, source):
        """The tensor in GGUF order and type, in pieces of about READ_CHUNK_BYTES of source, each made in the
        writer's staging buffer (GgufWriter.stage, appended by a kernel copy): read in the file's row blocks,
        reordered as bytes, then cast. The same bytes as _convert writes (a test holds them equal)."""
        entry = t.entry
        rows = entry.shape[0] if entry.shape else 1
        row_bytes = entry.nbytes // rows
        heads = self.plan.heads_kv if t.op == "permute_k" else self.plan.heads
        cast = (entry.dtype, t.info.ggml_type) not in SAME_BYTES or t.plus_one
        widen = ITEM_BYTES[t.info.ggml_type] / ITEM_BYTES[entry.dtype]  # output bytes per source byte
        scratch: dict[str, np.ndarray] = {}  # reused buffers (a fresh one costs a page fault per 4 KiB)

        def buffer(key: str, nbytes: int) -> np.ndarray:
            if scratch.get(key, np.empty(0, np.uint8)).size < nbytes:
                scratch[key] = np.empty(nbytes, np.uint8)
            return scratch[key][:nbytes]

        def read_rows(pieces: list[tuple[int, int, bool]], dst: np.ndarray) -> None:
            at = 0
            for start, n, pairs in pieces:
                rows_dst = dst[at : at + n * row_bytes]
                if pairs:  # row 2i of a head is its HF row i, row 2i+1 its row i + d/2 (row_order.permute_pairs)
                    block = buffer("pairs", n * row_bytes)
                    source.read_into(entry, start * row_bytes, block.data)  # .data: memoryview(block)
                    rows_dst.reshape(n // 2, 2, row_bytes)[:] = block.reshape(2, n // 2, row_bytes).swapaxes(0, 1)
                else:
                    source.read_into(entry, start * row_bytes, rows_dst.data)
                at += n * row_bytes

        for pieces in _chunks(row_blocks(t.op, rows, heads), max(1, READ_CHUNK_BYTES // row_bytes)):
            nbytes = sum(n for _, n, _ in pieces) * row_bytes
            out_nbytes = int(nbytes * widen)
            out = np.frombuffer(self._writer.stage(out_nbytes), np.uint8)
            if not cast:
                read_rows(pieces, out)
            elif len(pieces) == 1 and not pieces[0][2] and hasattr(source, "mapped"):
                # a plain run of rows: cast from the file's own pages, no read into a buffer first
                with source.mapped(entry, pieces[0][0] * row_bytes, nbytes) as view:
                    self._numpy_cast(t, np.frombuffer(view, np.uint8), out)
            else:
                raw = buffer("raw", nbytes)
                read_rows(pieces, raw)
                self._numpy_cast(t, raw, out)
            del out  # no view of the staging buffer outlives its piece
            yield Staged(out_nbytes)

    def _numpy_cast(self, t: TensorPlan, raw: np.ndarray, out: np.ndarray) -> None:
        """raw's elements cast into out, the staging buffer. (Halves cast on two threads were slower, 1.9 s
        against 1.7 s for 1.2 GB on 2 cores: the second core is the hash's.)"""
        from ropeconv.gguf_export import numpy_cast

        dtype, name = t.entry.dtype, t.entry.name
        if t.plus_one:
            x = numpy_cast.to_float32(raw, dtype) + np.float32(1)
            if t.info.ggml_type == G.F32:
                np.copyto(out.view(np.float32), x)
            else:
                numpy_cast.float32_to_float16(x, name, out=out)
        elif t.info.ggml_type == G.F32:
            numpy_cast.to_float32(raw, dtype, out=out)
        else:
            numpy_cast.to_float16(raw, dtype, name, out=out)

    def _cast_chunks(self, t: TensorPlan, source):
        """A dtype-only conversion streamed in cache-sized pieces: no whole-tensor buffers, and the float16
        range check runs on data still in cache."""
        import torch

        from ropeconv.checkpoint.sources import torch_dtypes

        entry = t.entry
        src_dtype = torch_dtypes()[entry.dtype]
        dst_dtype = {G.F32: torch.float32, G.F16: torch.float16, G.BF16: torch.bfloat16}[t.info.ggml_type]
        item = torch.tensor([], dtype=src_dtype).element_size()
        chunk_bytes = CAST_CHUNK_BYTES - CAST_CHUNK_BYTES % item
        buf = memoryview(bytearray(chunk_bytes))
        for start in range(0, entry.nbytes, chunk_bytes):
            view = buf[: min(chunk_bytes, entry.nbytes - start)]
            source.read_into(entry, start, view)
            x = torch.frombuffer(view, dtype=src_dtype)
            y = x.to(dst_dtype)
            if dst_dtype == torch.float16:
                check_half(entry.name, x, y)
            yield y.view(torch.uint8).numpy()

    def _convert(self, t: TensorPlan, tensor) -> np.ndarray:
        import torch

        if t.op == "table":
            from ropeconv.positions.absolute import resample_table

            plan = self.plan.plan
            assert plan is not None and plan.kind == "absolute"  # only an absolute plan has a "table" tensor
            # float64 all the way, rounded once to the output type
            tensor = torch.from_numpy(resample_table(tensor.double().numpy(), plan))
        elif t.op == "transpose":
            tensor = tensor.T.contiguous()
        elif t.op == "permute_q":
            tensor = permute_pairs(tensor, self.plan.heads)
        elif t.op == "permute_k":
            tensor = permute_pairs(tensor, self.plan.heads_kv)
        elif t.op == "qkv_blocks":
            tensor = qkv_blocks(tensor, self.plan.heads)
        if t.plus_one:
            tensor = tensor.float() + 1
        kind = t.info.ggml_type
        if kind == G.F32:
            return tensor.to(torch.float32).numpy()
        if kind == G.BF16:
            return tensor.to(torch.bfloat16).view(torch.int16).numpy()
        if kind == G.F16:
            half = tensor.to(torch.float16)
            check_half(t.entry.name, tensor, half)
            return half.numpy()
        from gguf import GGMLQuantizationType as GgufQuantType
        from gguf.quants import quantize

        return quantize(tensor.to(torch.float32).numpy(), GgufQuantType(kind))  # gguf-py's member of the same code
