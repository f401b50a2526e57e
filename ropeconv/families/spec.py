"""What a family record is made of: plain frozen dataclasses, no exporter and no runtime imported.

A family file (ropeconv/families/<model_type>.py) builds one `Family` from these; the readers and the
exporters read the parts through the views in ropeconv/families/__init__.py (ARCHS, SHAPES, GGUF_LAYOUTS,
ONNX_LAYOUTS, …). Everything here is data or a pure function of config.json's values: the GGUF architecture
is gguf-py's name string ("llama"), resolved to gguf-py's enum only by the GGUF exporter, so that commands
touching no tensor (`methods`, `inspect`, `recipe check`) never import gguf or numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ropeconv.errors import InputError

Config = dict[str, Any]

# The tiny random test models' original context (tests/conftest.py's ORIGINAL_CTX): family files name it in
# their tiny configs where the config key is the training length (phi3, bloom, mpt, gpt2).
TINY_CTX = 64


# ------------------------------------------------------------------------------------------ architecture


@dataclass(frozen=True)
class ArchSpec:
    """How a family's config names its position parameters (one per transformers `model_type`)."""

    model_type: str
    position: str = "rope"  # the base position scheme
    theta_key: str = "rope_theta"  # legacy (transformers 4.x) top-level key for the rope base
    partial_key: str | None = "partial_rotary_factor"  # legacy top-level key for the rotated fraction
    default_partial: float = 1.0
    # transformers' modeling rotates part of each head by the rotary fraction (phi3, gpt_neox); the other families'
    # rotate the whole head whatever the config states, so a fraction other than 1 is refused there
    partial_rotary: bool = False
    default_theta: float = 10000.0
    default_head_dim: int | None = None  # when the config omits head_dim and hidden/heads is not it
    # rope types transformers accepts for this family (None: all of them)
    hf_rope_types: frozenset[str] | None = None
    # Phi-3: transformers 4.x demands rope_scaling == {type, short_factor, long_factor} exactly and
    # reads the original length from a top-level original_max_position_embeddings.
    strict_longrope_legacy: bool = False
    # OLMo 2: transformers 4.x's config accepts rope_scaling only as exactly {type, factor}, of these types
    hf4_two_key_types: frozenset[str] | None = None
    # ALiBi and absolute tables: the config key that states the training length (None: the config states
    # none, BLOOM), the position table tensor and the rows in front of position 0
    ctx_key: str | None = "max_position_embeddings"
    table: str | None = None
    table_offset: int = 0
    # ALiBi: the config key transformers builds its bias that many keys long from (MPT's max_seq_len), raised to the
    # target in an extended config
    alibi_bias_len_key: str | None = None
    note: str = ""  # shown under the capability matrix
    # transformers 4.x: the attention implementation that computes what 5.x computes (None: 4.x's default is exact)
    hf4_attention: str | None = None
    # (4.x key, 5.x key): config keys transformers 5 saves under a new name that 4.x reads only under the old one
    legacy_aliases: tuple[tuple[str, str], ...] = ()
    # transformers 5's yarn/longrope read head_dim as getattr(config, "head_dim", hidden/heads), None where the config
    # class defaults it to None (Mixtral): the output states it
    explicit_head_dim: bool = False
    # per-layer-type rope (transformers 5.x rope_parameters keyed by layer type): the one layer type a method
    # scales; every other type keeps its own base, unscaled — (layer type, 4.x config key of its base, default)
    scaled_layer_type: str | None = None
    fixed_layer_bases: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class GgufArchSpec:
    """What the llama.cpp loader of one GGUF architecture reads (from the vendored sources:
    src/models/<arch>.cpp create_tensor calls and llama_model::get_rope_factors)."""

    name: str  # general.architecture
    reads_rope_freqs: bool = False  # rope_freqs.weight: a per-pair divisor, always on
    # rope_factors_long/short: "always" (read whenever present) or "typed" (only with type longrope)
    longrope: str | None = None
    position: str = "rope"  # "alibi": slopes from max_alibi_bias; "absolute": position_embd rows
    # sliding layers rotate at rope.freq_base_swa with scale 1, but YaRN's attn_factor reaches them too
    swa_rope_unscaled: bool = False
    # "module:function" called as f(reader, config) on transformers' config of a GGUF of this architecture, where
    # transformers' GGUF reader leaves out keys llama.cpp's graph reads (a name, not an import: the function lives
    # in a layer above the family records)
    transformers_fixup: str | None = None


# ------------------------------------------------------------------------------------- tensor shapes

ALWAYS, OPTIONAL, UNTIED = "always", "optional", "untied"  # UNTIED: needed unless tie_word_embeddings


@dataclass(frozen=True)
class Dim:
    keys: tuple[str, ...]  # config keys tried in order; the first one present and not null wins
    default: str | None = None  # expression over earlier dims when no key is present (None: the key is needed)


@dataclass(frozen=True)
class T:
    name: str  # "{i}" stands for each layer index, "{e}" for each expert's (the "experts" dim)
    shape: str  # comma-separated expressions
    need: str = ALWAYS
    layers: str = "all"  # mixture-of-experts families: "sparse" or "dense" layers only (FamilyShapes.sparse)


@dataclass(frozen=True)
class FamilyShapes:
    """The dimensions config.json names and the shape every tensor has in terms of them
    (transformers' modeling_<family>.py, nn.Linear weights as [out, in]); checkpoint/shapes.py checks them."""

    model_type: str
    dims: tuple[tuple[str, Dim], ...]  # resolved in order; "layers" is the layer count
    tensors: tuple[T, ...]
    divides: tuple[tuple[str, str], ...] = ()  # (a, b): a must divide b
    tied_default: bool = False  # transformers' tie_word_embeddings default for the family
    optional_prefix: str | None = None  # checkpoints saved from the bare model lack it
    # mixture of experts: (config, layer index, dims) → whether the layer holds experts (None: no experts)
    sparse: Callable[[Mapping[str, Any], int, Mapping[str, int]], bool] | None = None


# ------------------------------------------------------------------------------------------------ GGUF


@dataclass(frozen=True)
class Hparam:
    key: str  # relative to the architecture, e.g. "attention.head_count"
    kind: str  # "u32", "f32" or "bool"
    value: Callable[[Config], Any]  # from config.json; None omits the key
    # (head_dim, rotary_dim, vocab and lengths come from the scheme and plan, not from here)


@dataclass(frozen=True)
class GgufLayout:
    """How a family is laid out in llama.cpp's GGUF: what gguf-py's tensor name map cannot say."""

    model_type: str  # transformers model_type
    arch: str  # GGUF architecture, gguf-py's name ("llama", "gptneox"); its name table gives the tensor names
    hparams: tuple[Hparam, ...]
    activation: tuple[str, ...]  # HF hidden_act values llama.cpp's graph computes for this arch
    permute_qk: bool = False  # llama: interleaved rope pairs
    qkv_per_head: bool = False  # gptneox: fused qkv stored per head in HF
    norm_plus_one: bool = False  # gemma: RMSNorm scale stored as 1 + w
    output_is_embedding: bool = False  # gemma: llama.cpp has no separate output matrix
    always_key_length: bool = False  # gemma: write attention.key/value_length even when default
    # transformers applies a sliding window here and llama.cpp's graph for the arch has none
    no_sliding_window: bool = False
    conv1d: bool = False  # gpt2: Conv1D weights stored [in, out], llama.cpp takes [out, in]
    skip: tuple[str, ...] = ()  # name suffixes of checkpoint buffers the GGUF does not hold
    act_keys: tuple[str, ...] = ("hidden_act", "hidden_activation")  # where config.json names the activation
    experts: bool = False  # mixture of experts: per-expert tensors stacked into ffn_*_exps (gguf_export/experts.py)


# A config switch transformers honours and llama.cpp's graph for the arch does not: (config, head_dim) → the
# reason ("attention_bias: llama.cpp's … has no …"), or None. The exporter says "<family> with <reason>".
GgufCheck = Callable[[Config, int], "str | None"]


# ------------------------------------------------------------------------------------------------ ONNX


@dataclass(frozen=True)
class MoeLayout:
    """A mixture of experts in place of the MLP, as the ONNX graph computes it (onnx_export/moe.py)."""

    router: str  # relative to the layer prefix
    experts: tuple[str, str, str]  # (gate, up, down) with "{e}"
    count_keys: tuple[str, ...]  # config keys of the expert count
    norm_topk_key: str | None  # None: always renormalized (Mixtral)
    shared: tuple[str, str, str] | None = None  # qwen2_moe's shared expert (gate, up, down)
    shared_gate: str | None = None  # its [1, hidden] sigmoid gate
    # which layers hold experts: the family's FamilyShapes.sparse


@dataclass(frozen=True)
class OnnxLayout:
    """How a family computes its forward pass, as switches the ONNX decoder graph reads."""

    model_type: str
    embed: str
    layer: str  # prefix with {i}
    final_norm: str
    lm_head: str
    norm: str  # "rms", "rms_plus_one" (gemma), "layer" (LayerNorm with bias) or "layer_no_bias" (mpt)
    attn_norm: str | None  # None: no norm before attention (olmo2)
    mlp_norm: str | None
    qkv: tuple[str, ...]  # (q, k, v) projections, or one fused projection
    qkv_split: str  # "separate", "fused" ([q | k | v]) or "per_head" ([q_h | k_h | v_h] per head)
    o_proj: str
    mlp: tuple[str, ...]  # (gate, up, down), (gate_up, down) or (up, down)
    mlp_kind: str  # "gated", "gated_fused" or "plain"
    activation_key: str = "hidden_act"
    # q/k RMSNorm before rope: (q norm, k norm), over each head (qwen3, weights [head_dim]) or over the whole
    # projection before it is split into heads (olmo2, weights [heads·head_dim])
    qk_norm: tuple[str, str] | None = None
    qk_norm_per_head: bool = False
    rope_layers_key: str | None = None  # smollm3: config list, 1 where a layer rotates q/k, 0 where it does not
    post_attn_norm: str | None = None  # gemma2 sandwich norms
    post_mlp_norm: str | None = None
    parallel_residual_key: str | None = None  # gpt_neox
    embed_scale: bool = False  # gemma: × sqrt(hidden_size)
    query_scalar_key: str | None = None  # gemma2: scores × query_pre_attn_scalar^-1/2 instead of head_dim^-1/2
    softcaps: bool = False  # gemma2: attn_logit_softcapping / final_logit_softcapping
    sliding_all_layers: bool = False  # mistral/phi3: `sliding_window` applies to every layer when set
    # ALiBi and learned tables ------------------------------------------------------------------
    # ALiBi key positions: "mask" ((cumsum(attention_mask) − 1)·mask, BLOOM) or "cache" (j − (t − 1) over the
    # t keys in view, padding included, MPT); softmax is shift-invariant per row, both give −m·(i − j)
    alibi_keys: str | None = None
    embed_norm: str | None = None  # bloom: word_embeddings_layernorm
    fixed_activation: str | None = None  # a value of onnx_export.layouts.ACTIVATIONS, for MLPs that hard-code theirs
    eps_key: str | None = None  # config key of the norm epsilon; None: torch's LayerNorm default 1e-5 (OPT)
    conv1d: bool = False  # gpt2: weights stored [in, out], read without a transpose
    linear_bias: bool = True  # mpt: transformers builds every linear without bias
    query_prescaled: bool = False  # opt: q_proj(x)·scale, then scores unscaled (its rounding order)
    post_norm_key: str | None = None  # opt: do_layer_norm_before (false: norm after each residual add)
    residual_norm_key: str | None = None  # bloom: apply_residual_connection_post_layernorm
    project: tuple[str, str] | None = None  # opt: (project_in, project_out), when word_embed_proj_dim ≠ hidden
    optional_prefix: str | None = None  # checkpoints saved from the bare model lack it ("transformer.", "model.")
    moe: MoeLayout | None = None  # mixture of experts in place of `mlp` on its sparse layers (onnx_export/moe.py)


# A config switch the ONNX graph does not compute: (config.json as transformers' config class reads it — attributes,
# onnx_export/config.py — and the checkpoint's tensor names) →
# the reason, or None. The exporter says "<family> with <reason>; not exported as ONNX".
OnnxCheck = Callable[[Any, frozenset], "str | None"]


# ---------------------------------------------------------------------------------------- config values

INT, FLOAT, BOOL, STR = "int", "float", "bool", "str"  # Value.kind: transformers 5's strict annotation of the key
INT32_MAX = 2**31 - 1  # llama.cpp's positions and counts are 32-bit, as onnxruntime's int32 inputs
FLOAT32_MAX = 3.4028234663852886e38  # GGUF and ONNX store the value as a float32
# The shortest original context taken: ropeconv's shortest parity probe is 8 tokens (parity/probe.default_tokens), and
# below 2π YaRN's correction range turns negative, which llama.cpp and transformers clamp differently (measured:
# qwen3 max_position_embeddings 1 or 2 published a GGUF off by 2.9 in its own verify, 4 and above exact).
MIN_CONTEXT = 8


@dataclass(frozen=True)
class Value:
    """One config.json key a family reads: the type its transformers config class declares (5.x's strict class refuses
    any other: a float key takes no integer, a bool no 0/1, a count no true) and the range llama.cpp's loader and the
    math need. checkpoint/config_values.py checks every key present when a checkpoint is loaded, before any byte is
    written; a key the config omits takes the class default (Family.config_defaults)."""

    key: str
    kind: str  # INT (not a bool), FLOAT (a JSON number with a fraction or an exponent), BOOL or STR
    least: float | None = None  # the least value taken
    above: float | None = None  # values must exceed this
    most: float | None = None  # the greatest value taken (None: INT32_MAX for INT, FLOAT32_MAX for FLOAT)
    null: bool = False  # null taken (the class's `| None`: it then derives the value or goes without)
    per_layer: bool = False  # a list of `kind`, one item per layer (num_hidden_layers long)
    listed: bool = False  # a list of `kind`, any length
    choices: tuple[str, ...] = ()  # STR: the values taken
    at_most: str | None = None  # a dimension of the family's shapes the value may not exceed ("experts")
    # a bool key (false by the class's default) without which the value is unused: its range is checked only when
    # the key is true (Qwen2-MoE's class saves sliding_window 0 when use_sliding_window is false)
    only_if: str | None = None
    why: str = ""  # what a value out of range would do, said in the refusal

    @property
    def bound_high(self) -> float | None:
        if self.most is not None:
            return self.most
        return INT32_MAX if self.kind == INT else FLOAT32_MAX if self.kind == FLOAT else None


# --------------------------------------------------------------------------------------------- family


@dataclass(frozen=True)
class Family:
    """One architecture family, every part of it: ropeconv/families/<model_type>.py defines FAMILY = Family(...).

    Required: arch, shapes, tiny, and for each of GGUF and ONNX either its layout or the reason there is none.
    """

    arch: ArchSpec  # how config.json declares positions
    shapes: FamilyShapes  # the tensors a checkpoint of the family holds, checked before a byte is read
    # the tiny random model the tests build (over tests/conftest.py make_tiny's defaults: 2 layers, vocab 512,
    # max_position_embeddings TINY_CTX, untied): a new family's parity cells run on it with no test code
    tiny: Mapping[str, Any]
    gguf: GgufLayout | None = None
    no_gguf: str | None = None  # why there is no GGUF, and what to use instead (when gguf is None)
    # llama.cpp's loader for gguf.arch, given by the one family that owns that GGUF architecture (mistral
    # writes llama's, which the llama family defines)
    gguf_arch: GgufArchSpec | None = None
    gguf_checks: tuple[GgufCheck, ...] = ()
    onnx: OnnxLayout | None = None
    no_onnx: str | None = None  # why there is no ONNX export (when onnx is None)
    onnx_checks: tuple[OnnxCheck, ...] = ()
    genai_type: str | None = None  # onnxruntime-genai's model type (None: it has none; no genai_config.json)
    # transformers' config class values (5.x configuration_<model_type>.py) of the keys the exporters read that
    # config.json may omit, as (key, default) pairs, a later pair winning: a value, or a function of the config as
    # transformers reads it (onnx_export/config.py's view) where the class's __post_init__ derives the key from others.
    # tie_word_embeddings is FamilyShapes.tied_default. Read through class_defaults() below.
    config_defaults: tuple[tuple[str, Any], ...] = ()
    # tests: format → the methods the default suite's generated parity matrices run for this family (a format not
    # named: every cell the matrix claims). For families whose tiny model is costly (mixtures of experts evaluate
    # every expert); ROPECONV_ALL_CELLS=1 runs every claimed cell anyway. Refused cells are checked regardless.
    test_methods: Mapping[str, tuple[str, ...]] | None = None
    # tests: norms of its own (q/k, post-norms) initialized away from 1, drawn from this range: (0.5, 1.5) around
    # the 1 a norm computes with; a family whose norms multiply by (1 + w) (gemma3) draws w in (−0.5, 0.5), the same
    # 0.5–1.5 scale. None: the norms keep transformers' initialization
    tiny_norm_range: tuple[float, float] | None = None
    # model types that name this family in another form, each with what to pass instead (refused by name, one line)
    refused_types: Mapping[str, str] = field(default_factory=dict)
    # the config.json keys the family reads besides its dimensions (FamilyShapes.dims: positive integers) and
    # tie_word_embeddings (a bool): each with its type and range (Value); every key of config_defaults is one of them
    values: tuple[Value, ...] = ()

    @property
    def model_type(self) -> str:
        return self.arch.model_type

    @property
    def position(self) -> str:
        return self.arch.position


# ------------------------------------------------------------------------------------------- helpers


def get(name: str, default: Any = None) -> Callable[[Config], Any]:
    """An Hparam value: config.json's `name`, or default."""
    return lambda c: c.get(name, default)


def first(config: Config, keys: tuple[str, ...]) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def attn_config(name: str, default: Any = None) -> Callable[[Config], Any]:
    """MPT's attn_config.<name> in config.json."""
    return lambda c: (c.get("attn_config") or {}).get(name, default)


# ----------------------------------------------------------------------------- per-layer-type rope


def fixed_layer_thetas(config: Mapping[str, Any], arch: ArchSpec) -> dict[str, float]:
    """The layer types a method leaves alone, each with its own rope base (5.x rope_parameters[type].rope_theta,
    else 4.x's key for it, else transformers' default); empty for families with one rope."""
    params = config.get("rope_parameters")
    out = {}
    for layer_type, key, default in arch.fixed_layer_bases:
        own = params.get(layer_type) if isinstance(params, dict) else None
        if isinstance(own, dict) and "rope_theta" in own:  # a stated null is no base: transformers' rope fails
            check_legacy_agrees(config, key, own, "rope_theta", f"rope_parameters.{layer_type}")
            theta = own["rope_theta"]
        else:
            theta = config.get(key, default)
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 1:
            raise InputError(f"config.json: the {layer_type} rope base ({key}) must be a number > 1")
        out[layer_type] = float(theta)
    return out


def check_legacy_agrees(config: Mapping[str, Any], legacy: str | None, rope: Mapping[str, Any], key: str,
                        where: str) -> None:
    """A rope value config.json states twice, under transformers 4.x's top-level key and in 5.x's rope dict, must be
    the same: 4.x reads the first, 5.x the second."""
    if not legacy or key not in rope or config.get(legacy) is None:
        return
    first, second = config[legacy], rope[key]
    if first != second or isinstance(first, bool) != isinstance(second, bool):  # True == 1.0 to Python
        raise InputError(f"config.json: {legacy} {str(first)[:40]} and {where}.{key} {str(second)[:40]} disagree "
                         "(transformers 4.x reads the first, 5.x the second)")


def pattern_layer_types(n_layers: int, pattern: int) -> list[str]:
    """Gemma's layer_types from a pattern: every pattern-th layer full, the others sliding (Gemma 2 derives them with 2,
    Gemma 3 from its older configs' sliding_window_pattern)."""
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]


def layer_thetas(config: Mapping[str, Any], arch: ArchSpec) -> tuple[float | None, ...] | None:
    """Per layer: the unscaled rope base of a layer the method leaves alone, None where the plan applies (None
    overall: the plan applies to every layer)."""
    fixed = fixed_layer_thetas(config, arch)
    types = config.get("layer_types")
    if not fixed:
        return None
    pattern = config.get("sliding_window_pattern", 6)
    if types is None and isinstance(pattern, int) and pattern > 0 and isinstance(config.get("num_hidden_layers"), int):
        # older Gemma 3 configs: transformers derives the layer types from the pattern (every 6th layer full)
        types = pattern_layer_types(config["num_hidden_layers"], pattern)
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InputError(f"config.json: {arch.model_type} needs layer_types, a list of layer type names")
    if len(types) != config.get("num_hidden_layers"):
        raise InputError(f"config.json: {len(types)} layer_types for num_hidden_layers "
                         f"{str(config.get('num_hidden_layers'))[:20]}")
    unknown = set(types) - {arch.scaled_layer_type, *fixed}
    if unknown:
        raise InputError(f"config.json: unknown layer type {sorted(unknown)[0][:40]!r} in layer_types")
    if arch.scaled_layer_type not in types:
        raise InputError(f"config.json: no {arch.scaled_layer_type} layer in layer_types, so a method would act on "
                         "no layer")
    return tuple(fixed.get(t) if t != arch.scaled_layer_type else None for t in types)


def class_defaults(family: Family) -> dict[str, Any]:
    """The family's transformers config class defaults (Family.config_defaults, with tie_word_embeddings)."""
    return dict((("tie_word_embeddings", family.shapes.tied_default),) + family.config_defaults)


def with_class_defaults(config: Mapping[str, Any], family: Family) -> Config:
    """config.json with the class defaults it omits filled in — the plain values only; the keys a class derives are
    the view's (onnx_export/config.py)."""
    return {**{k: v for k, v in class_defaults(family).items() if not callable(v)}, **config}
