"""SmolLM3: llama's blocks (q/k rows permuted in the GGUF, as llama's); layers whose entry in no_rope_layers is 0
attend without rope (NoPE). llama.cpp drops rope on layers il with (il + 1) % 4 == 0 — it fixes the step at 4
where transformers reads no_rope_layers — and loads no output-projection or MLP biases."""

from ropeconv.families.parts import (
    COMMON,
    GQA,
    LAYER_TYPES,
    LLAMA_CONFIG,
    LLAMA_DIMS,
    LLAMA_ONNX,
    LLAMA_TENSORS,
    RMS,
    RMS_VALUES,
    SWITCHED_WINDOW,
    TINY_LLAMA,
    flag,
    refuse_attention_bias,
)
from ropeconv.families.spec import INT, ArchSpec, Family, FamilyShapes, GgufArchSpec, GgufLayout, OnnxLayout, Value


def _no_rope_every_4th(config, head_dim):
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int):
        return None
    interval = config.get("no_rope_layer_interval", 4)
    declared = config.get("no_rope_layers")
    if declared is None and isinstance(interval, int) and interval > 0:  # transformers' SmolLM3Config default
        declared = _every_nth_without_rope(layers, interval)
    fixed = _every_nth_without_rope(layers, 4)
    if declared is not None and [int(bool(x)) for x in declared] != fixed:
        return "no_rope_layers other than every 4th layer: llama.cpp's smollm3 drops rope on every 4th layer exactly"
    return None


def _every_nth_without_rope(n_layers: int, interval: int) -> list[int]:
    """SmolLM3Config's derived no_rope_layers: 0 (no rope) on every interval-th layer, 1 elsewhere."""
    return [int((i + 1) % interval != 0) for i in range(n_layers)]


def _layer_types(c):
    """SmolLM3Config's derived layer_types: with use_sliding_window and a window, the layers without rope slide."""
    return ["sliding_attention" if c.use_sliding_window and c.sliding_window is not None and not c.no_rope_layers[i]
            else "full_attention" for i in range(c.num_hidden_layers)]


FAMILY = Family(
    arch=ArchSpec("smollm3", default_theta=2000000.0,
                  note="layers listed 0 in no_rope_layers attend without rope (every 4th by default): methods act on "
                       "the others; GGUF refused unless that is exactly every 4th layer (llama.cpp's smollm3 fixes the "
                       "step), or with attention_bias/mlp_bias; transformers reads no smollm3 GGUF, so a retrofit is "
                       "proven against the HF checkpoint (verify --base HF_DIR) or refused without --no-verify"),
    shapes=FamilyShapes("smollm3", LLAMA_DIMS, LLAMA_TENSORS, GQA, tied_default=True),
    # 4 layers: the 4th attends without rope (no_rope_layers [1, 1, 1, 0], transformers' and llama.cpp's default)
    tiny=dict(TINY_LLAMA, num_hidden_layers=4, pad_token_id=0),
    # llama's interleaved rope pairs; no rope on every 4th layer, fixed in llama.cpp (_no_rope_every_4th)
    gguf=GgufLayout("smollm3", "smollm3", COMMON + RMS, ("silu",), permute_qk=True, no_sliding_window=True),
    gguf_arch=GgufArchSpec("smollm3"),
    gguf_checks=(
        _no_rope_every_4th,
        refuse_attention_bias("smollm3"),
        lambda c, d: "mlp_bias: llama.cpp's smollm3 loads no MLP biases" if c.get("mlp_bias") else None,
    ),
    onnx=OnnxLayout("smollm3", **LLAMA_ONNX, rope_layers_key="no_rope_layers"),
    genai_type="smollm3",
    values=RMS_VALUES + (
        *SWITCHED_WINDOW, LAYER_TYPES, flag("attention_bias"), flag("mlp_bias"),
        Value("no_rope_layer_interval", INT, least=1, why="every interval-th layer goes without rope"),
        Value("no_rope_layers", INT, least=0, most=1, null=True, per_layer=True)),
    config_defaults=LLAMA_CONFIG + (
        ("use_sliding_window", False), ("sliding_window", None), ("no_rope_layer_interval", 4),
        ("no_rope_layers", lambda c: _every_nth_without_rope(c.num_hidden_layers, c.no_rope_layer_interval)),
        ("layer_types", _layer_types)),
)
