"""Planning an ONNX export: plan_onnx() decides everything from config.json (read as transformers' config class
reads it, onnx_export/config.py) and the safetensors headers before a byte is written — which initializers the graph
reads, from which checkpoint tensor, in what dtype and shape, the decoder's dimensions, the metadata. It imports
neither onnx nor numpy nor transformers, so a dry run is as quick as the others; onnx_export/export.py writes the plan.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from ropeconv.checkpoint import Checkpoint
from ropeconv.checkpoint.rope_config import layer_thetas
from ropeconv.errors import InputError, UnsupportedError
from ropeconv.families import ARCHS, GENAI_TYPES, ONNX_CHECKS, SHAPES
from ropeconv.families.parts import attn_config_value
from ropeconv.families.spec import OnnxLayout
from ropeconv.formats.onnx import DTYPES, MODEL_FILE
from ropeconv.jsontext import printable
from ropeconv.onnx_export.config import config_view
from ropeconv.onnx_export.dims import Compute, DecoderDims, uses_fused_attention
from ropeconv.positions import AbsolutePlan, LengthRule, PositionPlan
from ropeconv.provenance import ATTENTION_KEY, DTYPE_KEY

INT4_BLOCK_SIZE = 32  # onnxruntime-genai's default for int4
INT4_ACCURACY_LEVEL = 4  # MatMulNBits on CPU: int8 activations (onnxruntime-genai's CPU default)
FUSED_ATTENTION = "com.microsoft.GroupQueryAttention (fused, memory linear in the length)"
PLAIN_ATTENTION = "standard operators (MatMul, Softmax: heads × new × total scores per call)"
MAX_INLINE_BYTES = 2**31 - 2**26  # protobuf's 2 GiB limit, less room for the graph itself


@dataclass(frozen=True)
class InitSpec:
    name: str  # initializer name in the graph
    transpose: bool
    half: bool  # stored as float16 (weight matrices with --dtype fp16)
    shape: tuple[int, ...]  # as stored ([in, out] for a linear weight)
    resample: bool = False  # the position table, resampled to the plan's rows (positions.absolute)
    quant: bool = False  # MatMulNBits blocks (a linear weight with --dtype int4)


@dataclass(frozen=True)
class OnnxPlan:
    layout: OnnxLayout
    dims: DecoderDims
    dtype: str
    specs: dict[str, tuple[InitSpec, ...]]  # checkpoint tensor name → initializers made from it
    external: bool  # weights in model.onnx.data (over protobuf's 2 GB limit)
    genai: dict[str, Any] | None  # genai_config.json, where onnxruntime-genai knows the family
    plan: PositionPlan
    metadata: dict[str, str]
    fused_attention: bool = True  # False: plain-operator attention everywhere (comparisons and tests only)

    @property
    def compute(self):
        return compute_of(self.dtype, self.fused_attention)


def _nbytes(spec: InitSpec) -> int:
    if spec.quant:
        k, n = spec.shape
        blocks = -(-k // INT4_BLOCK_SIZE)
        return n * blocks * (INT4_BLOCK_SIZE // 2 + 4)  # packed nibbles + a float32 scale per block
    return math.prod(spec.shape) * (2 if spec.half else 4)


def compute_of(dtype: str, fused_attention: bool = True) -> Compute:
    return Compute(dtype="float16" if dtype == "fp16" else "float32", fused_attention=fused_attention,
                   block_size=INT4_BLOCK_SIZE, accuracy_level=INT4_ACCURACY_LEVEL)


def plan_onnx(ckpt: Checkpoint, plan: PositionPlan, dtype: str, provenance: dict[str, str],
              fused_attention: bool = True) -> OnnxPlan:
    """provenance: the ropeconv.* keys (plan, base, version) for the model's metadata_props."""
    from ropeconv.onnx_export.layouts import onnx_layout_for

    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if importlib.util.find_spec("onnx") is None:  # found, not imported: a dry run plans without it
        raise InputError("writing ONNX needs the onnx package: pip install 'ropeconv[onnx]'") from None
    layout = onnx_layout_for(ckpt.arch.model_type)
    position = ARCHS[layout.model_type].position
    if plan.kind != position:
        raise UnsupportedError(f"a {plan.kind} plan cannot drive {layout.model_type}'s {position} positions")
    layout = _resolve_prefix(layout, {e.name for e in ckpt.tensors})
    cfg = config_view(ckpt, layout)
    try:
        _refuse_variants(layout, cfg, ckpt)
        dims = _dims(layout, cfg, ckpt, plan)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        # a value of the wrong kind (an epsilon "abc", an activation given as a list): what transformers' config class
        # refused to read when the plan read config.json through it
        raise InputError(f"{ckpt.path}/config.json: a value the {layout.model_type} graph reads is of the wrong kind "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from None
    specs = _specs(layout, dims, ckpt, plan, dtype, bool(getattr(cfg, "tie_word_embeddings", False)))
    fused = uses_fused_attention(layout, compute_of(dtype, fused_attention))
    # protobuf strings are UTF-8: a base folder whose name is not is recorded as \xNN escapes (verify then
    # asks for --base)
    metadata = {key: printable(value) for key, value in
                dict(provenance, **{DTYPE_KEY: dtype, ATTENTION_KEY: FUSED_ATTENTION if fused else PLAIN_ATTENTION}).items()}
    payload_bytes = sum(_nbytes(spec) for tensor_specs in specs.values() for spec in tensor_specs)
    external = payload_bytes > MAX_INLINE_BYTES
    return OnnxPlan(layout, dims, dtype, specs, external, _genai_config(ckpt, dims, plan), plan, metadata,
                    fused_attention)


def _resolve_prefix(layout, names: set[str]):
    """The layout's names as this checkpoint spells them: GPT-2, BLOOM and OPT checkpoints saved from the bare
    model (openai-community/gpt2, facebook/opt-*) lack the "transformer." / "model." prefix."""
    prefix = layout.optional_prefix
    if not prefix or layout.embed in names or layout.embed.removeprefix(prefix) not in names:
        return layout
    strip = lambda name: name.removeprefix(prefix)  # noqa: E731
    return dataclasses.replace(
        layout, embed=strip(layout.embed), layer=strip(layout.layer), final_norm=strip(layout.final_norm),
        embed_norm=layout.embed_norm and strip(layout.embed_norm),
        project=layout.project and tuple(strip(n) for n in layout.project),
    )


def _refuse_variants(layout, cfg, ckpt: Checkpoint) -> None:
    """Config switches the graph does not compute (the family file's onnx_checks), each refused with what
    transformers would do instead."""
    names = frozenset(e.name for e in ckpt.tensors)
    for refusal in ONNX_CHECKS.get(layout.model_type, ()):
        reason = refusal(cfg, names)
        if reason:
            raise UnsupportedError(f"{layout.model_type} with {reason}; not exported as ONNX")


def _activation(layout, cfg) -> str:
    from ropeconv.onnx_export.layouts import ACTIVATIONS

    if layout.fixed_activation:
        return layout.fixed_activation
    act = getattr(cfg, layout.activation_key, None)
    if act not in ACTIVATIONS:
        raise UnsupportedError(f"{layout.model_type} with activation {act!r}: the ONNX graph computes "
                               f"{', '.join(sorted(ACTIVATIONS))}; use --to safetensors")
    return ACTIVATIONS[act]


def _attn_scale(layout, cfg, head_dim: int) -> float:
    if layout.query_scalar_key:
        return float(getattr(cfg, layout.query_scalar_key)) ** -0.5
    softmax_scale = attn_config_value(cfg, "softmax_scale")  # mpt
    if softmax_scale is not None:
        return float(softmax_scale)
    if not getattr(cfg, "scale_attn_weights", True):  # gpt2
        return 1.0
    return float(head_dim) ** -0.5


def _dims(layout, cfg, ckpt: Checkpoint, plan: PositionPlan):
    from ropeconv.onnx_export.moe import moe_dims

    act = _activation(layout, cfg)
    heads = int(cfg.num_attention_heads)
    heads_kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    if heads % heads_kv:
        raise InputError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {heads_kv}")
    hidden = int(cfg.hidden_size)
    if plan.kind == "rope":
        assert ckpt.scheme.kind == "rope"  # a rotary plan is made from a rotary scheme
        head_dim = ckpt.scheme.head_dim
    elif hidden % heads:
        raise InputError(f"hidden size {hidden} is not a multiple of the {heads} attention heads")
    else:
        head_dim = hidden // heads
    n_layers = int(cfg.num_hidden_layers)
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if getattr(cfg, "use_sliding_window", True) is False:  # smollm3 keeps sliding_window set when it is off
        windows = (None,) * n_layers
    elif layout.sliding_all_layers:
        windows = (window,) * n_layers
    elif layer_types:
        windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
    else:
        windows = (None,) * n_layers
    if len(windows) != n_layers:
        raise InputError(f"config.json: {len(windows)} layer_types for num_hidden_layers {n_layers}")
    post_norm = layout.post_norm_key is not None and not getattr(cfg, layout.post_norm_key)
    embed_dim = int(getattr(cfg, "word_embed_proj_dim", None) or hidden) if layout.project else hidden
    return DecoderDims(
        n_layers=n_layers,
        hidden=hidden,
        heads=heads,
        heads_kv=heads_kv,
        head_dim=head_dim,
        rotary_dim=plan.rotary_dim if plan.kind == "rope" else 0,
        vocab=int(cfg.vocab_size),
        norm_eps=float(getattr(cfg, layout.eps_key) if layout.eps_key else 1e-5),
        activation=act,
        attn_scale=_attn_scale(layout, cfg, head_dim),
        windows=tuple(int(w) if w else None for w in windows),
        parallel_residual=bool(getattr(cfg, layout.parallel_residual_key)) if layout.parallel_residual_key else False,
        embed_scale=float(cfg.hidden_size) ** 0.5 if layout.embed_scale else None,
        attn_softcap=getattr(cfg, "attn_logit_softcapping", None) if layout.softcaps else None,
        final_softcap=getattr(cfg, "final_logit_softcapping", None) if layout.softcaps else None,
        embed_dim=embed_dim if embed_dim != hidden else None,
        scale_by_layer=bool(getattr(cfg, "scale_attn_by_inverse_layer_idx", False)),  # gpt2
        post_norm=post_norm,
        residual_from_norm=bool(getattr(cfg, layout.residual_norm_key)) if layout.residual_norm_key else False,
        final_norm=not post_norm and not getattr(cfg, "_remove_final_layer_norm", False),
        clip_qkv=float(attn_config_value(cfg, "clip_qkv")) if attn_config_value(cfg, "clip_qkv") else None,
        rope_layers=_per_layer(cfg, layout.rope_layers_key, n_layers) if layout.rope_layers_key else None,
        moe=moe_dims(layout.moe, SHAPES[layout.model_type].sparse, cfg, n_layers) if layout.moe else None,
        layer_thetas=layer_thetas(ckpt.config, ckpt.arch) if plan.kind == "rope" else None,
    )


def _per_layer(cfg, key: str, n_layers: int) -> tuple[bool, ...]:
    values = tuple(bool(x) for x in getattr(cfg, key))
    if len(values) != n_layers:
        raise InputError(f"config.json: {len(values)} {key} for num_hidden_layers {n_layers}")
    return values


def _specs(layout, dims, ckpt: Checkpoint, plan: PositionPlan, dtype: str,
           tied: bool) -> dict[str, tuple[InitSpec, ...]]:
    """Every tensor the graph reads, checked against the checkpoint's headers."""
    from ropeconv.onnx_export.moe import is_sparse
    from ropeconv.onnx_export.moe import tensors as moe_tensors

    entries = {e.name: e for e in ckpt.tensors}
    half, quant = dtype == "fp16", dtype == "int4"
    specs: dict[str, list[InitSpec]] = {}

    def need(name: str, kind: str, optional: bool = False, conv1d: bool = False) -> None:
        entry = entries.get(name)
        if entry is None:
            if optional:
                return
            raise InputError(f"{ckpt.path}: tensor {name!r} is missing (the {layout.model_type} graph needs it)")
        if entry.dtype not in ("F32", "F16", "BF16"):
            raise UnsupportedError(f"tensor {name!r} is {entry.dtype}; the ONNX export reads float weights only")
        shape = tuple(entry.shape)
        if kind in ("linear", "router"):  # a router is a linear weight never quantized (moe.py)
            if len(shape) != 2:
                raise InputError(f"tensor {name!r} has shape {list(shape)}; a linear weight is 2-D")
            stored = shape if conv1d else (shape[1], shape[0])  # Conv1D keeps [in, out], nn.Linear [out, in]
            specs.setdefault(name, []).append(InitSpec(name, not conv1d, half, stored,
                                                       quant=quant and kind == "linear"))
        elif kind == "table":
            assert isinstance(plan, AbsolutePlan)
            if len(shape) != 2 or shape[0] != plan.offset + plan.original_ctx or shape[1] != dims.hidden:
                raise InputError(f"tensor {name!r} has shape {list(shape)}; the plan expects "
                                 f"[{plan.offset + plan.original_ctx}, {dims.hidden}]")
            specs.setdefault(name, []).append(InitSpec(name, False, half, (plan.offset + plan.target_ctx, shape[1]),
                                                       resample=True))
        elif kind == "embed":
            specs.setdefault(name, []).append(InitSpec(name, False, half, shape))
            if tied:
                specs[name].append(InitSpec(layout.lm_head, True, half, (shape[1], shape[0]), quant=quant))
        else:
            specs.setdefault(name, []).append(InitSpec(name, False, False, shape))

    def norm(prefix: str) -> None:
        need(f"{prefix}.weight", "vector")
        if layout.norm == "layer":
            need(f"{prefix}.bias", "vector")

    def linear(prefix: str, conv1d: bool = False) -> None:
        need(f"{prefix}.weight", "linear", conv1d=conv1d)
        if layout.linear_bias:
            need(f"{prefix}.bias", "vector", optional=True)

    need(layout.embed, "embed")
    if plan.kind == "absolute":
        need(plan.table, "table")
    if layout.embed_norm:
        norm(layout.embed_norm)
    if layout.project and dims.embed_dim:
        for n in layout.project:
            linear(n)
    for i in range(dims.n_layers):
        p = layout.layer.format(i=i)
        for n in (layout.attn_norm, layout.mlp_norm, layout.post_attn_norm, layout.post_mlp_norm):
            if n:
                norm(p + n)
        sparse = is_sparse(dims, i)
        for n in layout.qkv + (layout.o_proj,) + (() if sparse else layout.mlp):
            linear(p + n, conv1d=layout.conv1d)
        for name, kind in moe_tensors(layout.moe, dims.moe, p) if sparse else ():
            need(name, kind)
        for n in layout.qk_norm or ():
            need(f"{p}{n}.weight", "vector")
    if dims.final_norm:
        norm(layout.final_norm)
    if not tied:
        need(layout.lm_head, "linear")
    embed = entries[layout.embed]
    width = dims.embed_dim or dims.hidden
    if tuple(embed.shape) != (dims.vocab, width):
        raise InputError(f"tensor {layout.embed!r} has shape {list(embed.shape)}; config says "
                         f"[{dims.vocab}, {width}]")
    return {name: tuple(s) for name, s in specs.items()}


def _genai_config(ckpt: Checkpoint, dims, plan: PositionPlan) -> dict[str, Any] | None:
    kind = GENAI_TYPES.get(ckpt.arch.model_type)
    if kind is None:
        return None
    config = ckpt.config
    eos = config.get("eos_token_id")
    return {
        "model": {
            "bos_token_id": config.get("bos_token_id"),
            "eos_token_id": eos,
            "pad_token_id": config.get("pad_token_id") if config.get("pad_token_id") is not None else
            (eos[0] if isinstance(eos, list) else eos),
            "context_length": plan.target_ctx,
            "type": kind,
            "vocab_size": dims.vocab,
            "decoder": {
                "filename": MODEL_FILE,
                "head_size": dims.head_dim,
                "hidden_size": dims.hidden,
                "num_attention_heads": dims.heads,
                "num_hidden_layers": dims.n_layers,
                "num_key_value_heads": dims.heads_kv,
                "session_options": {"provider_options": []},
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {"max_length": plan.target_ctx, "min_length": 0, "do_sample": False, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "early_stopping": True,
                   "length_penalty": 1.0, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "diversity_penalty": 0.0},
    }


def position_math(plan: PositionPlan) -> str:
    """How the graph computes the plan, for the manifest and the model card."""
    if plan.kind == "alibi":
        if plan.length_rule is LengthRule.PROPORTIONAL:
            return (f"ALiBi: float32 base slope constants divided in the graph by max(1, keys in view / "
                    f"{plan.original_ctx}) at every call (past + new tokens)")
        return f"ALiBi: float32 base slope constants divided by a constant {plan.factor:g}"
    if plan.kind == "absolute":
        kept = f", its {plan.offset} leading rows kept," if plan.offset else ""
        return (f"the learned position table resampled to {plan.target_ctx} positions{kept} read at "
                f"position_ids{f' + {plan.offset}' if plan.offset else ''}")
    factor = f", cos/sin × {plan.attention_factor:.10g}" if plan.attention_factor != 1.0 else ""
    if plan.length_rule is LengthRule.SWITCH:
        return (f"short and long inv_freq constants, the long ones once max(position_ids) + 1 > {plan.original_ctx} "
                f"in the call{factor}")
    if plan.length_rule is LengthRule.DYNAMIC_NTK:
        return (f"dynamic NTK: the base recomputed in the graph from max(position_ids) + 1 at every call (factor "
                f"{plan.factor:g}, original {plan.original_ctx}){factor}")
    return f"a float32 inv_freq constant{factor}"
