"""What a GGUF conversion will write, decided from headers before a byte is written: names, shapes, types and
byte counts of every tensor, and every metadata key (plan_gguf). The writer is convert.py's GgufConversion.

Planning imports neither numpy nor gguf-py (gguf-py's tensor-name map is loaded on its own, gguf_io.tables), so a
dry run or `inspect` of what would be written costs the header reads alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ropeconv import methods
from ropeconv.checkpoint import Checkpoint
from ropeconv.checkpoint.config_values import check_values
from ropeconv.checkpoint.safetensors_header import TensorEntry
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.export.table import changes_table, output_entry
from ropeconv.families import FAMILIES
from ropeconv.families.lookup import GGUF_ARCHS
from ropeconv.families.spec import with_class_defaults
from ropeconv.formats.gguf import ALL_OUTTYPES as GGUF_ALL_OUTTYPES
from ropeconv.formats.gguf import OUTTYPES as GGUF_OUTTYPES
from ropeconv.formats.gguf import QUANT_TYPES as GGUF_QUANT_TYPES
from ropeconv.gguf_export import experts
from ropeconv.gguf_export.layouts import (
    EXPERT_KEYS,
    HEAD_KEYS,
    HIDDEN_KEYS,
    LAYER_KEYS,
    GgufLayout,
    check_graph,
    first,
    layout_for,
    model_arch,
)
from ropeconv.gguf_export.vocab import general_name, needs_tokens, tokenizer_fields, tokenizer_kind
from ropeconv.gguf_io import tables
from ropeconv.gguf_io.fields import NewField, TensorInfo
from ropeconv.gguf_io.reader import tensor_nbytes
from ropeconv.gguf_io.types import VALUE_TYPES, GGMLQuantizationType, GGUFValueType
from ropeconv.hub.base import cache_snapshot
from ropeconv.positions import PositionPlan
from ropeconv.provenance import provenance

if TYPE_CHECKING:
    from ropeconv.gguf_export import quantize as llama_quantize

G = GGMLQuantizationType
OUTTYPES = dict(zip(GGUF_OUTTYPES, (G.F32, G.F16, G.BF16, G.Q8_0)))  # written by ropeconv
ALL_OUTTYPES = GGUF_ALL_OUTTYPES  # OUTTYPES, then the rest: quantized by llama.cpp
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType
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
    carriers: tuple[tuple[str, tuple[float, ...]], ...]  # 1-D F32 tensors appended after the weights
    heads: int
    heads_kv: int
    raw_copy_ok: bool  # safetensors source: untouched tensors can be kernel copies
    plan: PositionPlan | None = None  # "table" tensors are resampled for it
    quantize: str | None = None  # an outtype llama.cpp's quantizer makes of this (staged float) conversion
    imatrix: llama_quantize.Imatrix | None = None
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
        return [t.info for t in self.tensors] + [TensorInfo(n, (len(v),), G.F32, 4 * len(v)) for n, v in self.carriers]


def model_name(ckpt: Checkpoint, name: str | None = None) -> str:
    """The model's name (general.name, the file's): --name, else the base folder's (for a snapshot in
    huggingface_hub's cache, the repo's: its folder is named by a commit)."""
    if name:
        return name
    snapshot = cache_snapshot(ckpt.path)
    return snapshot.name if snapshot is not None and not snapshot.inside else ckpt.path.resolve().name


def gguf_file_name(ckpt: Checkpoint, outtype: str, name: str | None = None) -> str:
    """<name>-<OUTTYPE>.gguf."""
    return f"{model_name(ckpt, name)}-{outtype.upper()}.gguf"


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
                             f"(use a llama.cpp type: {', '.join(GGUF_QUANT_TYPES[:6])}, …)")
        return _plan_float(ckpt, plan, outtype, name, tokens)
    import importlib.util

    from ropeconv.gguf_export import quantize as llama_quantize

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
    # as transformers reads it: a key config.json omits takes the family's class default (Mixtral's norm epsilon
    # 1e-5, Mistral's 4096-token window), not the GGUF layout's fallback
    config, scheme = with_class_defaults(ckpt.config, FAMILIES[ckpt.arch.model_type]), ckpt.scheme
    check_values(ckpt.config, FAMILIES[ckpt.arch.model_type], defaults=True)  # the defaults it writes, in range
    layout = layout_for(ckpt.arch.model_type)
    heads = _positive(config, HEAD_KEYS)
    heads_kv = config.get("num_key_value_heads") or heads
    hidden = _positive(config, HIDDEN_KEYS)
    n_vocab = _positive(config, ("vocab_size",))
    # ALiBi and learned tables: llama.cpp reads no rope key for these archs
    head_dim = scheme.head_dim if scheme.kind == "rope" else hidden // heads
    check_graph(layout, config, head_dim, plan.target_ctx)
    arch_name = layout.arch
    declaration = methods.get(plan.method).gguf_declaration(plan, GGUF_ARCHS[arch_name])

    kv: dict[str, tuple[str, Any]] = {"context_length": ("u32", plan.target_ctx)}
    for h in layout.hparams:
        value = h.value(config)
        if value is not None:
            kv[h.key] = (h.kind, value)
    if layout.always_key_length or head_dim != hidden // heads:
        kv["attention.key_length"] = ("u32", head_dim)
        kv["attention.value_length"] = ("u32", head_dim)
    if scheme.kind == "rope":
        kv["rope.dimension_count"] = ("u32", scheme.rotary_dim)
        kv["rope.freq_base"] = ("f32", scheme.theta)
    kv["vocab_size"] = ("u32", n_vocab)
    kv.update(declaration.kv)

    general = model_name(ckpt, name)
    if tokens or needs_tokens(general):
        vocab = tokenizer_fields(ckpt.tokenizer, n_vocab)
    else:
        tokenizer_kind(ckpt.tokenizer_outline)
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

    tensors = _plan_tensors(ckpt, config, layout, outtype, plan)
    carriers = tuple((name, tuple(float(v) for v in values)) for name, values in declaration.tensors.items())
    return GgufPlan(layout, outtype, tuple(fields), tensors, carriers, heads, heads_kv,
                    raw_copy_ok=ckpt.weight_format == "safetensors", plan=plan, tokens=bool(vocab))


def _plan_tensors(ckpt: Checkpoint, config, layout: GgufLayout, outtype: str,
                  plan: PositionPlan) -> tuple[TensorPlan, ...]:
    """config: with the family's class defaults, as _plan_float reads it."""
    n_blocks = _positive(config, LAYER_KEYS)
    names = tables.tensor_mapping().get_tensor_name_map(model_arch(layout), n_blocks)
    tied = layout.output_is_embedding or config["tie_word_embeddings"]
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
            shape: tuple[int, ...] = experts.stacked_shape(stack)
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
            shape = tuple(reversed(stored))
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


def _positive(config: dict, keys: tuple[str, ...]) -> int:
    value = first(config, keys)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"config.json: {keys[0]} must be a positive integer, got {value!r}")
    return value
