"""MPT (ALiBi): LayerNorms built without bias (`norm_1.bias = None`) and every linear without bias whatever
`no_bias` says, fused Wqkv as [q | k | v], optional clamp of it (clip_qkv; llama.cpp's clamp_kqv), erf GELU
(nn.GELU()), a 4·d_model FFN whatever expansion_ratio says, softmax_scale from attn_config. llama.cpp reads
max_alibi_bias from the file (without it, no bias at all)."""

from ropeconv.families.parts import (
    ALIBI,
    LAYER_NORM,
    SHAPE,
    VOCAB,
    attn_config_value,
    context,
    eps,
    flag,
    linear,
    norm,
    times_hidden,
)
from ropeconv.families.spec import (
    TINY_CTX,
    UNTIED,
    ArchSpec,
    Dim,
    Family,
    FamilyShapes,
    GgufArchSpec,
    GgufLayout,
    Hparam,
    OnnxLayout,
    T,
    attn_config,
)

_MPT = "transformer.blocks.{i}."


def _softmax_scale(config, head_dim):
    scale = attn_config("softmax_scale")(config)
    if scale is not None and abs(scale * head_dim ** 0.5 - 1) > 1e-6:
        return f"attn_config.softmax_scale {scale}: llama.cpp scales queries by 1/sqrt(head_dim)"
    return None


def _onnx_bias_tensors(cfg, names):
    biases = sorted(n for n in names if n.endswith(".bias"))
    if biases:
        return (f"bias tensors ({biases[0]}, …; no_bias false): transformers' MPT drops them, so the model is "
                "ambiguous")
    return None


FAMILY = Family(
    arch=ArchSpec("mpt", position="alibi", ctx_key="max_seq_len", alibi_bias_len_key="max_seq_len",
                  note="ALiBi; transformers builds the bias max_seq_len long, so it is raised to the target"),
    shapes=FamilyShapes(
        "mpt",
        (("hidden", Dim(("d_model",))), ("layers", Dim(("n_layers",))), ("heads", Dim(("n_heads",))), VOCAB),
        (
            T("transformer.wte.weight", "vocab, hidden"),
            *norm(_MPT + "norm_1"),
            *linear(_MPT + "attn.Wqkv", "3*hidden", "hidden"),
            *linear(_MPT + "attn.out_proj", "hidden", "hidden"),
            *norm(_MPT + "norm_2"),
            # transformers' MptMLP is 4·d_model wide whatever expansion_ratio says
            *linear(_MPT + "ffn.up_proj", "4*hidden", "hidden"),
            *linear(_MPT + "ffn.down_proj", "hidden", "4*hidden"),
            *norm("transformer.norm_f"),
            T("lm_head.weight", "vocab, hidden", UNTIED),
        ),
        (("heads", "hidden"),), tied_default=True, optional_prefix="transformer.",
    ),
    tiny=dict(d_model=96, n_heads=6, max_seq_len=TINY_CTX, expansion_ratio=2),
    gguf=GgufLayout(
        "mpt", "mpt",
        SHAPE + (
            Hparam("feed_forward_length", "u32", times_hidden(4)),
            Hparam("attention.clamp_kqv", "f32", attn_config("clip_qkv")),
        ) + LAYER_NORM + ALIBI,
        ("gelu",),  # transformers' MPT: exact GELU, whatever the config says
    ),
    gguf_arch=GgufArchSpec("mpt", position="alibi"),
    gguf_checks=(
        _softmax_scale,
        lambda c, d: "attn_config.qk_ln: transformers' MPT ignores it and llama.cpp applies it"
        if attn_config("qk_ln")(c) else None,
        lambda c, d: None if c.get("no_bias", True) else
        "no_bias false: transformers' MPT drops the biases MosaicML's code adds, so the model is ambiguous",
    ),
    onnx=OnnxLayout(
        "mpt", embed="transformer.wte.weight", layer="transformer.blocks.{i}.", final_norm="transformer.norm_f",
        lm_head="lm_head.weight", norm="layer_no_bias", attn_norm="norm_1", mlp_norm="norm_2",
        qkv=("attn.Wqkv",), qkv_split="fused", o_proj="attn.out_proj", mlp=("ffn.up_proj", "ffn.down_proj"),
        mlp_kind="plain", eps_key="layer_norm_epsilon", alibi_keys="cache",
        fixed_activation="gelu_erf", linear_bias=False, optional_prefix="transformer.",
    ),
    onnx_checks=(
        lambda cfg, names: "attn_config.qk_ln: transformers' MPT ignores it while MosaicML's code normalizes q and "
        "k, so the model is ambiguous" if attn_config_value(cfg, "qk_ln") else None,
        lambda cfg, names: "prefix_lm or attn_uses_sequence_id: transformers' MPT ignores them, so the model is "
        "ambiguous" if attn_config_value(cfg, "prefix_lm") or attn_config_value(cfg, "attn_uses_sequence_id")
        else None,
        lambda cfg, names: "logit_scale: transformers' MPT ignores it, so the model is ambiguous"
        if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0) else None,
        _onnx_bias_tensors,
    ),
    values=(eps("layer_norm_epsilon"), context("max_seq_len"), flag("no_bias")),
    config_defaults=(("layer_norm_epsilon", 1e-5),),
)
