"""HF checkpoint ─► GGUF for llama.cpp, one tensor in memory at a time.

plan_gguf() decides everything from headers (names, shapes, types, byte counts, metadata) before a
byte is written, so the GGUF header is complete up front and tensors stream in the checkpoint's
own order — the same pass that writes the safetensors. A tensor that needs no rewrite and keeps its
dtype is a kernel byte copy.

f32, f16, bf16 and q8_0 are written here; every other outtype (q4_k_m, q6_k, iq4_nl, …) is this float
conversion staged beside the output — in the checkpoint's own float type when all its matrices share F16 or
BF16, F32 otherwise, so nothing is rounded twice — and then quantized by llama.cpp itself (quantize.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, get_tensor_name_map

from ropeconv import methods
from ropeconv.archs import GGUF_ARCHS
from ropeconv.checkpoint import Checkpoint
from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError, RopeconvError, UnsupportedError
from ropeconv.export.half import check_half
from ropeconv.export.table import changes_table, output_entry
from ropeconv.formats import GGUF_ALL_OUTTYPES, GGUF_OUTTYPES
from ropeconv.gguf_export import experts
from ropeconv.gguf_export import quantize as llama_quantize
from ropeconv.gguf_export.row_order import permute_pairs, qkv_blocks, row_blocks
from ropeconv.gguf_export.layouts import (EXPERT_KEYS, HEAD_KEYS, HIDDEN_KEYS, LAYER_KEYS, GgufLayout, check_graph,
                                          first, layout_for, model_arch)
from ropeconv.gguf_export.vocab import general_name, needs_tokens, tokenizer_fields, tokenizer_kind
from ropeconv.gguf_io.reader import DEFAULT_ALIGNMENT, tensor_nbytes
from ropeconv.gguf_io.writer import VALUE_TYPES, ByteRange, GgufWriter, NewField, Staged, TensorInfo
from ropeconv.positions import PositionPlan
from ropeconv.provenance import provenance

G = GGMLQuantizationType
OUTTYPES = dict(zip(GGUF_OUTTYPES, (G.F32, G.F16, G.BF16, G.Q8_0)))  # written by ropeconv
ALL_OUTTYPES = GGUF_ALL_OUTTYPES  # OUTTYPES, then the rest: quantized by llama.cpp
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType
CAST_CHUNK_BYTES = 1 << 20  # per piece of a streamed dtype conversion: stays in L2/L3
READ_CHUNK_BYTES = 4 << 20  # per read of the numpy path: large sequential reads and writes, few handoffs
ROW_OPS = (None, "permute_q", "permute_k", "qkv_blocks")  # pure row reorders (or none): the numpy path's
SAME_BYTES = {("F32", G.F32), ("F16", G.F16), ("BF16", G.BF16)}  # safetensors dtype → GGUF type, no conversion
FLOAT_DTYPES = ("F32", "F16", "BF16")
ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2, G.F32: 4, G.F16: 2, G.BF16: 2}  # per element, source and output


@dataclass(frozen=True)
class TensorPlan:
    entry: TensorEntry
    info: TensorInfo
    op: str | None  # "permute_q", "permute_k", "qkv_blocks", "transpose", "table", "stack" or None
    plus_one: bool
    members: tuple[TensorEntry, ...] = ()  # "stack": the experts stacked into this tensor, in order (experts.py)


@dataclass(frozen=True)
class GgufPlan:
    layout: GgufLayout
    outtype: str
    fields: tuple[NewField, ...]
    tensors: tuple[TensorPlan, ...]  # checkpoint order
    carriers: tuple[tuple[str, np.ndarray], ...]  # F32 tensors appended after the weights
    heads: int
    heads_kv: int
    raw_copy_ok: bool  # safetensors source: untouched tensors can be kernel copies
    plan: PositionPlan | None = None  # "table" tensors are resampled for it
    quantize: str | None = None  # an outtype llama.cpp's quantizer makes of this (staged float) conversion
    imatrix: "llama_quantize.Imatrix | None" = None
    tokens: bool = True  # False: planned without the vocabulary's arrays (a dry run), not to be written

    @property
    def final_outtype(self) -> str:
        return self.quantize or self.outtype

    @property
    def arch_name(self) -> str:
        """general.architecture, e.g. "llama" (mistral's too)."""
        return self.layout.arch

    @property
    def infos(self) -> list[TensorInfo]:
        return [t.info for t in self.tensors] + [TensorInfo.of_array(n, a) for n, a in self.carriers]


def gguf_file_name(ckpt: Checkpoint, outtype: str, name: str | None = None) -> str:
    """<name>-<OUTTYPE>.gguf; the model's name defaults to the base folder's."""
    return f"{name or ckpt.path.resolve().name}-{outtype.upper()}.gguf"


def plan_gguf(ckpt: Checkpoint, plan: PositionPlan, outtype: str, imatrix: Path | None = None,
              name: str | None = None, tokens: bool = True) -> GgufPlan:
    """Everything the GGUF will hold, from headers; raises before any write. An outtype llama.cpp quantizes
    plans the float conversion it starts from (and reads --imatrix). tokens=False (a dry run): the tokenizer is
    checked (its kind and pre-tokenizer) but its token arrays are not read (0.2–0.4 s for a 50k–150k vocabulary),
    and the plan cannot be written."""
    if outtype not in ALL_OUTTYPES:
        raise InputError(f"--outtype {outtype!r}: choose one of {', '.join(ALL_OUTTYPES)}")
    if outtype in OUTTYPES:
        if imatrix is not None:
            raise InputError(f"--imatrix guides llama.cpp's quantizer; --outtype {outtype} is written without it "
                             f"(use a llama.cpp type: {', '.join(llama_quantize.QUANT_TYPES[:6])}, …)")
        return _plan_float(ckpt, plan, outtype, name, tokens)
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise InputError(f"--outtype {outtype} runs llama.cpp's quantizer: pip install 'ropeconv[gguf]'")
    if outtype in llama_quantize.NEEDS_IMATRIX and imatrix is None:
        raise InputError(f"--outtype {outtype}: llama.cpp quantizes it only with an importance matrix; pass "
                         "--imatrix FILE (from llama-imatrix) or choose a k-quant such as q4_k_m")
    staged = _plan_float(ckpt, plan, _staging_type(ckpt), name, tokens)
    matrix = None
    if imatrix is not None:
        matrix = llama_quantize.load_imatrix(imatrix)
        llama_quantize.check_imatrix(matrix, {t.info.name: t.info.shape[0] for t in staged.tensors
                                              if len(t.info.shape) == 2})
    return replace(staged, quantize=outtype, imatrix=matrix)


def _staging_type(ckpt: Checkpoint) -> str:
    """The float type the quantizer starts from: the checkpoint's own when every matrix is F16 (or every one
    BF16), F32 otherwise — llama.cpp converts each to F32 before quantizing, so nothing is rounded twice."""
    dtypes = {e.dtype for e in ckpt.tensors if len(e.shape) >= 2}
    return {frozenset({"F16"}): "f16", frozenset({"BF16"}): "bf16"}.get(frozenset(dtypes), "f32")


def _plan_float(ckpt: Checkpoint, plan: PositionPlan, outtype: str, name: str | None, tokens: bool) -> GgufPlan:
    config, scheme = ckpt.config, ckpt.scheme
    layout = layout_for(ckpt.arch.model_type)
    heads = _positive(config, HEAD_KEYS)
    heads_kv = config.get("num_key_value_heads") or heads
    hidden = _positive(config, HIDDEN_KEYS)
    n_vocab = _positive(config, ("vocab_size",))
    rope = scheme.kind == "rope"  # ALiBi and learned tables: llama.cpp reads no rope key for these archs
    head_dim = scheme.head_dim if rope else hidden // heads
    check_graph(layout, config, head_dim, plan.target_ctx)
    arch_name = layout.arch
    declaration = methods.get(plan.method).gguf_declaration(plan, GGUF_ARCHS[arch_name])

    kv: dict[str, tuple[str, object]] = {"context_length": ("u32", plan.target_ctx)}
    for h in layout.hparams:
        value = h.value(config)
        if value is not None:
            kv[h.key] = (h.kind, value)
    if layout.always_key_length or head_dim != hidden // heads:
        kv["attention.key_length"] = ("u32", head_dim)
        kv["attention.value_length"] = ("u32", head_dim)
    if rope:
        kv["rope.dimension_count"] = ("u32", scheme.rotary_dim)
        kv["rope.freq_base"] = ("f32", scheme.theta)
    kv["vocab_size"] = ("u32", n_vocab)
    kv.update(declaration.kv)

    general = name or ckpt.path.resolve().name
    if tokens or needs_tokens(general):
        vocab = tokenizer_fields(ckpt.path, n_vocab)
    else:
        tokenizer_kind(ckpt.path)
        vocab = []
    fields = [
        NewField("general.architecture", GGUFValueType.STRING, arch_name),
        NewField("general.type", GGUFValueType.STRING, "model"),
        NewField("general.name", GGUFValueType.STRING,
                 general_name(general, name is not None, vocab)),
        NewField("general.file_type", GGUFValueType.UINT32, FILE_TYPES[outtype]),
        NewField("general.quantization_version", GGUFValueType.UINT32, 2),
    ]
    for key, (kind, value) in kv.items():
        value = float(value) if kind == "f32" else int(value) if kind == "u32" else value
        fields.append(NewField(f"{arch_name}.{key}", VALUE_TYPES[kind], value))
    fields += vocab
    fields += [NewField(key, GGUFValueType.STRING, value) for key, value in provenance(plan, ckpt.path).items()]

    tensors = _plan_tensors(ckpt, layout, outtype, plan)
    carriers = tuple((name, np.asarray(values, dtype=np.float32)) for name, values in declaration.tensors.items())
    return GgufPlan(layout, outtype, tuple(fields), tensors, carriers, heads, heads_kv,
                    raw_copy_ok=ckpt.weight_format == "safetensors", plan=plan, tokens=bool(vocab))


def _plan_tensors(ckpt: Checkpoint, layout: GgufLayout, outtype: str, plan: PositionPlan) -> tuple[TensorPlan, ...]:
    config = ckpt.config
    n_blocks = _positive(config, LAYER_KEYS)
    names = get_tensor_name_map(model_arch(layout), n_blocks)
    tied = layout.output_is_embedding or config.get("tie_word_embeddings", False)
    out: list[TensorPlan] = []
    seen: dict[str, str] = {}
    expert_stacks = experts.stacks(ckpt.tensors, _positive(config, EXPERT_KEYS)) if layout.experts else {}
    stacked = experts.member_names(expert_stacks.values())
    for entry in ckpt.tensors:
        stack = expert_stacks.get(entry.name)
        if entry.name in stacked and stack is None:
            continue  # written with the stack, where its first expert comes
        if entry.name.endswith("rotary_emb.inv_freq") or (tied and entry.name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the output matrix is the token embedding
        if entry.name.endswith(layout.skip):
            continue  # transformers' causal-mask buffers (old GPT-2 checkpoints)
        gguf_name = names.get_name(stack.hf_name if stack else entry.name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None and entry.name.startswith("transformer."):
            # gguf-py lists BLOOM's embedding norm without the prefix
            gguf_name = names.get_name(entry.name.removeprefix("transformer."), try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedError(f"tensor {entry.name!r} has no place in llama.cpp's {layout.arch} "
                                   "layout; use --to safetensors")
        if gguf_name in seen:
            raise InputError(f"tensors {seen[gguf_name]!r} and {entry.name!r} both map to GGUF {gguf_name!r}")
        seen[gguf_name] = entry.name
        if entry.dtype not in FLOAT_DTYPES:
            raise UnsupportedError(f"tensor {entry.name!r} is {entry.dtype}; GGUF conversion takes F32, F16 or BF16 "
                                   "weights (dequantize first)")
        op = "stack" if stack else _op(layout, gguf_name, entry, plan)
        if stack:
            shape = experts.stacked_shape(stack)
            out.append(TensorPlan(entry, TensorInfo(gguf_name, shape, _out_type(shape, outtype),
                                                    tensor_nbytes(shape, _out_type(shape, outtype))),
                                  op, False, stack.members))
            continue
        if op == "table" or gguf_name == "position_embd.weight":
            if plan.kind == "absolute" and plan.offset:
                raise UnsupportedError(f"{entry.name}: llama.cpp's position_embd has no rows before position 0 "
                                       f"(offset {plan.offset}); use --to safetensors")
            # the table as the plan has it: exactly context_length rows (llama.cpp checks the shape)
            stored = output_entry(plan, entry).shape
            if len(stored) != 2 or stored[0] != plan.target_ctx:
                raise InputError(f"{entry.name}: {list(stored)} is not a [{plan.target_ctx}, hidden] position "
                                 "table; llama.cpp needs one row per position of context_length")
            shape: tuple[int, ...] = tuple(reversed(stored))
            ggml_type = G.F32  # as llama.cpp's converter: position tables stay F32 at every outtype
        else:
            # a transposed Conv1D [in, out] is nn.Linear's [out, in], i.e. GGUF's {in, out}: the stored order
            shape = (tuple(entry.shape) if op == "transpose" else tuple(reversed(entry.shape))) or (1,)
            ggml_type = _out_type(shape, outtype)
            router = experts.router_shape(gguf_name, shape) if layout.experts else None
            if router:
                shape, ggml_type = router, G.F32
        out.append(TensorPlan(entry, TensorInfo(gguf_name, shape, ggml_type, tensor_nbytes(shape, ggml_type)),
                              op, layout.norm_plus_one and entry.name.endswith("norm.weight")))
    if not any(t.info.name == "token_embd.weight" for t in out):
        raise InputError(f"{ckpt.path}: no token embedding among the tensors")
    return tuple(out)


def _out_type(shape: tuple[int, ...], outtype: str) -> GGMLQuantizationType:
    if len(shape) == 1:
        return G.F32  # norms and biases: tiny, and llama.cpp keeps them in F32
    if outtype == "q8_0" and shape[0] % 32:
        return G.F16  # Q8_0 blocks are 32 wide along a row
    return OUTTYPES[outtype]


CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")  # GPT-2's [in, out] Conv1D weights


def _op(layout: GgufLayout, gguf_name: str, entry: TensorEntry, plan: PositionPlan | None = None) -> str | None:
    if plan is not None and changes_table(plan, entry):
        return "table"
    if layout.conv1d and entry.name.endswith(CONV1D):
        if len(entry.shape) != 2:
            raise InputError(f"{entry.name}: a Conv1D weight must be 2-D, got {list(entry.shape)}")
        return "transpose"
    if layout.permute_qk and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
        return "permute_q" if ".attn_q." in gguf_name else "permute_k"
    if layout.qkv_per_head and ".attn_qkv." in gguf_name:
        return "qkv_blocks"
    return None


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


def _positive(config: dict, keys: tuple[str, ...]) -> int:
    value = first(config, keys)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"config.json: {keys[0]} must be a positive integer, got {value!r}")
    return value


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
        for name, array in self.plan.carriers:
            self._writer.write_tensor(name, array)
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
        scratch = {}  # reused buffers (a fresh one costs a page fault per 4 KiB)

        def buffer(key: str, nbytes: int) -> np.ndarray:
            if scratch.get(key, np.empty(0, np.uint8)).size < nbytes:
                scratch[key] = np.empty(nbytes, np.uint8)
            return scratch[key][:nbytes]

        for pieces in _chunks(row_blocks(t.op, rows, heads), max(1, READ_CHUNK_BYTES // row_bytes)):
            nbytes = sum(n for _, n, _ in pieces) * row_bytes
            out_nbytes = int(nbytes * widen)
            out = np.frombuffer(self._writer.stage(out_nbytes), np.uint8)
            if cast and len(pieces) == 1 and not pieces[0][2] and hasattr(source, "mapped"):
                # a plain run of rows: cast from the file's own pages, no read into a buffer first
                with source.mapped(entry, pieces[0][0] * row_bytes, nbytes) as view:
                    raw = np.frombuffer(view, np.uint8)
                    self._numpy_cast(t, raw, out)
                    del raw
                del out
                yield Staged(out_nbytes)
                continue
            raw = buffer("raw", nbytes) if cast else out
            at = 0
            for start, n, pairs in pieces:
                dst = raw[at : at + n * row_bytes]
                if pairs:  # row 2i of a head is its HF row i, row 2i+1 its row i + d/2 (row_order.permute_pairs)
                    block = buffer("pairs", n * row_bytes)
                    source.read_into(entry, start * row_bytes, memoryview(block))
                    dst.reshape(n // 2, 2, row_bytes)[:] = block.reshape(2, n // 2, row_bytes).swapaxes(0, 1)
                else:
                    source.read_into(entry, start * row_bytes, memoryview(dst))
                at += n * row_bytes
            if cast:
                self._numpy_cast(t, raw, out)
            del out, raw, dst  # no view of the staging buffer outlives its piece
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

            # float64 all the way, rounded once to the output type
            tensor = torch.from_numpy(resample_table(tensor.double().numpy(), self.plan.plan))
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
        from gguf.quants import quantize

        return quantize(tensor.to(torch.float32).numpy(), kind)
