"""Mixtral: llama's blocks (sliding_window on every layer when set) with a mixture of experts in place of the MLP —
a softmax router (block_sparse_moe.gate), the top k experts' weights renormalized to sum to 1, each expert a SwiGLU
(w1 gate, w3 up, w2 down) stored one module per expert (transformers 5 fuses them in memory and saves them back per
expert). llama.cpp loads it as its llama architecture with experts (expert_count / expert_used_count): each layer's
per-expert w1/w3/w2 stacked into ffn_gate_exps / ffn_up_exps / ffn_down_exps (gguf_export/experts.py) and the
router as ffn_gate_inp; its build_moe_ffn takes softmax, the top k, and renormalizes them (norm_w), as transformers'
Mixtral. The ONNX graph evaluates every expert and weights it by the scattered top-k routing (onnx_export/moe.py).
MixtralConfig defaults head_dim to None, which transformers 5's yarn/longrope/llama3 trip on: the output states it."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LLAMA_CONFIG,
    LLAMA_DIMS,
    LLAMA_ONNX,
    LLAMA_TENSORS,
    MOE,
    MOE_VALUES,
    RMS,
    RMS_VALUES,
    SLIDING_WINDOW,
    TINY_LLAMA,
    L,
    without_mlp,
)
from ropeconv.families.spec import ArchSpec, Dim, Family, FamilyShapes, GgufLayout, MoeLayout, OnnxLayout, T

FAMILY = Family(
    arch=ArchSpec("mixtral", default_theta=1000000.0, explicit_head_dim=True,
                  note="mixture of experts (softmax router, top-k renormalized): expert weights byte-copied to "
                       "safetensors (head_dim stated, which 5.x's yarn/longrope/llama3 need); for GGUF, llama.cpp's "
                       "llama with experts, each layer's experts stacked into ffn_*_exps and the router kept float32 "
                       "at every outtype; refused with a sliding window shorter than the target; transformers reads "
                       "no mixtral GGUF, so a retrofit is proven against the HF checkpoint (verify --base HF_DIR) or "
                       "refused without --no-verify; ONNX evaluates every expert and weights it by the scattered "
                       "top-k routing (exact, E× the FFN compute; router unquantized under int4). The test suite "
                       "runs one method per format (Family.test_methods); every exact cell passed once when the "
                       "family was added"),
    shapes=FamilyShapes(
        "mixtral", LLAMA_DIMS + (("experts", Dim(("num_local_experts",))),),
        without_mlp(LLAMA_TENSORS) + (
            T(L + "block_sparse_moe.gate.weight", "experts, hidden"),
            T(L + "block_sparse_moe.experts.{e}.w1.weight", "inter, hidden"),
            T(L + "block_sparse_moe.experts.{e}.w2.weight", "hidden, inter"),
            T(L + "block_sparse_moe.experts.{e}.w3.weight", "inter, hidden"),
        ),
        GQA, sparse=lambda c, i, d: True,
    ),
    # 4 experts, top-2, as every MoE family here: routing ties are improbable with random weights
    tiny=dict(TINY_LLAMA, intermediate_size=96, num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    # llama's graph with experts (llama owns the "llama" GGUF architecture): rope_freqs carriers too
    gguf=GgufLayout("mixtral", "llama", COMMON + RMS + MOE, ("silu",), permute_qk=True, no_sliding_window=True,
                    experts=True),
    onnx=OnnxLayout("mixtral", **dict(LLAMA_ONNX, mlp=()), sliding_all_layers=True, moe=MoeLayout(
        router="block_sparse_moe.gate.weight", count_keys=("num_local_experts",), norm_topk_key=None,
        experts=("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight",
                 "block_sparse_moe.experts.{e}.w2.weight"))),
    test_methods={"safetensors": ("yarn",), "gguf": ("llama3",), "onnx": ("yarn",)},
    values=RMS_VALUES + MOE_VALUES + (SLIDING_WINDOW,),
    config_defaults=LLAMA_CONFIG + (("rms_norm_eps", 1e-5), ("num_experts_per_tok", 2)),
)
