"""GPT-2 (learned position table): llama.cpp's position_embd holds exactly context_length rows; Conv1D layers store
weights [in, out] (what ONNX's MatMul reads; llama.cpp takes nn.Linear's [out, in], so the GGUF transposes them);
fused c_attn as [q | k | v]; scale_attn_weights / scale_attn_by_inverse_layer_idx."""

from ropeconv.families.parts import LAYER_NORM, SHAPE, VOCAB, context, eps, flag, norm, times_hidden
from ropeconv.families.spec import (
    STR,
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
    Value,
)

_H = "transformer.h.{i}."

FAMILY = Family(
    arch=ArchSpec("gpt2", position="absolute", ctx_key="n_positions", table="transformer.wpe.weight"),
    shapes=FamilyShapes(
        "gpt2",
        (("hidden", Dim(("n_embd", "hidden_size"))), ("layers", Dim(("n_layer", "num_hidden_layers"))),
         ("heads", Dim(("n_head", "num_attention_heads"))), ("inter", Dim(("n_inner",), "4*hidden")), VOCAB),
        (
            T("transformer.wte.weight", "vocab, hidden"),
            T("transformer.wpe.weight", "*, hidden"),
            *norm(_H + "ln_1", bias=True),
            # Conv1D stores its weight [in, out]
            T(_H + "attn.c_attn.weight", "hidden, 3*hidden"), T(_H + "attn.c_attn.bias", "3*hidden"),
            T(_H + "attn.c_proj.weight", "hidden, hidden"), T(_H + "attn.c_proj.bias", "hidden"),
            *norm(_H + "ln_2", bias=True),
            T(_H + "mlp.c_fc.weight", "hidden, inter"), T(_H + "mlp.c_fc.bias", "inter"),
            T(_H + "mlp.c_proj.weight", "inter, hidden"), T(_H + "mlp.c_proj.bias", "hidden"),
            *norm("transformer.ln_f", bias=True),
            T("lm_head.weight", "vocab, hidden", UNTIED),
        ),
        (("heads", "hidden"),), tied_default=True, optional_prefix="transformer.",
    ),
    tiny=dict(n_embd=64, n_head=4, n_positions=TINY_CTX),
    gguf=GgufLayout(
        "gpt2", "gpt2",
        SHAPE + (Hparam("feed_forward_length", "u32", lambda c: c.get("n_inner") or times_hidden(4)(c)),)
        + LAYER_NORM,
        ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), conv1d=True, skip=(".attn.bias", ".attn.masked_bias"),
        act_keys=("activation_function",),
    ),
    gguf_arch=GgufArchSpec("gpt2", position="absolute"),
    gguf_checks=(
        lambda c, d: None if c.get("scale_attn_weights", True) else
        "scale_attn_weights false: llama.cpp always scales attention by 1/sqrt(head_dim)",
        lambda c, d: "scale_attn_by_inverse_layer_idx: llama.cpp's gpt2 graph has no per-layer attention scale"
        if c.get("scale_attn_by_inverse_layer_idx") else None,
        lambda c, d: "add_cross_attention: llama.cpp's gpt2 is a decoder only" if c.get("add_cross_attention")
        else None,
    ),
    onnx=OnnxLayout(
        "gpt2", embed="transformer.wte.weight", layer="transformer.h.{i}.", final_norm="transformer.ln_f",
        lm_head="lm_head.weight", norm="layer", attn_norm="ln_1", mlp_norm="ln_2", qkv=("attn.c_attn",),
        qkv_split="fused", o_proj="attn.c_proj", mlp=("mlp.c_fc", "mlp.c_proj"), mlp_kind="plain",
        activation_key="activation_function", eps_key="layer_norm_epsilon", conv1d=True,
        optional_prefix="transformer.",
    ),
    values=(Value("activation_function", STR), eps("layer_norm_epsilon"), context("n_positions"),
            flag("scale_attn_weights"), flag("scale_attn_by_inverse_layer_idx"), flag("add_cross_attention")),
    config_defaults=(("activation_function", "gelu_new"), ("layer_norm_epsilon", 1e-5)),
)
