"""OPT (learned position table with 2 unused rows in front): queries scaled right after q_proj, pre-norm blocks
unless do_layer_norm_before is false (350m: norms after each residual add, no final norm), project_in/out when
word_embed_proj_dim ≠ hidden_size, LayerNorm eps fixed at torch's 1e-5, ReLU FFN. llama.cpp has no graph for it."""

from ropeconv.families.parts import STANDARD_DIMS, VOCAB, context, flag, linear, norm
from ropeconv.families.spec import OPTIONAL, STR, UNTIED, ArchSpec, Dim, Family, FamilyShapes, OnnxLayout, T, Value

_OPT = "model.decoder.layers.{i}."

FAMILY = Family(
    arch=ArchSpec("opt", position="absolute", table="model.decoder.embed_positions.weight", table_offset=2,
                  note="position table with 2 unused rows in front (kept as they are)"),
    shapes=FamilyShapes(
        "opt",
        (*STANDARD_DIMS, ("inter", Dim(("ffn_dim",))),
         ("proj", Dim(("word_embed_proj_dim",), "hidden")), VOCAB),
        (
            T("model.decoder.embed_tokens.weight", "vocab, proj"),
            T("model.decoder.embed_positions.weight", "*, hidden"),
            T("model.decoder.project_in.weight", "hidden, proj", OPTIONAL),  # when proj ≠ hidden
            T("model.decoder.project_out.weight", "proj, hidden", OPTIONAL),
            *linear(_OPT + "self_attn.q_proj", "hidden", "hidden"),
            *linear(_OPT + "self_attn.k_proj", "hidden", "hidden"),
            *linear(_OPT + "self_attn.v_proj", "hidden", "hidden"),
            *linear(_OPT + "self_attn.out_proj", "hidden", "hidden"),
            *linear(_OPT + "fc1", "inter", "hidden"),
            *linear(_OPT + "fc2", "hidden", "inter"),
            # LayerNorms without elementwise affine, and 350m's missing final norm, hold no tensors
            *norm(_OPT + "self_attn_layer_norm", OPTIONAL, bias=True),
            *norm(_OPT + "final_layer_norm", OPTIONAL, bias=True),
            *norm("model.decoder.final_layer_norm", OPTIONAL, bias=True),
            T("lm_head.weight", "vocab, proj", UNTIED),
        ),
        (("heads", "hidden"),), tied_default=True, optional_prefix="model.",
    ),
    tiny=dict(hidden_size=64, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64),
    no_gguf="llama.cpp has no OPT architecture (its learned position table with 2 leading rows and ReLU FFN "
            "match none of llama.cpp's graphs); use --to onnx or --to safetensors",
    onnx=OnnxLayout(
        "opt", embed="model.decoder.embed_tokens.weight", layer="model.decoder.layers.{i}.",
        final_norm="model.decoder.final_layer_norm", lm_head="lm_head.weight", norm="layer",
        attn_norm="self_attn_layer_norm", mlp_norm="final_layer_norm",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_split="separate",
        o_proj="self_attn.out_proj", mlp=("fc1", "fc2"), mlp_kind="plain", activation_key="activation_function",
        query_prescaled=True, post_norm_key="do_layer_norm_before",
        project=("model.decoder.project_in", "model.decoder.project_out"), optional_prefix="model.",
    ),
    onnx_checks=(
        lambda cfg, names: "layer_norm_elementwise_affine false: the graph has no LayerNorm without weights"
        if not getattr(cfg, "layer_norm_elementwise_affine", True) else None,
    ),
    values=(Value("activation_function", STR), context("max_position_embeddings"), flag("do_layer_norm_before"),
            flag("layer_norm_elementwise_affine")),
    config_defaults=(("activation_function", "relu"), ("do_layer_norm_before", True)),
)
